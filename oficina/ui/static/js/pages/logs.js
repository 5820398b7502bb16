// Logs and ratings: browse and search the server's conversation log, rate or correct an answer
// (good/bad, a better answer, fluency/coherence/factuality 1-5), export what was rated as chat
// records for `oficina tune` or preference pairs for `oficina dpo`.
import { apiKey, get, modelNames, post } from "../api.js";
import { download, errorBox, field, h, select, status } from "../dom.js";

const SCORES = ["fluency", "coherence", "factuality"];
const clip = (t, n = 80) => (t.length > n ? t.slice(0, n - 1) + "…" : t);
const when = (t) => new Date(t * 1000).toLocaleString();

export async function render(main) {
  const models = await modelNames().catch(() => []);
  const text = h("input", { type: "search", placeholder: "words in the prompt or answer" });
  const model = select([["", "all models"], ...models], "");
  const rated = select([["", "all"], ["any", "rated or corrected"], ["none", "not rated"], ["good", "good"], ["bad", "bad"], ["corrected", "corrected"]], "");
  const failed = h("input", { type: "checkbox" });
  const list = h("section", { "aria-live": "polite" }), detail = h("section");
  const exportNote = h("p", { class: "hint" });

  async function search(ev) {
    ev?.preventDefault();
    const q = new URLSearchParams({ limit: 200 });
    if (text.value) q.set("text", text.value);
    if (model.value) q.set("model", model.value);
    if (rated.value) q.set("rated", rated.value);
    if (failed.checked) q.set("failed", "1");
    try {
      const { entries } = await get(`/api/ui/logs?${q}`);
      list.replaceChildren(entries.length ? h("table", {}, h("thead", {}, h("tr", {}, ["#", "when", "model", "prompt", "answer", "tokens", "seconds", "rating"].map((c) => h("th", {}, c)))),
        h("tbody", {}, entries.map((e) => h("tr", { "data-id": e.id },
          h("td", {}, h("button", { type: "button", class: "secondary", "aria-label": `open entry ${e.id}`, onclick: () => open(e.id) }, String(e.id))),
          h("td", {}, when(e.created)), h("td", {}, e.model), h("td", {}, clip(e.prompt)), h("td", { class: e.error ? "error" : "" }, clip(e.error || e.output)),
          h("td", { class: "n" }, `${e.prompt_tokens}+${e.output_tokens}`), h("td", { class: "n" }, e.total_s?.toFixed(2) ?? ""),
          h("td", {}, [e.rating, e.better ? "corrected" : ""].filter(Boolean).join(", ")))))) : h("p", { class: "muted" }, "no entries match"));
    } catch (e) { list.replaceChildren(errorBox(e)); }
  }

  async function open(id) {
    try {
      const e = await get(`/api/ui/logs/entry?id=${id}`);
      const verdict = select([["", "not rated"], ["good", "good"], ["bad", "bad"]], e.rating || "");
      const better = h("textarea", { rows: 3, placeholder: "the answer the model should have given" }, e.better || "");
      const scores = Object.fromEntries(SCORES.map((k) => [k, select([["", "—"], 1, 2, 3, 4, 5], "", { "data-score": k })]));
      const note = h("input", { type: "text" });
      const save = async (ev) => {
        ev.preventDefault();
        const body = { id: e.id, rating: verdict.value || null, better: better.value.trim() || null, note: note.value || null,
          scores: Object.fromEntries(SCORES.filter((k) => scores[k].value).map((k) => [k, +scores[k].value])) };
        try { await post("/api/ui/logs/rate", body); status(`entry ${e.id} rated`); await search(); await open(e.id); }
        catch (err) { form.append(errorBox(err)); }
      };
      const form = h("form", { class: "panel rate", onsubmit: save }, h("h2", {}, "Review"),
        field("Verdict", verdict), field("Corrected answer", better),
        h("div", { class: "row" }, SCORES.map((k) => field(`${k} (1–5)`, scores[k]))), field("Note", note),
        e.note ? h("p", { class: "hint" }, `saved note: ${e.note}`) : null, h("button", { type: "submit" }, "Save rating"));
      detail.replaceChildren(h("h2", {}, `Entry ${e.id} · ${e.model} · ${when(e.created)}`),
        h("div", { class: "messages" }, e.messages.map((m) => h("div", { class: `msg ${m.role}` }, h("div", { class: "who" }, m.role), h("div", { class: "text" }, String(m.content ?? "")))),
          h("div", { class: "msg assistant" }, h("div", { class: "who" }, "answer"), h("div", { class: "text" }, e.output || e.error))),
        h("p", { class: "stats" }, `finish ${e.finish || "?"} · ${e.prompt_tokens} prompt + ${e.output_tokens} answer tokens · first token ${e.ttft_s?.toFixed(3) ?? "?"} s · total ${e.total_s?.toFixed(3) ?? "?"} s${e.cached ? " · cache hit" : ""}${e.cost != null ? ` · cost ${e.cost}` : ""}`),
        form);
    } catch (err) { detail.replaceChildren(errorBox(err)); }
  }

  async function exportAs(format) {
    const q = new URLSearchParams({ format });
    if (model.value) q.set("model", model.value);
    const r = await fetch(`/api/ui/logs/export?${q}`, { headers: apiKey() ? { Authorization: `Bearer ${apiKey()}` } : {} });
    if (!r.ok) { exportNote.textContent = (await r.json().catch(() => ({}))).error || `${r.status}`; return; }
    const body = await r.text(), skipped = JSON.parse(r.headers.get("X-Oficina-Skipped") || "{}");
    download(`oficina-${format}.jsonl`, body, "application/x-ndjson");
    const left = Object.entries(skipped).map(([why, n]) => `${n} ${why}`).join(", ");
    exportNote.textContent = `exported ${body.trim().split("\n").length} records${left ? `; left out: ${left}` : ""}`;
  }

  main.append(h("h1", {}, "Logs and ratings"),
    h("form", { class: "row", onsubmit: search, role: "search" }, field("Search", text), field("Model", model), field("Rated", rated),
      h("label", {}, failed, " failed only"), h("button", { type: "submit" }, "Search")),
    list, detail, h("h2", {}, "Export rated answers"),
    h("div", { class: "row" }, h("button", { type: "button", class: "secondary", onclick: () => exportAs("chat") }, "Chat records for oficina tune"),
      h("button", { type: "button", class: "secondary", onclick: () => exportAs("pairs") }, "Preference pairs for oficina dpo")), exportNote);
  await search();
}
