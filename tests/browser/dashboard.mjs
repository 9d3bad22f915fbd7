// Loads the dashboard in headless chromium and prints what it shows, as JSON on stdout:
// {"kpis": {metric: text}, "rows": n, "campaigns": [..]}. Usage: node dashboard.mjs URL
import { chromium } from "playwright-core";

const url = process.argv[2];
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ timezoneId: "UTC" });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(url);
  await page.waitForSelector('.kpi[data-metric="sent"] .value', { timeout: 15000 });
  const read = () => page.$$eval(".kpi", (els) => Object.fromEntries(els.map((e) => [e.dataset.metric, e.querySelector(".value").textContent])));
  const result = { last30: await read() };
  // The 7-day range and one campaign, as a marketer would click them.
  await page.click('button[data-days="7"]');
  await page.waitForFunction(() => document.getElementById("range-label").textContent.length > 0);
  await page.waitForTimeout(300);
  result.last7 = await read();
  const options = await page.$$eval("#campaign option", (os) => os.map((o) => o.value).filter(Boolean));
  result.campaigns = options;
  if (options.length) {
    await page.selectOption("#campaign", options[0]);
    await page.waitForTimeout(500);
    result.campaign = { name: options[0], kpis: await read() };
  }
  result.rows = await page.$$eval("#daily tbody tr", (rs) => rs.length);
  result.bars = await page.$$eval("#chart rect", (rs) => rs.length);
  // The suppression counts, then the list page (the key stays in local storage) and a look-up.
  await page.waitForSelector('#suppression-counts .kpi[data-reason="total"]', { timeout: 15000 });
  result.suppression_counts = await page.$$eval("#suppression-counts .kpi", (els) => Object.fromEntries(els.map((e) => [e.dataset.reason, e.querySelector(".value").textContent])));
  await page.click('#suppression-counts .kpi[data-reason="complaint"] a');
  await page.waitForSelector("#entries tbody tr", { timeout: 15000 });
  result.complaints_listed = await page.$$eval("#entries tbody tr", (rs) => rs.map((r) => r.dataset.address));
  await page.click("#entries tbody tr a.open");
  await page.waitForSelector("#history tbody tr", { timeout: 15000 });
  result.history = await page.$$eval("#history tbody tr", (rs) => rs.map((r) => r.textContent));
  result.detail_state = await page.$eval("#detail-state", (e) => e.textContent);
  if (process.env.SCREENSHOT) await page.screenshot({ path: process.env.SCREENSHOT, fullPage: true });
  result.errors = errors;
  console.log(JSON.stringify(result));
} finally {
  await browser.close();
}
