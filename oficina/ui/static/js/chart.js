// Charts drawn as SVG by hand: heat maps, line charts, histograms, a lineage graph. Labels are
// SVG text nodes (textContent), so token text shows as typed.
import { s } from "./dom.js";

const build = (el, attrs) => { for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v); return el; };

// White -> deep blue for weights in [0, 1]; blue <-> red for similarities in [-1, 1].
export const blue = (x) => { const t = Math.max(0, Math.min(1, x)); return `rgb(${Math.round(255 - 224 * t)},${Math.round(255 - 177 * t)},${Math.round(255 - 134 * t)})`; };
export const diverging = (x) => x >= 0 ? blue(x) : `rgb(255,${Math.round(255 + 180 * x)},${Math.round(255 + 180 * x)})`;
const clip = (t, n = 14) => (t.length > n ? t.slice(0, n - 1) + "…" : t);

// matrix[row][col]; rowLabels / colLabels are shown as text. onCell(i, j) on click.
export function heatmap(matrix, rowLabels, colLabels, { cell = 26, color = blue, values = false, title = "", onRow } = {}) {
  const n = rowLabels.length, m = colLabels.length;
  const left = 8 + 7 * Math.min(16, Math.max(...rowLabels.map((l) => l.length), 1));
  const top = 8 + 7 * Math.min(16, Math.max(...colLabels.map((l) => l.length), 1));
  const W = left + m * cell + 10, H = top + n * cell + 10;
  const svg = s("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title, class: "heatmap" }, s("title", {}, title));
  rowLabels.forEach((l, i) => {
    const t = s("text", { x: left - 4, y: top + i * cell + cell / 2 + 4, "text-anchor": "end", class: onRow ? "rowlabel link" : "rowlabel" }, clip(l, 16));
    if (onRow) {  // a focusable button for keyboards and screen readers, not only a click target
      build(t, { tabindex: 0, role: "button", "aria-label": `${l}: its top five` });
      t.addEventListener("click", () => onRow(i));
      t.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); onRow(i); } });
      t.style.cursor = "pointer";
    }
    svg.append(t);
  });
  colLabels.forEach((l, j) => {
    const x = left + j * cell + cell / 2 + 4, y = top - 4;
    svg.append(s("text", { x, y, transform: `rotate(-60 ${x} ${y})` }, clip(l, 16)));
  });
  for (let i = 0; i < n; i++) for (let j = 0; j < m; j++) {
    const v = matrix[i][j];
    const r = s("rect", { x: left + j * cell, y: top + i * cell, width: cell - 1, height: cell - 1, fill: color(v), class: "cell" },
      s("title", {}, `${rowLabels[i]} → ${colLabels[j]}: ${v.toFixed(3)}`));
    svg.append(r);
    if (values) svg.append(s("text", { x: left + j * cell + cell / 2, y: top + i * cell + cell / 2 + 4, "text-anchor": "middle", fill: Math.abs(v) > 0.6 ? "#fff" : "#000" }, v.toFixed(2)));
  }
  return svg;
}

function ticks(lo, hi, n = 5) {
  if (!(hi > lo)) return [lo];
  const step = Math.pow(10, Math.floor(Math.log10((hi - lo) / n)));
  const k = [1, 2, 5, 10].find((f) => (hi - lo) / (f * step) <= n) * step;
  const out = [];
  for (let v = Math.ceil(lo / k) * k; v <= hi + 1e-12; v += k) out.push(+v.toPrecision(12));
  return out;
}

// series: [{name, points: [[x, y]...], color}]
export function lines(series, { width = 640, height = 280, xlabel = "", ylabel = "", title = "" } = {}) {
  const pts = series.flatMap((s) => s.points);
  const svg = s("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": title, class: "lines" }, s("title", {}, title));
  if (!pts.length) return svg;
  const L = 56, R = 12, T = 12, B = 40;
  let [x0, x1] = [Math.min(...pts.map((p) => p[0])), Math.max(...pts.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...pts.map((p) => p[1])), Math.max(...pts.map((p) => p[1]))];
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) { y0 -= 0.5; y1 += 0.5; }
  const X = (x) => L + ((x - x0) / (x1 - x0)) * (width - L - R);
  const Y = (y) => height - B - ((y - y0) / (y1 - y0)) * (height - T - B);
  for (const v of ticks(y0, y1)) svg.append(s("line", { x1: L, x2: width - R, y1: Y(v), y2: Y(v), class: "grid" }), s("text", { x: L - 4, y: Y(v) + 4, "text-anchor": "end" }, String(v)));
  for (const v of ticks(x0, x1)) svg.append(s("text", { x: X(v), y: height - B + 14, "text-anchor": "middle" }, String(v)));
  svg.append(s("line", { x1: L, x2: L, y1: T, y2: height - B, class: "axis" }), s("line", { x1: L, x2: width - R, y1: height - B, y2: height - B, class: "axis" }));
  svg.append(s("text", { x: (L + width - R) / 2, y: height - 6, "text-anchor": "middle" }, xlabel), s("text", { x: 12, y: T + 4 }, ylabel));
  series.forEach((se, k) => {
    const color = se.color || ["#1f4e79", "#b8860b", "#1e6b30", "#a4262c"][k % 4];
    svg.append(s("polyline", { points: se.points.map((p) => `${X(p[0])},${Y(p[1])}`).join(" "), fill: "none", stroke: color, "stroke-width": 2 }));
    if (se.points.length < 40) for (const p of se.points) svg.append(s("circle", { cx: X(p[0]), cy: Y(p[1]), r: 2.5, fill: color }, s("title", {}, `${se.name} ${p[0]}: ${p[1]}`)));
    svg.append(s("text", { x: width - R - 4, y: T + 14 + 14 * k, "text-anchor": "end", fill: color }, se.name));
  });
  return svg;
}

