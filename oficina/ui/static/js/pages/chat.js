// Chat: /api/chat streamed (NDJSON), every Options parameter as a control, stop, per-answer stats.
import { get, ndjson, options, post } from "../api.js";
import { download, errorBox, field, h, select, status } from "../dom.js";
import { modelPicker } from "../models.js";
import { controls } from "../options.js";

let abort = null;
export const leave = () => abort?.abort();

function statsLine(last, elapsed) {
  const parts = [];
  if (last.eval_count !== undefined && last.eval_duration) parts.push(`${(last.eval_count / (last.eval_duration / 1e9)).toFixed(1)} tokens/s`);
  else if (last.eval_count !== undefined) parts.push(`${(last.eval_count / elapsed).toFixed(1)} tokens/s (wall)`);
  if (last.prompt_eval_count !== undefined) parts.push(`prompt ${last.prompt_eval_count} tokens`);
  if (last.eval_count !== undefined) parts.push(`answer ${last.eval_count} tokens`);
  if (last.total_duration) parts.push(`${(last.total_duration / 1e9).toFixed(2)} s total`);
  if (last.done_reason) parts.push(`finished: ${last.done_reason}`);
  if (last.cache) parts.push(last.cache === "hit" ? "cache hit" : `cache ${last.cache}`);
  if (last.cost !== undefined) parts.push(`cost ${+last.cost.toPrecision(3)}`);
  return parts.join(" · ");
}

export async function render(main) {
  const table = await options();
  const history = [];
  const opts = controls(table, null);
  const picker = await modelPicker();
  const system = h("textarea", { rows: 3, placeholder: "the model's own system prompt when empty" });
  const messages = h("div", { class: "messages", "aria-label": "conversation" });
  const prompt = h("textarea", { rows: 3, placeholder: "Ask something (Ctrl+Enter sends)" });
  // A prompt from the library (oficina prompt): its variables as fields; the server renders it
  // and logs which version answered.
  const library = (await get("/api/ui/prompts").catch(() => ({ prompts: [] }))).prompts || [];
  const refs = library.flatMap((p) => [p.name, ...Object.keys(p.labels).map((l) => `${p.name}:${l}`)]);
  const libPick = select([["", "(none: type a message)"], ...refs], "", { "data-role": "prompt" });
  const varBox = h("div", { class: "vars" });
  const varInputs = {};
  libPick.addEventListener("change", () => {
    varBox.replaceChildren();
    for (const k of Object.keys(varInputs)) delete varInputs[k];
    const spec = library.find((p) => p.name === libPick.value.split(":")[0]);
    for (const [name, v] of Object.entries(spec?.variables || {})) {
      varInputs[name] = h("input", { type: "text", "data-var": name, placeholder: v.default ?? "" });
      varBox.append(field(name, varInputs[name], v.description || ""));
    }
  });
  const send = h("button", { type: "submit" }, "Send");
  const stop = h("button", { type: "button", class: "danger", disabled: true, onclick: () => abort?.abort() }, "Stop");
  const exportBtn = h("button", { type: "button", class: "secondary", onclick: () => download("conversation.json", JSON.stringify({ model: picker.value(), system: system.value || undefined, messages: history }, null, 2)) }, "Export");
  const clear = h("button", { type: "button", class: "secondary", onclick: () => { history.length = 0; messages.replaceChildren(); } }, "New chat");

  function bubble(role, text) {
    const body = h("div", { class: "text" }, text);
    const el = h("div", { class: `msg ${role}` }, h("div", { class: "who" }, role), body);
    messages.append(el);
    return { el, body };
  }

  async function ask(ev) {
    ev?.preventDefault();
    const named = libPick.value;
    const variables = Object.fromEntries(Object.entries(varInputs).filter(([, i]) => i.value !== "").map(([k, i]) => [k, i.value]));
    let text = prompt.value.trim();
    if (named) {
      try { text = (await post("/api/ui/prompts/render", { name: named, variables })).text; } catch (e) { messages.append(errorBox(e)); return; }
    }
    if (!text || abort) return;
    prompt.value = "";
    const before = [...(system.value.trim() ? [{ role: "system", content: system.value }] : []), ...history];
    history.push({ role: "user", content: text });
    bubble("user", text);
    const { el, body } = bubble("assistant", "");
    el.setAttribute("aria-busy", "true");
    const msgs = named ? before : [...before, { role: "user", content: text }];
    abort = new AbortController();
    send.disabled = true; stop.disabled = false;
    const t0 = performance.now();
    let answer = "", last = {}, cache = null;
    try {
      const request = { model: picker.value(), messages: msgs, options: { ...opts.values }, stream: true,
        ...(named ? { prompt_name: named, variables } : {}) };
      for await (const chunk of ndjson("/api/chat", request, abort.signal, (hd) => { cache = hd.get("X-Oficina-Cache"); })) {
        if (chunk.error) throw new Error(chunk.error);
        const piece = chunk.message?.content || "";
        answer += piece;
        body.textContent = answer;  // text, never markup
        if (chunk.done) last = { ...chunk, cache };
      }
      el.append(h("div", { class: "stats" }, statsLine(last, (performance.now() - t0) / 1000)));
      if (last.truncated) el.append(h("div", { class: "notice", role: "note" }, `The prompt was truncated: ${typeof last.truncated === "string" ? last.truncated : "it did not fit num_ctx"}`));
      if (last.done_reason === "length") el.append(h("div", { class: "notice" }, "The answer stopped at the length limit (num_predict or num_ctx)."));
    } catch (e) {
      if (e.name === "AbortError") el.append(h("div", { class: "stats" }, `stopped after ${answer.length} characters`));
      else el.append(errorBox(e));
    } finally {
      history.push({ role: "assistant", content: answer });
      el.removeAttribute("aria-busy");
      el.dataset.done = "true";
      abort = null; send.disabled = false; stop.disabled = true;
      status("answer finished");
    }
  }
  prompt.addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) ask(e); });

  main.append(h("h1", {}, "Chat"), h("div", { class: "cols" },
    h("aside", { class: "panel", "aria-label": "model and parameters" }, picker.element, field("System prompt", system),
      field("Library prompt", libPick, "oficina prompt"), varBox,
      h("h2", {}, "Parameters"), opts.element),
    h("section", {}, messages,
      h("form", { class: "ask", onsubmit: ask }, field("Message", prompt), h("div", { class: "row" }, send, stop, clear, exportBtn)))));
}
