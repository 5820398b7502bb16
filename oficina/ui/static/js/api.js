// The HTTP API the pages use: the same routes any client calls, with the API key (kept for this
// tab only, in sessionStorage) sent as a bearer token.
const KEY = "oficina.key";

export const apiKey = () => sessionStorage.getItem(KEY) || "";
export const setKey = (k) => (k ? sessionStorage.setItem(KEY, k) : sessionStorage.removeItem(KEY));

function headers() {
  const h = { "Content-Type": "application/json" };
  const k = apiKey();
  if (k) h.Authorization = `Bearer ${k}`;
  return h;
}

async function parse(r) {
  let data = {};
  try { data = await r.json(); } catch { /* an empty or non-JSON body: keep the status line */ }
  if (!r.ok) {
    const e = data.error;
    throw new Error((e && (e.message || e)) || `${r.status} ${r.statusText}`);
  }
  return data;
}

export const get = async (path) => parse(await fetch(path, { headers: headers() }));

export const post = async (path, body, method = "POST", signal) =>
  parse(await fetch(path, { method, headers: headers(), body: JSON.stringify(body), signal }));

// Ollama's streaming: one JSON object per line; yields each as it arrives.
export async function* ndjson(path, body, signal, onHeaders) {
  const r = await fetch(path, { method: "POST", headers: headers(), body: JSON.stringify(body), signal });
  if (!r.ok) await parse(r);
  onHeaders?.(r.headers);
  const reader = r.body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let i;
    while ((i = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, i).trim();
      buf = buf.slice(i + 1);
      if (line) yield JSON.parse(line);
    }
  }
  if (buf.trim()) yield JSON.parse(buf);
}

let optionsTable = null;
export async function options() {
  optionsTable ??= await get("/api/options");
  return optionsTable;
}

// Registry models as "name" strings (Ollama's /api/tags).
export async function modelNames() {
  const t = await get("/api/tags");
  return (t.models || []).map((m) => m.name || m.model);
}
