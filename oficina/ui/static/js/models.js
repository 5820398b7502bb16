// The model and version pickers shared by the pages.
import { get, modelNames } from "./api.js";
import { field, h, select } from "./dom.js";

const LAST = "oficina.model";

// Returns {element, value()} where value() is "name" or "name@N" for a chosen version.
export async function modelPicker(onChange, { versions = true, label = "Model" } = {}) {
  const names = await modelNames();
  if (!names.length) throw new Error("no models in the registry yet: `oficina pull smollm2` adds one");
  const start = names.includes(localStorage.getItem(LAST)) ? localStorage.getItem(LAST) : names[0];
  const model = select(names, start, { "data-role": "model" });
  const version = select([["", "current"]], "", { "data-role": "version" });
  async function fillVersions() {
    version.replaceChildren(h("option", { value: "" }, "current"));
    if (!versions) return;
    try {
      const g = await get(`/api/ui/lineage?name=${encodeURIComponent(model.value)}`);
      for (const n of g.nodes.filter((n) => n.name === g.name).reverse())
        version.append(h("option", { value: n.version }, `@${n.version}${n.current ? " (current)" : ""} ${n.producer?.op || ""}`));
    } catch { /* versions are a nicety; the current one always works */ }
  }
  model.addEventListener("change", async () => { localStorage.setItem(LAST, model.value); await fillVersions(); onChange?.(); });
  version.addEventListener("change", () => onChange?.());
  await fillVersions();
  const element = h("div", {}, field(label, model), versions ? field("Version", version) : null);
  return { element, value: () => (version.value ? `${model.value}@${version.value}` : model.value), model, version };
}
