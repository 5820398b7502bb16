// Monitoring: the server's Prometheus metrics (GET /metrics), summed per model; latency
// percentiles estimated from the histogram buckets as Prometheus' histogram_quantile does.
import { apiKey, get } from "../api.js";
import { errorBox, h } from "../dom.js";

let timer = null;
export const leave = () => clearInterval(timer);

// Prometheus text format: name{labels} value
export function parseMetrics(text) {
  const out = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = line.match(/^([a-zA-Z_:][\w:]*)(\{(.*)\})?\s+(\S+)/);
    if (!m) continue;
    const labels = {};
    for (const [, k, v] of (m[3] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[k] = v.replace(/\\(.)/g, "$1");
    out.push({ name: m[1], labels, value: parseFloat(m[4]) });
  }
  return out;
}

export function quantile(q, buckets) {
  // buckets: [[le, cumulative count]] sorted by le, last le = Infinity
  const total = buckets.at(-1)?.[1] || 0;
  if (!total) return NaN;
  const rank = q * total;
  let prevLe = 0, prevC = 0;
  for (const [le, c] of buckets) {
    if (c >= rank) return le === Infinity ? prevLe : prevLe + ((le - prevLe) * (rank - prevC)) / Math.max(c - prevC, 1e-12);
    prevLe = le; prevC = c;
  }
  return prevLe;
}

const f = (x, d = 3) => (x === null || x === undefined ? "–" : (+x).toFixed(d));

// `oficina stats` from the conversation log: latency, tokens/s and cost by model and by day.
async function logStats(box) {
  try {
    const s = await get("/api/ui/stats");
    box.replaceChildren(h("h2", {}, "From the conversation log (oficina stats)"),
      h("table", {}, h("thead", {}, h("tr", {}, ["model", "requests", "failed", "cached", "latency p50 s", "p95 s", "first token p50 s", "p95 s", "tokens/s", "tokens in+out", "cost"].map((c) => h("th", {}, c)))),
        h("tbody", {}, s.models.map((m) => h("tr", {}, h("td", {}, m.model), ...[m.requests, m.failed, m.cached].map((v) => h("td", { class: "n" }, v)),
          ...[m.latency_p50, m.latency_p95, m.ttft_p50, m.ttft_p95].map((v) => h("td", { class: "n" }, f(v))), h("td", { class: "n" }, f(m.tokens_per_s, 1)),
          h("td", { class: "n" }, `${m.prompt_tokens}+${m.output_tokens}`), h("td", { class: "n" }, f(m.cost, 4)))))),
      h("h2", {}, "By day"),
      h("table", {}, h("thead", {}, h("tr", {}, ["day", "model", "requests", "tokens", "cost"].map((c) => h("th", {}, c)))),
        h("tbody", {}, s.days.map((d) => h("tr", {}, h("td", {}, d.day), h("td", {}, d.model), h("td", { class: "n" }, d.requests), h("td", { class: "n" }, d.tokens), h("td", { class: "n" }, f(d.cost, 4)))))));
  } catch (e) { box.replaceChildren(errorBox(e)); }
}

export async function render(main) {
  const box = h("section", { "aria-live": "polite" }), stats = h("section");
  main.append(h("h1", {}, "Monitoring"), stats, h("h2", {}, "Live metrics (GET /metrics)"), box);
  await logStats(stats);
  async function draw() {
    let text;
    try {
      const r = await fetch("/metrics", { headers: apiKey() ? { Authorization: `Bearer ${apiKey()}` } : {} });
      if (!r.ok) throw new Error(r.status === 404 ? "this server has no /metrics yet" : `${r.status} ${r.statusText}`);
      text = await r.text();
    } catch (e) { return box.replaceChildren(errorBox(e)); }
    const samples = parseMetrics(text);
    const byModel = new Map();
    const row = (model) => byModel.get(model) || byModel.set(model, { buckets: {}, sums: {} }).get(model);
    for (const s of samples) {
      const model = s.labels.model || "(all)";
      if (s.name.endsWith("_bucket")) {
        const base = s.name.slice(0, -7), r = row(model);
        const le = s.labels.le === "+Inf" ? Infinity : parseFloat(s.labels.le);
        (r.buckets[base] ||= new Map()).set(le, (r.buckets[base].get(le) || 0) + s.value);
      } else if (!s.name.endsWith("_created")) {
        const r = row(model);
        r.sums[s.name] = (r.sums[s.name] || 0) + s.value;
      }
    }
    const tables = [];
    for (const [model, r] of byModel) {
      const lat = Object.entries(r.buckets).map(([name, m]) => {
        const b = [...m.entries()].sort((x, y) => x[0] - y[0]);
        const f = (q) => { const v = quantile(q, b); return Number.isNaN(v) ? "–" : v.toPrecision(3); };
        return h("tr", {}, h("td", {}, name), h("td", { class: "n" }, b.at(-1)?.[1] ?? 0), h("td", { class: "n" }, f(0.5)), h("td", { class: "n" }, f(0.95)), h("td", { class: "n" }, f(0.99)));
      });
      const counters = Object.entries(r.sums).filter(([k]) => !/_(sum|count)$/.test(k) && !k.startsWith("python_") && !k.startsWith("process_"));
      tables.push(h("h2", {}, model),
        lat.length ? h("table", {}, h("thead", {}, h("tr", {}, ["histogram", "count", "p50", "p95", "p99"].map((c) => h("th", {}, c)))), h("tbody", {}, lat)) : null,
        counters.length ? h("table", {}, h("tbody", {}, counters.map(([k, v]) => h("tr", {}, h("td", {}, k), h("td", { class: "n" }, +v.toPrecision(6)))))) : null);
    }
    box.replaceChildren(h("p", { class: "hint" }, "Refreshed every 5 s. Percentiles are interpolated within histogram buckets, as Prometheus' histogram_quantile does."), ...tables);
  }
  await draw();
  timer = setInterval(draw, 5000);
}
