// Parameter playground: the next-token distribution before and after the sampling parameters
// (POST /api/inspect/predict, the numbers `oficina predict` prints), redrawn as controls move.
import { options, post } from "../api.js";
import { debounce, errorBox, field, h, pct, tokLabel } from "../dom.js";
import { modelPicker } from "../models.js";
import { controls } from "../options.js";

export async function render(main) {
  const table = await options();
  const picker = await modelPicker(() => refresh());
  const text = h("input", { type: "text", value: "The sky is", "data-role": "prompt" });
  const top = h("input", { type: "number", min: 1, max: 50, value: 12 });
  const summary = h("p", { class: "summary", "aria-live": "polite" });
  const bars = h("div", { class: "bars", "aria-label": "next-token candidates" });
  let seq = 0;
  const opts = controls(table, table.sampling, () => refresh());

  const refresh = debounce(async () => {
    const mine = ++seq;
    main.setAttribute("aria-busy", "true");
    try {
      const model = picker.value();
      const p = await post("/api/inspect/predict", { model, text: text.value, top: +top.value || 12, options: { ...opts.values } });
      if (mine !== seq) return;  // a newer request is on its way
      draw(p);
      summary.dataset.model = model;
    } catch (e) {
      if (mine === seq) bars.replaceChildren(errorBox(e));
    } finally {
      if (mine === seq) main.removeAttribute("aria-busy");
    }
  }, 120);

  function draw(p) {
    summary.textContent = `after ${p.prompt_tokens} prompt tokens: entropy ${p.entropy_bits.toFixed(2)} bits before the parameters ` +
      `(as uncertain as ${Math.pow(2, p.entropy_bits).toFixed(1)} equally likely tokens), ${p.entropy_bits_after.toFixed(2)} bits after; ` +
      `${p.kept} of ${p.vocab_size} tokens can be drawn`;
    summary.dataset.kept = p.kept;
    const max = Math.max(...p.top.map((c) => Math.max(c.prob, c.prob_after)), 1e-9);
    bars.replaceChildren(...p.top.map((c) => {
      const pb = h("span", { class: "p" }), pa = h("span", { class: "pa" });
      pb.style.width = `${(100 * c.prob) / max}%`;
      pa.style.width = `${(100 * c.prob_after) / max}%`;
      return h("button", { type: "button", class: c.prob_after > 0 ? "bar" : "bar removed", "data-token": c.text, "data-prob-after": c.prob_after,
        title: `id ${c.id}, rank ${c.rank}, logit ${c.logit.toFixed(2)}; click to append`,
        "aria-label": `${tokLabel(c.text)}: model ${pct(c.prob)}, after sampling ${c.prob_after ? pct(c.prob_after) : "removed"}; append`,
        onclick: () => { text.value += c.text; refresh(); } },
        h("span", { class: "tok" }, tokLabel(c.text)), h("span", { class: "track" }, pb, pa),
        h("span", { class: "num" }, pct(c.prob)), h("span", { class: "num" }, c.prob_after ? pct(c.prob_after) : "–"));
    }));
  }

  text.addEventListener("input", refresh);
  top.addEventListener("input", refresh);
  main.append(h("h1", {}, "Parameter playground"), h("div", { class: "cols" },
    h("aside", { class: "panel", "aria-label": "model and sampling parameters" }, picker.element, h("h2", {}, "Sampling parameters"), opts.element),
    h("section", {}, field("Text to continue (no chat template)", text), field("Tokens shown", top),
      h("div", { class: "legend" }, h("span", {}, h("span", { class: "sw p" }), "model probability"), h("span", {}, h("span", { class: "sw pa" }), "after sampling parameters (what is drawn from)")),
      h("div", { class: "bar", "aria-hidden": "true" }, h("b", {}, "token"), h("span"), h("b", { class: "num" }, "P"), h("b", { class: "num" }, "P after")),
      bars, summary, h("p", { class: "hint" }, "Click a token to append it and see the next distribution."))));
  refresh();
}
