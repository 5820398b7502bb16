// Arena: the same prompt to two versions, answers shown blind in random order; the user picks
// the better one or a tie. Votes aggregate per pair into a win rate with a 95% Wilson interval
// and export as preference pairs (`oficina dpo`) and chat records (`oficina tune`).
// Votes go to the server (POST /api/ui/arena/vote), which keeps and aggregates them.
import { apiKey, get, ndjson, options, post } from "../api.js";
import { download, errorBox, field, h, status } from "../dom.js";
import { modelPicker } from "../models.js";
import { controls } from "../options.js";

const pc = (x) => `${(100 * x).toFixed(0)}%`;

async function answer(model, prompt, opts) {
  let text = "";
  for await (const c of ndjson("/api/chat", { model, messages: [{ role: "user", content: prompt }], options: opts, stream: true })) {
    if (c.error) throw new Error(c.error);
    text += c.message?.content || "";
  }
  return text;
}

export async function render(main) {
  const table = await options();
  const a = await modelPicker(null, { label: "Model A" }), b = await modelPicker(null, { label: "Model B" });
  const opts = controls(table, table.sampling.concat(["num_predict", "seed"]));
  const prompt = h("textarea", { rows: 3 }, "Explain in two sentences why the sky is blue.");
  const round = h("section", { "aria-live": "polite" }), results = h("section");
  const go = h("button", { type: "button", onclick: play }, "Ask both");

  async function play() {
    go.disabled = true;
    round.replaceChildren(h("p", {}, "both models are answering…"));
    try {
      const refs = [a.value(), b.value()];
      const texts = [];
      for (const r of refs) texts.push(await answer(r, prompt.value, { ...opts.values }));
      const order = Math.random() < 0.5 ? [0, 1] : [1, 0];
      const cards = order.map((k, i) => h("div", { class: "msg assistant", "data-slot": i + 1 }, h("div", { class: "who" }, `Answer ${i + 1}`), h("div", { class: "text" }, texts[k])));
      const vote = (winner) => async () => {
        try {
          const r = await post("/api/ui/arena/vote", { prompt: prompt.value, a: refs[0], b: refs[1], answers: texts, winner });
          for (const [i, k] of order.entries()) cards[i].querySelector(".who").textContent = `Answer ${i + 1}: ${refs[k]}`;
          buttons.replaceChildren(h("p", {}, `recorded: ${winner === "tie" ? "a tie" : `${refs[winner === "a" ? 0 : 1]} is better`}`));
          status("vote recorded");
          drawResults(r);
        } catch (e) { buttons.append(errorBox(e)); }
      };
      const buttons = h("div", { class: "row" },
        h("button", { type: "button", onclick: vote(order[0] === 0 ? "a" : "b") }, "Answer 1 is better"),
        h("button", { type: "button", onclick: vote(order[1] === 0 ? "a" : "b") }, "Answer 2 is better"),
        h("button", { type: "button", class: "secondary", onclick: vote("tie") }, "Tie"));
      round.replaceChildren(h("div", { class: "pair" }, cards), buttons);
    } catch (e) { round.replaceChildren(errorBox(e)); }
    go.disabled = false;
  }

  async function exportAs(format) {
    const r = await fetch(`/api/ui/arena/export?format=${format}`, { headers: apiKey() ? { Authorization: `Bearer ${apiKey()}` } : {} });
    if (!r.ok) return results.append(errorBox(new Error((await r.json().catch(() => ({}))).error || r.status)));
    download(`arena-${format}.jsonl`, await r.text(), "application/x-ndjson");
  }

  async function drawResults(data) {
    try { data ??= await get("/api/ui/arena"); } catch (e) { return results.replaceChildren(errorBox(e)); }
    const rows = data.pairs.map((p) => h("tr", {}, h("td", {}, p.first), h("td", {}, p.second), h("td", { class: "n" }, p.wins), h("td", { class: "n" }, p.losses),
      h("td", { class: "n" }, p.ties), h("td", { class: "n" }, pc(p.win_rate)), h("td", { class: "n" }, `${pc(p.interval[0])}–${pc(p.interval[1])}`)));
    results.replaceChildren(h("h2", {}, `Results (${data.votes} votes)`),
      rows.length ? h("table", {}, h("thead", {}, h("tr", {}, ["first", "second", "first wins", "second wins", "ties", "first's win rate (ties half)", "95% interval"].map((c) => h("th", {}, c)))), h("tbody", {}, rows)) : h("p", { class: "muted" }, "no votes yet"),
      h("div", { class: "row" },
        h("button", { type: "button", class: "secondary", disabled: !data.votes, onclick: () => exportAs("pairs") }, "Export preference pairs (dpo)"),
        h("button", { type: "button", class: "secondary", disabled: !data.votes, onclick: () => exportAs("chat") }, "Export chat data (tune)")));
  }

  main.append(h("h1", {}, "Arena"), h("div", { class: "cols" },
    h("aside", { class: "panel" }, a.element, b.element, h("h2", {}, "Parameters (both)"), opts.element),
    h("div", {}, field("Prompt", prompt), go, round, results)));
  await drawResults();
}
