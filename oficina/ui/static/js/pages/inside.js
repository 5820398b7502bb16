// Look inside: tokens, attention heat map, sentence similarity, model card and weight histogram,
// from POST /api/inspect/* (the functions behind `oficina tokenize`/`attention`/...).
import { get, post } from "../api.js";
import { blue, diverging, heatmap, histogram } from "../chart.js";
import { errorBox, field, h, select, tokLabel } from "../dom.js";
import { modelPicker } from "../models.js";

const TABS = { tokens: "Tokens", attention: "Attention", similarity: "Similarity", card: "Model card" };

export async function render(main) {
  const picker = await modelPicker(() => show(current), { versions: true });
  const out = h("section", { "aria-live": "polite" });
  let current = location.hash.split("/")[1] in TABS ? location.hash.split("/")[1] : "tokens";
  const tabs = h("div", { class: "tabs", role: "tablist" });
  for (const [k, label] of Object.entries(TABS))
    tabs.append(h("button", { type: "button", role: "tab", "data-tab": k, "aria-selected": String(k === current), onclick: () => show(k) }, label));

  function show(k) {
    current = k;
    history.replaceState(null, "", `#inside/${k}`);
    for (const b of tabs.children) b.setAttribute("aria-selected", String(b.dataset.tab === k));
    out.replaceChildren();
    ({ tokens, attention, similarity, card })[k](out, picker).catch((e) => out.append(errorBox(e)));
  }
  main.append(h("h1", {}, "Look inside"), h("div", { class: "cols" }, h("aside", { class: "panel" }, picker.element), h("div", {}, tabs, out)));
  show(current);
}

async function tokens(out, picker) {
  const text = h("textarea", { rows: 3 }, "O gato estava dormindo no sofá. The cat was sleeping on the sofa.");
  const view = h("div");
  async function run() {
    try {
      const t = await post("/api/inspect/tokenize", { model: picker.value(), text: text.value });
      const ctx = t.context_length ? `${t.count} tokens of a ${t.context_length}-token context (${(100 * t.count / t.context_length).toPrecision(2)}%)` : `${t.count} tokens`;
      view.replaceChildren(h("p", {}, ctx, t.round_trip ? "; decodes back exactly" : `; decodes back as ${JSON.stringify(t.decoded)}`),
        h("div", { class: "tokens" }, t.tokens.map((k, i) => h("span", { class: `tk c${i % 6}${k.special ? " special" : ""}`, title: `piece ${k.piece}, id ${k.id}` }, k.text, h("small", {}, String(k.id))))));
    } catch (e) { view.replaceChildren(errorBox(e)); }
  }
  out.append(field("Text", text), h("button", { type: "button", onclick: run }, "Tokenize"), view);
  await run();
}

async function attention(out, picker) {
  const text = h("input", { type: "text", value: "o gato estava dormindo no sofá" });
  const layer = select([["-1", "last"]], "-1", { "data-role": "layer" });
  const head = select([["mean", "mean of heads"]], "mean", { "data-role": "head" });
  const view = h("div", { class: "chart" }), detail = h("div");
  async function run() {
    try {
      const a = await post("/api/inspect/attention", { model: picker.value(), text: text.value, layer: +layer.value, head: head.value === "mean" ? "mean" : +head.value });
      if (layer.options.length !== a.layers) layer.replaceChildren(...Array.from({ length: a.layers }, (_, i) => h("option", { value: i, selected: i === a.layer }, `layer ${i}`)));
      if (head.options.length !== a.heads + 1) head.replaceChildren(h("option", { value: "mean" }, "mean of heads"), ...Array.from({ length: a.heads }, (_, i) => h("option", { value: i }, `head ${i}`)));
      const labels = a.tokens.map(tokLabel);
      const rowInfo = (i) => {
        const ranked = a.weights[i].map((w, j) => [w, j]).filter(([w]) => w > 0).sort((x, y) => y[0] - x[0]).slice(0, 5);
        detail.replaceChildren(h("p", {}, `${labels[i]} attends most to:`), h("ol", {}, ranked.map(([w, j]) => h("li", {}, `${labels[j]} ${w.toFixed(3)}`))));
      };
      view.replaceChildren(h("p", {}, `${a.part}, layer ${a.layer} of 0..${a.layers - 1}, ${a.head === "mean" ? `mean of ${a.heads} heads` : `head ${a.head}`}. Row: the token looking; column: the token it takes from. Colour: square root of the weight, so small weights stay visible. Click a row's token for its top five.`),
        heatmap(a.weights, labels, labels, { title: `attention, layer ${a.layer}`, onRow: rowInfo, color: (v) => blue(Math.sqrt(v)) }));
      rowInfo(a.tokens.length - 1);
    } catch (e) { view.replaceChildren(errorBox(e)); detail.replaceChildren(); }
  }
  layer.addEventListener("change", run);
  head.addEventListener("change", run);
  out.append(field("Sentence", text), h("div", { class: "row" }, field("Layer", layer), field("Head", head), h("button", { type: "button", onclick: run }, "Show")), view, detail);
  await run();
}

