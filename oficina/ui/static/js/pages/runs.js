// Runs and evaluations: loss curves from the run folders (refreshed while the page is open, so a
// run in progress draws itself at each checkpoint) and every version's metrics side by side.
import { get } from "../api.js";
import { lines } from "../chart.js";
import { errorBox, h, s } from "../dom.js";

let timer = null;
export const leave = () => clearInterval(timer);

export async function render(main) {
  const runsBox = h("section", { "aria-live": "polite" }), evalBox = h("section");
  main.append(h("h1", {}, "Runs and evaluations"), h("h2", {}, "Training runs"), runsBox, h("h2", {}, "Evaluations"), evalBox);
  let chosen = null;
  async function drawRuns() {
    try {
      const { runs } = await get("/api/ui/runs");
      if (!runs.length) return runsBox.replaceChildren(h("p", { class: "muted" }, "No runs yet: `oficina tune`, `pretrain`, `distill` and `dpo` write them under $OFICINA_HOME/runs."));
      chosen = runs.find((r) => r.name === chosen?.name) || runs[0];
      const pick = h("select", { "aria-label": "run" }, runs.map((r) => h("option", { value: r.name, selected: r.name === chosen.name }, r.name)));
      pick.addEventListener("change", () => { chosen = runs.find((r) => r.name === pick.value); drawRuns(); });
      const series = [{ name: "training loss", points: chosen.history.map((p) => [p.step, p.loss]) }];
      const valKey = Object.keys(chosen.val_history[0] || {}).find((k) => k !== "step");
      if (valKey) series.push({ name: `validation ${valKey}`, points: chosen.val_history.map((p) => [p.step, p[valKey]]) });
      const done = chosen.total_steps && chosen.step >= chosen.total_steps;
      runsBox.replaceChildren(h("label", {}, "Run ", pick),
        h("p", {}, chosen.step === null ? "no checkpoint written yet" : `step ${chosen.step} of ${chosen.total_steps ?? "?"}${done ? " (finished)" : " (in progress or stopped)"}, epoch ${chosen.epoch}, ${chosen.tokens?.toLocaleString() ?? "?"} tokens in ${chosen.seconds?.toFixed(1) ?? "?"} s`),
        h("div", { class: "chart" }, lines(series, { xlabel: "step", ylabel: "loss", title: `loss curve of ${chosen.name}` })));
    } catch (e) { runsBox.replaceChildren(errorBox(e)); }
  }
  async function drawEvals() {
    try {
      const { rows } = await get("/api/ui/evaluations");
      if (!rows.length) return evalBox.replaceChildren(h("p", { class: "muted" }, "No evaluation results yet: `oficina eval` records them on each version."));
      const flat = rows.map((r) => ({ ref: r.ref, m: flatten(r.metrics) }));
      const cols = [...new Set(flat.flatMap((r) => Object.keys(r.m)))].sort();
      const numeric = cols.filter((c) => flat.some((r) => typeof r.m[c] === "number"));
      evalBox.replaceChildren(h("div", { class: "chart" }, h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "version"), cols.map((c) => h("th", { class: "n" }, c)))),
        h("tbody", {}, flat.map((r) => h("tr", {}, h("td", {}, r.ref), cols.map((c) => h("td", { class: "n" }, fmt(r.m[c])))))))),
        h("div", { class: "row" }, numeric.map((c) => bars(c, flat.filter((r) => typeof r.m[c] === "number").map((r) => [r.ref, r.m[c]])))));
    } catch (e) { evalBox.replaceChildren(errorBox(e)); }
  }
  await Promise.all([drawRuns(), drawEvals()]);
  timer = setInterval(drawRuns, 5000);
}

// One small bar chart per metric, versions side by side (the picture `oficina eval --chart` draws).
function bars(metric, rows) {
  const W = 300, row = 20, L = 130, H = 24 + rows.length * row, max = Math.max(...rows.map(([, v]) => Math.abs(v)), 1e-12);
  return s("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `${metric} by version`, class: "evalbars" },
    s("text", { x: 0, y: 14, "font-weight": 700 }, metric),
    rows.map(([ref, v], i) => [
      s("text", { x: L - 4, y: 24 + i * row + 13, "text-anchor": "end" }, ref.length > 18 ? ref.slice(0, 17) + "…" : ref),
      s("rect", { x: L, y: 24 + i * row + 3, width: Math.max(1, ((W - L - 50) * Math.abs(v)) / max), height: row - 6, fill: "#1f4e79" }),
      s("text", { x: L + ((W - L - 50) * Math.abs(v)) / max + 4, y: 24 + i * row + 13 }, fmt(v))]));
}

function flatten(o, prefix = "", out = {}) {
  for (const [k, v] of Object.entries(o || {})) {
    if (v && typeof v === "object" && !Array.isArray(v)) flatten(v, `${prefix}${k}.`, out);
    else out[prefix + k] = v;
  }
  return out;
}
const fmt = (v) => (v === undefined ? "" : typeof v === "number" ? String(+v.toPrecision(4)) : String(v));
