// Models and versions: the registry list, one model's lineage graph (base -> LoRA -> merged ->
// quantized, across names through parent links) with what made each version and its metrics;
// rollback (POST /api/ui/rollback) and delete (Ollama's DELETE /api/delete), admin scope.
import { get, post } from "../api.js";
import { graph } from "../chart.js";
import { errorBox, h, status } from "../dom.js";

const size = (n) => (n >= 1e9 ? `${(n / 1e9).toFixed(2)} GB` : `${(n / 1e6).toFixed(1)} MB`);
const when = (t) => new Date(t * 1000).toLocaleString();

export async function render(main) {
  const detail = h("section", { "aria-live": "polite" });
  const list = await get("/api/ui/models");
  main.append(h("h1", {}, "Models and versions"), h("table", {},
    h("thead", {}, h("tr", {}, ["name", "current", "versions", "format", "size", "made by", "created"].map((c) => h("th", {}, c)))),
    h("tbody", {}, list.models.map((m) => h("tr", {},
      h("td", {}, h("button", { type: "button", class: "secondary", onclick: () => open(m.name) }, m.name)),
      h("td", { class: "n" }, `@${m.version}`), h("td", { class: "n" }, m.versions), h("td", {}, m.format),
      h("td", { class: "n" }, size(m.size)), h("td", {}, m.producer?.op || "pull"), h("td", {}, when(m.created)))))), detail);

  async function open(name) {
    detail.replaceChildren(h("p", {}, "loading…"));
    try {
      const g = await get(`/api/ui/lineage?name=${encodeURIComponent(name)}`);
      const info = h("div");
      const show = (n) => info.replaceChildren(nodeInfo(n, name, () => open(name)));
      detail.replaceChildren(h("h2", {}, `Lineage of ${g.name}`),
        h("p", { class: "hint" }, "Arrows go from a parent version to what was made from it. Select a version for details."),
        h("div", { class: "chart" }, graph(g.nodes.map((n) => ({ id: n.ref, current: n.current, raw: n,
          lines: [n.ref, n.missing ? "(removed)" : n.producer?.op || "pull", metricText(n.metrics)] })), g.edges, { onClick: (n) => show(n.raw) })),
        info, h("div", { class: "row" }, h("button", { type: "button", class: "danger", onclick: () => remove(g.name) }, `Delete ${g.name}`)));
      show(g.nodes.find((n) => n.name === g.name && n.current) || g.nodes[0]);
    } catch (e) { detail.replaceChildren(errorBox(e)); }
  }

  async function remove(name) {
    if (!confirm(`Delete ${name} and all its versions?`)) return;
    try {
      await post("/api/delete", { model: name }, "DELETE");
      status(`deleted ${name}`);
      location.reload();
    } catch (e) { detail.append(errorBox(e)); }
  }
}

function metricText(m) {
  const flat = Object.entries(m || {}).filter(([, v]) => typeof v === "number");
  return flat.slice(0, 2).map(([k, v]) => `${k} ${+v.toPrecision(4)}`).join(", ");
}

function nodeInfo(n, name, reload) {
  if (n.missing) return h("p", {}, `${n.ref} is no longer in the registry.`);
  const rows = [["version", n.ref], ["created", when(n.created)], ["digest", n.digest], ["format", n.format],
    ["parent", n.parent || "—"], ["made by", JSON.stringify(n.producer || {})], ["metrics", JSON.stringify(n.metrics || {})],
    ["adapters", (n.adapters || []).join(", ") || "—"]];
  const rollback = n.name === name && !n.current ? h("button", { type: "button", onclick: async () => {
    try { const r = await post("/api/ui/rollback", { name: n.name, version: n.version }); status(`${n.name} now points at ${r.current}`); reload(); }
    catch (e) { box.append(errorBox(e)); }
  } }, `Make @${n.version} current (rollback)`) : null;
  const box = h("div", { class: "panel" }, h("table", {}, h("tbody", {}, rows.map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, String(v)))))), rollback);
  return box;
}
