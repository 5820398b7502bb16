// The page router: #chat, #playground, ... each a module under pages/ with render(main).
import { apiKey, setKey } from "./api.js";
import { errorBox } from "./dom.js";

const PAGES = ["chat", "playground", "inside", "models", "runs", "logs", "arena", "monitor"];
let current = null;

async function route() {
  const name = PAGES.includes(location.hash.slice(1).split("/")[0]) ? location.hash.slice(1).split("/")[0] : "chat";
  for (const a of document.querySelectorAll("header nav a")) {
    if (a.getAttribute("href") === `#${name}`) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  current?.leave?.();
  const main = document.getElementById("main");
  main.replaceChildren();
  document.title = `oficina · ${name}`;
  try {
    current = await import(`./pages/${name}.js`);
    await current.render(main);
  } catch (e) {
    main.append(errorBox(e));
  }
  performance.mark(`rendered:${name}`);  // read by bench/bench_ui.py
}

const key = document.getElementById("api-key");
key.value = apiKey();
key.addEventListener("change", () => { setKey(key.value.trim()); route(); });
window.addEventListener("hashchange", route);
route();
