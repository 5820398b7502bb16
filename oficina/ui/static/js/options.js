// One control per row of the Options table (GET /api/options): a slider where the range is
// known (valid bounds, or the typical span for open-ended ones) plus a number box that takes any
// valid value. Only parameters the user changed are sent, so the model's own defaults apply.
import { h, uid } from "./dom.js";

function step(row) {
  if (row.type === "int") return 1;
  const span = (row.max ?? row.typical?.[1] ?? 2) - (row.min ?? row.typical?.[0] ?? 0);
  return span <= 1 ? 0.01 : 0.05;
}

export function controls(table, names, onChange) {
  const rows = table.options.filter((r) => !names || names.includes(r.name));
  const values = {};
  const wrap = h("div", { class: "opts" });
  for (const row of rows) {
    const id = uid("opt-");
    const help = `${row.help}; default ${JSON.stringify(row.default)}, valid ${row.valid}`;
    let box;
    const changed = () => {
      box.classList.toggle("changed", row.name in values);
      onChange?.(row.name, values);
    };
    if (row.type === "list") {
      const ta = h("textarea", { id, rows: 2, "aria-describedby": `${id}-h`, placeholder: "one per line" });
      ta.addEventListener("input", () => {
        const v = ta.value.split("\n").filter((x) => x);
        if (v.length) values[row.name] = v; else delete values[row.name];
        changed();
      });
      box = h("div", { class: "opt", "data-name": row.name }, h("label", { for: id }, row.name), ta, h("div", { class: "hint", id: `${id}-h` }, help));
    } else {
      const lo = row.min ?? row.typical?.[0], hi = row.typical?.[1] ?? row.max;
      const num = h("input", { type: "number", id, step: step(row), value: row.default, "aria-describedby": `${id}-h`,
        min: row.min ?? undefined, max: row.max ?? undefined });
      let slider = null;
      if (lo !== undefined && lo !== null && hi !== undefined && hi !== null) {
        slider = h("input", { type: "range", min: lo, max: hi, step: step(row), value: row.default, "aria-label": `${row.name} slider`, "data-name": row.name });
        slider.addEventListener("input", () => { num.value = slider.value; set(slider.value); });
      }
      const set = (raw) => {
        const v = row.type === "int" ? parseInt(raw, 10) : parseFloat(raw);
        if (raw === "" || Number.isNaN(v) || v === row.default) delete values[row.name];
        else values[row.name] = v;
        changed();
      };
      num.addEventListener("input", () => { if (slider) slider.value = num.value; set(num.value); });
      box = h("div", { class: "opt", "data-name": row.name }, h("label", { for: id }, row.name),
        h("div", { class: slider ? "ctl" : "ctl single" }, slider, num), h("div", { class: "hint", id: `${id}-h` }, help));
      box.reset = () => { num.value = row.default; if (slider) slider.value = row.default; };
    }
    wrap.append(box);
  }
  const reset = h("button", { type: "button", class: "secondary", onclick: () => {
    for (const k of Object.keys(values)) delete values[k];
    for (const b of wrap.querySelectorAll(".opt")) { b.reset?.(); b.classList.remove("changed"); const ta = b.querySelector("textarea"); if (ta) ta.value = ""; }
    onChange?.(null, values);
  } }, "Reset to defaults");
  return { element: h("div", {}, wrap, h("div", { class: "row" }, reset)), values };
}
