// The overview dashboard: reads /v1/stats/overview with the API key from the URL
// (#key=...) or local storage, and draws totals, rates and the daily series.
"use strict";

const tz = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
const state = { days: 30, from: null, to: null, campaign: "", data: null };

const KPIS = [
  ["sent", "Sent"], ["delivered", "Delivered", "delivery_rate"], ["unique_opens", "Unique opens", "open_rate"],
  ["opens", "Total opens"], ["unique_clicks", "Unique clicks", "click_rate"], ["clicks", "Total clicks"],
  ["deferred", "Deferred"], ["hard_bounces", "Hard bounces"], ["soft_bounces", "Soft bounces", "bounce_rate"],
  ["complaints", "Complaints", "complaint_rate"], ["unsubscribes", "Unsubscribes", "unsubscribe_rate"],
  ["replies", "Replies", "reply_rate"], ["auto_replies", "Auto-replies"], ["conversions", "Conversions", "conversion_rate"],
  ["revenue_micros", "Revenue"],
];

function fmt(key, v) {
  if (key === "revenue_micros") return (v / 1e6).toLocaleString(undefined, { maximumFractionDigits: 2 });
  return Number(v).toLocaleString();
}
const pct = (r) => (r * 100).toFixed(r < 0.1 ? 2 : 1) + "%";

function isoDay(d) { return d.toLocaleDateString("en-CA", { timeZone: tz }); }

function range() {
  if (state.days === "custom") return { from: $("from").value, to: $("to").value };
  const to = new Date();
  const from = new Date(to.getTime() - (state.days - 1) * 86400000);
  return { from: isoDay(from), to: isoDay(to) };
}

async function load() {
  const { from, to } = range();
  const q = new URLSearchParams({ from, to, tz });
  if (state.campaign) q.set("campaign", state.campaign);
  $("error").hidden = true;
  try {
    state.data = await api("/v1/stats/overview?" + q);
    render();
  } catch (e) {
    if (e.message !== "unauthorized") { $("error").textContent = e.message; $("error").hidden = false; }
  }
}

function render() {
  const d = state.data;
  $("range-label").textContent = `${d.from} – ${d.to} (${d.tz})`;
  $("kpis").innerHTML = KPIS.map(([key, label, rate]) =>
    `<div class="kpi" data-metric="${key}"><div class="label">${label}</div>` +
    `<div class="value">${fmt(key, d.totals[key])}</div>` +
    (rate ? `<div class="rate" data-rate="${rate}">${pct(d.rates[rate])}</div>` : "") + "</div>").join("");
  drawChart();
  const cols = ["sent", "delivered", "unique_opens", "unique_clicks", "hard_bounces", "soft_bounces", "complaints", "unsubscribes", "replies", "conversions"];
  $("daily").querySelector("thead").innerHTML = "<tr><th>Day</th>" + cols.map((c) => `<th>${c.replace("_", " ")}</th>`).join("") + "</tr>";
  $("daily").querySelector("tbody").innerHTML = d.daily.slice().reverse().map((row) =>
    `<tr><td>${row.date}</td>` + cols.map((c) => `<td>${fmt(c, row[c])}</td>`).join("") + "</tr>").join("");
}

function drawChart() {
  const svg = $("chart"), key = $("series").value, days = state.data.daily;
  const W = 900, H = 260, pad = 28, max = Math.max(1, ...days.map((r) => r[key]));
  const bw = (W - pad) / Math.max(1, days.length);
  let out = `<text x="0" y="12">${fmt(key, max)}</text><text x="0" y="${H - 4}">0</text>`;
  days.forEach((r, i) => {
    const h = (r[key] / max) * (H - 30);
    out += `<rect x="${pad + i * bw + 1}" y="${H - 16 - h}" width="${Math.max(1, bw - 2)}" height="${h}"><title>${r.date}: ${fmt(key, r[key])}</title></rect>`;
  });
  if (days.length) {
    out += `<text x="${pad}" y="${H - 2}">${days[0].date}</text><text x="${W - 70}" y="${H - 2}">${days[days.length - 1].date}</text>`;
  }
  svg.innerHTML = out;
}

const REASONS = [["hard_bounce", "Hard bounces"], ["complaint", "Complaints"], ["unsubscribe", "Unsubscribes"],
  ["soft_bounce_limit", "Soft-bounce limit"], ["manual", "Manual"]];

async function loadSuppressions() {
  try {
    const s = await api("/v1/suppressions/summary");
    $("suppression-counts").innerHTML = `<div class="kpi" data-reason="total"><div class="label">Suppressed</div><div class="value">${fmt("", s.total)}</div></div>` +
      REASONS.map(([r, label]) => `<div class="kpi" data-reason="${r}"><div class="label">${label}</div>` +
        `<div class="value"><a href="/suppressions#reason=${r}">${fmt("", s.by_reason[r] || 0)}</a></div></div>`).join("");
  } catch (e) {
    $("suppression-counts").textContent = "Suppression counts unavailable: " + e.message;
  }
}

async function loadCampaigns() {
  const body = await api("/v1/campaigns");
  $("tenant").textContent = "tenant " + body.tenant;
  const sel = $("campaign");
  for (const c of body.campaigns) {
    const o = document.createElement("option");
    o.value = c.campaign;
    o.textContent = c.campaign + (c.variants.length ? ` (${c.variants.join("/")})` : "");
    sel.appendChild(o);
  }
}

function setDays(days) {
  state.days = days === "custom" ? "custom" : Number(days);
  document.querySelectorAll(".ranges button").forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.days === String(days))));
  $("custom").hidden = days !== "custom";
  if (days === "custom") {
    const r = { from: isoDay(new Date(Date.now() - 13 * 86400000)), to: isoDay(new Date()) };
    if (!$("from").value) $("from").value = r.from;
    if (!$("to").value) $("to").value = r.to;
  }
  load();
}

async function start() {
  try { await loadCampaigns(); } catch (e) { return; }
  loadSuppressions();
  setDays(30);
}

document.querySelectorAll(".ranges button").forEach((b) => b.addEventListener("click", () => setDays(b.dataset.days)));
$("filters").addEventListener("submit", (e) => { e.preventDefault(); load(); });
$("campaign").addEventListener("change", (e) => { state.campaign = e.target.value; load(); });
$("series").addEventListener("change", () => state.data && drawChart());
withKey(start);
