// Building the page. Text always goes in as text nodes (never innerHTML), so a model's answer or
// a log entry containing markup is shown, not run.
const SVGNS = "http://www.w3.org/2000/svg";

function build(el, attrs, children) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else if (k === "value") el.value = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export const h = (tag, attrs, ...children) => build(document.createElement(tag), attrs, children);
export const s = (tag, attrs, ...children) => build(document.createElementNS(SVGNS, tag), attrs, children);

let ids = 0;
export const uid = (p = "f") => `${p}${++ids}`;

// A labelled control: <label for=id>text</label> + the control.
export function field(text, control, hint) {
  if (!control.id) control.id = uid();
  return h("div", { class: "field" }, h("label", { for: control.id }, text, hint ? h("span", { class: "hint" }, ` ${hint}`) : null), control);
}

export function select(values, current, attrs = {}) {
  const el = h("select", attrs, values.map((v) => {
    const [value, text] = Array.isArray(v) ? v : [v, v];
    return h("option", { value, selected: String(value) === String(current) }, text);
  }));
  return el;
}

export function status(text) {
  const el = document.getElementById("status");
  el.textContent = text || "";
  if (text) setTimeout(() => { if (el.textContent === text) el.textContent = ""; }, 6000);
}

export const errorBox = (e) => h("p", { class: "error", role: "alert" }, String(e.message || e));

export function debounce(fn, ms) {
  let t;
  return (...a) => { clearTimeout(t); t = setTimeout(() => fn(...a), ms); };
}

export const pct = (x) => (x >= 0.0995 ? (100 * x).toFixed(1) : (100 * x).toFixed(2)) + "%";
export const tokLabel = (t) => JSON.stringify(t);

export function download(name, text, type = "application/json") {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = h("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}
