// Arena: the same prompt to two versions, answers shown blind in random order; the user picks
// the better one or a tie. Votes aggregate per pair into a win rate with a 95% Wilson interval
// and export as preference pairs (`oficina dpo`) and chat records (`oficina tune`).
// Votes are kept in this browser (localStorage) until the conversation log stores them.
import { ndjson, options } from "../api.js";
import { download, errorBox, field, h, status } from "../dom.js";
import { modelPicker } from "../models.js";
import { controls } from "../options.js";

const STORE = "oficina.arena";
const votes = () => JSON.parse(localStorage.getItem(STORE) || "[]");
const save = (v) => localStorage.setItem(STORE, JSON.stringify(v));

// Wilson score interval for k successes in n trials (ties count half), z = 1.96.
export function wilson(k, n, z = 1.96) {
  if (!n) return [0, 1];
  const p = k / n, d = 1 + (z * z) / n, c = p + (z * z) / (2 * n), r = z * Math.sqrt((p * (1 - p)) / n + (z * z) / (4 * n * n));
  return [Math.max(0, (c - r) / d), Math.min(1, (c + r) / d)];
}

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
      const vote = (winner) => () => {
        const v = { prompt: prompt.value, a: refs[0], b: refs[1], answers: texts, winner, time: Date.now() / 1000 };
        save([...votes(), v]);
        for (const [i, k] of order.entries()) cards[i].querySelector(".who").textContent = `Answer ${i + 1}: ${refs[k]}`;
        buttons.replaceChildren(h("p", {}, `recorded: ${winner === "tie" ? "a tie" : `${refs[winner === "a" ? 0 : 1]} is better`}`));
        status("vote recorded");
        drawResults();
      };
      const buttons = h("div", { class: "row" },
        h("button", { type: "button", onclick: vote(order[0] === 0 ? "a" : "b") }, "Answer 1 is better"),
        h("button", { type: "button", onclick: vote(order[1] === 0 ? "a" : "b") }, "Answer 2 is better"),
        h("button", { type: "button", class: "secondary", onclick: vote("tie") }, "Tie"));
      round.replaceChildren(h("div", { class: "pair" }, cards), buttons);
    } catch (e) { round.replaceChildren(errorBox(e)); }
    go.disabled = false;
  }

  function drawResults() {
    const all = votes(), pairs = new Map();
    for (const v of all) {
      const [x, y] = [v.a, v.b].sort(), key = `${x} vs ${y}`;
      const p = pairs.get(key) || { x, y, wins: 0, losses: 0, ties: 0 };
      if (v.winner === "tie") p.ties++; else if ((v.winner === "a" ? v.a : v.b) === x) p.wins++; else p.losses++;
      pairs.set(key, p);
    }
    const rows = [...pairs.values()].map((p) => {
      const n = p.wins + p.losses + p.ties, k = p.wins + p.ties / 2, [lo, hi] = wilson(k, n);
      return h("tr", {}, h("td", {}, p.x), h("td", {}, p.y), h("td", { class: "n" }, p.wins), h("td", { class: "n" }, p.losses), h("td", { class: "n" }, p.ties),
        h("td", { class: "n" }, `${(100 * k / n).toFixed(0)}%`), h("td", { class: "n" }, `${(100 * lo).toFixed(0)}–${(100 * hi).toFixed(0)}%`));
    });
    const prefs = all.filter((v) => v.winner !== "tie").map((v) => {
      const w = v.winner === "a" ? 0 : 1;
      return { prompt: v.prompt, chosen: v.answers[w], rejected: v.answers[1 - w] };
    });
    const chats = prefs.map((p) => ({ messages: [{ role: "user", content: p.prompt }, { role: "assistant", content: p.chosen }] }));
    const jsonl = (xs) => xs.map((x) => JSON.stringify(x)).join("\n") + "\n";
    results.replaceChildren(h("h2", {}, `Results (${all.length} votes)`),
      rows.length ? h("table", {}, h("thead", {}, h("tr", {}, ["first", "second", "first wins", "second wins", "ties", "first's win rate", "95% interval"].map((c) => h("th", {}, c)))), h("tbody", {}, rows)) : h("p", { class: "muted" }, "no votes yet"),
      h("div", { class: "row" },
        h("button", { type: "button", class: "secondary", disabled: !prefs.length, onclick: () => download("arena-preferences.jsonl", jsonl(prefs), "application/x-ndjson") }, "Export preference pairs (dpo)"),
        h("button", { type: "button", class: "secondary", disabled: !prefs.length, onclick: () => download("arena-chats.jsonl", jsonl(chats), "application/x-ndjson") }, "Export chat data (tune)"),
        h("button", { type: "button", class: "secondary", disabled: !all.length, onclick: () => { if (confirm("Forget all votes?")) { save([]); drawResults(); } } }, "Clear votes")));
  }

  main.append(h("h1", {}, "Arena"), h("div", { class: "cols" },
    h("aside", { class: "panel" }, a.element, b.element, h("h2", {}, "Parameters (both)"), opts.element),
    h("div", {}, field("Prompt", prompt), go, round, results)));
  drawResults();
}