export function histogram(counts, edges, { width = 640, height = 220, title = "" } = {}) {
  const svg = s("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": title, class: "histogram" }, s("title", {}, title));
  const L = 50, R = 10, T = 10, B = 30, max = Math.max(...counts, 1), bw = (width - L - R) / counts.length;
  counts.forEach((c, i) => {
    const hgt = (c / max) * (height - T - B);
    svg.append(s("rect", { x: L + i * bw, y: height - B - hgt, width: Math.max(1, bw - 1), height: hgt, fill: "#1f4e79" },
      s("title", {}, `${edges[i].toPrecision(3)} … ${edges[i + 1].toPrecision(3)}: ${c}`)));
  });
  svg.append(s("line", { x1: L, x2: width - R, y1: height - B, y2: height - B, class: "axis" }));
  const lo = edges[0], hi = edges[edges.length - 1];
  svg.append(s("text", { x: L, y: height - 10 }, lo.toPrecision(3)), s("text", { x: width - R, y: height - 10, "text-anchor": "end" }, hi.toPrecision(3)),
    s("text", { x: L - 4, y: T + 10, "text-anchor": "end" }, String(max)));
  return svg;
}

// A layered graph: nodes [{id, lines: [..], current}], edges [[from, to]]; parents left of children.
export function graph(nodes, edges, { onClick } = {}) {
  const depth = new Map(nodes.map((n) => [n.id, 0]));
  for (let k = 0; k < nodes.length; k++) for (const [a, b] of edges) if (depth.has(a) && depth.has(b)) depth.set(b, Math.max(depth.get(b), depth.get(a) + 1));
  const cols = new Map();
  for (const n of nodes) { const d = depth.get(n.id); cols.set(d, [...(cols.get(d) || []), n]); }
  const bw = 190, bh = 58, gx = 60, gy = 16, pos = new Map();
  for (const [d, list] of cols) list.forEach((n, i) => pos.set(n.id, [10 + d * (bw + gx), 10 + i * (bh + gy)]));
  const W = 20 + (Math.max(...cols.keys()) + 1) * (bw + gx), H = 20 + Math.max(...[...cols.values()].map((l) => l.length)) * (bh + gy);
  const svg = s("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "version lineage", class: "graph" },
    s("defs", {}, s("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 6, markerHeight: 6, orient: "auto" }, s("path", { d: "M0,0 L10,5 L0,10 z", fill: "#555" }))));
  for (const [a, b] of edges) {
    if (!pos.has(a) || !pos.has(b)) continue;
    const [ax, ay] = pos.get(a), [bx, by] = pos.get(b);
    svg.append(s("path", { class: "edge", d: `M${ax + bw},${ay + bh / 2} C${ax + bw + gx / 2},${ay + bh / 2} ${bx - gx / 2},${by + bh / 2} ${bx},${by + bh / 2}` }));
  }
  for (const n of nodes) {
    const [x, y] = pos.get(n.id);
    const g = s("g", { class: n.current ? "node current" : "node", transform: `translate(${x},${y})`, tabindex: 0, role: "button", "aria-label": n.lines.join(", ") },
      s("rect", { width: bw, height: bh, rx: 5 }),
      n.lines.slice(0, 3).map((l, i) => s("text", { x: 8, y: 17 + 16 * i, "font-weight": i ? 400 : 700 }, clip(l, 26))));
    if (onClick) { g.addEventListener("click", () => onClick(n)); g.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") onClick(n); }); }
    svg.append(g);
  }
  return svg;
}