async function similarity(out, picker) {
  const text = h("textarea", { rows: 5 }, "The cat sleeps on the sofa.\nO gato dorme no sofá.\nA kitten naps on the couch.\nStock prices fell sharply today.");
  const view = h("div", { class: "chart" });
  async function run() {
    try {
      const texts = text.value.split("\n").map((t) => t.trim()).filter(Boolean);
      const r = await post("/api/inspect/similarity", { model: picker.value(), texts });
      const labels = r.texts.map((t, i) => `${i + 1}. ${t}`);
      view.replaceChildren(h("p", {}, `cosine similarity of ${r.pooling}-pooled ${r.embedding_length}-number sentence vectors`),
        heatmap(r.matrix, labels, r.texts.map((_, i) => String(i + 1)), { cell: 56, color: diverging, values: true, title: "similarity matrix" }));
    } catch (e) { view.replaceChildren(errorBox(e)); }
  }
  out.append(field("Sentences, one per line", text), h("button", { type: "button", onclick: run }, "Compare"), view);
  await run();
}

const KEYS = ["architecture", "family", "kind", "parameters", "layers", "heads", "kv_heads", "head_dim", "embedding_length", "context_length", "vocab_size", "file_type", "format", "bits_per_weight"];

async function card(out, picker) {
  const c = await get(`/api/ui/card?name=${encodeURIComponent(picker.value())}`);
  out.append(h("h2", {}, `${c.name} @${c.version}`), h("table", {}, h("tbody", {},
    KEYS.filter((k) => c[k] !== undefined && c[k] !== null).map((k) => h("tr", {}, h("th", {}, k), h("td", {}, typeof c[k] === "number" ? c[k].toLocaleString() : String(c[k])))),
    c.system ? h("tr", {}, h("th", {}, "system"), h("td", {}, c.system)) : null,
    Object.keys(c.model_options || {}).length ? h("tr", {}, h("th", {}, "parameters"), h("td", {}, JSON.stringify(c.model_options))) : null)));
  const tensor = h("input", { type: "text", placeholder: "default: the token embedding table" });
  const view = h("div", { class: "chart" });
  async function run() {
    try {
      const w = await post("/api/inspect/weights", { model: picker.value(), tensor: tensor.value || null, bins: 60 });
      const hg = w.histogram;
      view.replaceChildren(h("p", {}, `${hg.name} ${JSON.stringify(hg.shape)}${hg.stored ? `, stored as ${hg.stored}` : ""}${hg.dequantized ? " (dequantized values)" : ""}: mean ${hg.mean.toPrecision(3)}, std ${hg.std.toPrecision(3)}, min ${hg.min.toPrecision(3)}, max ${hg.max.toPrecision(3)}`),
        histogram(hg.counts, hg.edges, { title: `histogram of ${hg.name}` }),
        h("h2", {}, "Parameters by component"),
        h("table", {}, h("tbody", {}, Object.entries(w.totals).map(([k, n]) => h("tr", {}, h("th", {}, k), h("td", { class: "n" }, n.toLocaleString()), h("td", { class: "n" }, `${(100 * n / w.total).toFixed(1)}%`))))),
        h("details", {}, h("summary", {}, "tensors"), h("table", {}, h("tbody", {}, w.rows.map((r) => h("tr", {}, h("td", {}, r.name), h("td", {}, r.shape ? r.shape.join("×") : "various"), h("td", {}, `×${r.times}`), h("td", {}, Object.keys(r.stored).join(", ")), h("td", { class: "n" }, r.count.toLocaleString())))))));
    } catch (e) { view.replaceChildren(errorBox(e)); }
  }
  out.append(h("h2", {}, "Weights"), field("Tensor (a name or a unique part of one)", tensor), h("button", { type: "button", onclick: run }, "Histogram"), view);
  await run();
}
