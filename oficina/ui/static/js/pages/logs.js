// Logs and ratings need the server's conversation log (the Operate issue's routes).
import { h } from "../dom.js";

export async function render(main) {
  main.append(h("h1", {}, "Logs and ratings"),
    h("p", {}, "This server has no conversation log yet. With one, this page lists and searches it and rates answers; meanwhile `oficina logs` works from the command line and the Arena page rates answers side by side."));
}
