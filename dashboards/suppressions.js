// The suppression list: pages of GET /v1/suppressions filtered by reason and stream, and one
// address with its history (GET /v1/suppressions/{address}), with the provenance of each change.
"use strict";

const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
const when = (t) => (t ? new Date(t).toISOString().slice(0, 16).replace("T", " ") : "");
const state = { cursor: null, shown: 0 };

// What caused a change, in a few words.
function cause(p) {
  const parts = [];
  if (p.campaign) parts.push("campaign " + p.campaign);
  if (p.status) parts.push(p.status);
  if (p.feedback_type) parts.push("feedback " + p.feedback_type);
  if (p.diagnostic) parts.push(p.diagnostic);
  if (p.by) parts.push("by key " + p.by);
  if (p.note) parts.push("“" + p.note + "”");
  return esc(parts.join(" · "));
}

function showError(e) {
  if (e.message === "unauthorized") return;
  $("error").textContent = e.message;
  $("error").hidden = false;
}

async function loadPage(reset) {
  if (reset) { state.cursor = null; state.shown = 0; $("entries").querySelector("tbody").innerHTML = ""; }
  const q = new URLSearchParams({ limit: "100" });
  if ($("reason").value) q.set("reason", $("reason").value);
  if ($("stream").value.trim()) q.set("stream", $("stream").value.trim().toLowerCase());
  if (state.cursor) q.set("cursor", state.cursor);
  $("error").hidden = true;
  try {
    const page = await api("/v1/suppressions?" + q);
    const rows = page.entries.map((e) =>
      `<tr data-address="${esc(e.address)}"><td><a href="#" class="open">${esc(e.address)}</a></td><td><span class="badge">${esc(e.reason)}</span></td>` +
      `<td>${esc(e.stream || "every")}</td><td>${when(e.since)}</td><td>${when(e.expires_at) || "for good"}</td>` +
      `<td>${esc(e.provenance.source)}</td><td>${cause(e.provenance)}</td></tr>`).join("");
    $("entries").querySelector("tbody").insertAdjacentHTML("beforeend", rows);
    state.shown += page.entries.length;
    state.cursor = page.next_cursor;
    $("count").textContent = `(${state.shown.toLocaleString()} shown${state.cursor ? ", more to load" : ""})`;
    $("more").hidden = !state.cursor;
  } catch (e) { showError(e); }
}

async function lookUp(address) {
  $("error").hidden = true;
  try {
    const e = await api("/v1/suppressions/" + encodeURIComponent(address.trim()));
    $("detail").hidden = false;
    $("detail-title").textContent = e.address;
    $("detail-state").innerHTML = e.suppressed
      ? `<span class="badge">suppressed: ${esc(e.reason)}</span> since ${when(e.since)}${e.expires_at ? " until " + when(e.expires_at) : ", for good"}${e.stream ? " (stream " + esc(e.stream) + ")" : ""}`
      : `<span class="badge none">may be mailed</span>`;
    $("history").querySelector("tbody").innerHTML = e.history.slice().reverse().map((c) =>
      `<tr><td>${when(c.at)}</td><td>${esc(c.action)}</td><td>${esc(c.reason)}${c.doubtful ? " (doubtful)" : ""}</td><td>${esc(c.stream || "every")}</td>` +
      `<td>${when(c.expires_at)}</td><td>${esc(c.provenance.source)}</td><td>${cause(c.provenance)}</td></tr>`).join("") ||
      `<tr><td colspan="7" class="muted">Never suppressed.</td></tr>`;
  } catch (err) { showError(err); }
}

function start() {
  const m = location.hash.match(/reason=([a-z_]+)/);
  if (m) $("reason").value = m[1];
  loadPage(true);
}

$("search").addEventListener("submit", (e) => { e.preventDefault(); if ($("address").value.trim()) lookUp($("address").value); });
$("reason").addEventListener("change", () => loadPage(true));
$("stream").addEventListener("change", () => loadPage(true));
$("more").addEventListener("click", () => loadPage(false));
$("entries").addEventListener("click", (e) => {
  const a = e.target.closest("a.open");
  if (!a) return;
  e.preventDefault();
  lookUp(a.closest("tr").dataset.address);
});
withKey(start);
