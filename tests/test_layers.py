"""The shape of the package, checked from the source: every import under oficina/ (top-level and
inside functions, read with ``ast``) goes down the layers of docs/architecture.md, no two
packages import each other, only the CLI and ``oficina/__init__.py`` import ``oficina.api``, one
import style (relative), and no module or function grows past the house limits."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "oficina"

# docs/architecture.md, "Which may import which": a package may import its own layer and those
# below it. Keep the two in step.
LAYERS = {
    "errors": 0, "report": 0, "options": 0, "stats": 0,
    "formats": 1, "modelfile": 1,
    "models": 2,
    "registry": 3,
    "generation": 4, "inspect": 4, "evaluation": 4, "tuning": 4, "pretrain": 4, "align": 4,
    "quant": 4, "safety": 4,
    "serve": 5, "ui": 5, "rag": 5, "prompts": 5, "create": 5,
    "api": 6,
    "cli": 7, "__main__": 7, "oficina": 7,  # oficina/__init__.py: lazy re-exports of the API
}
# The web UI is the server's: serve/app.py mounts ui/'s routes in its one table and ui/'s
# handlers read serve/'s conversation log. One component in two folders, so one node here.
COMPONENT = {"ui": "serve"}

# Work another branch of this round finishes; each entry names who removes it.
PENDING_EDGES: set[tuple[str, str]] = set()  # (module, package) edges allowed for one round; none now
PENDING_SIZE: set[str] = set()
PENDING_LONG: set[tuple[str, str]] = set()
MAX_LINES, MAX_FUNCTION = 400, 80


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "oficina"


def _imports(module: str, path: Path):
    """(line, imported module, names) for every import of oficina's own code in ``path``."""
    here = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "oficina":
                    yield node.lineno, a.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[:len(here) - node.level + 1] + ([node.module] if node.module else [])
                target = ".".join(base)
            else:
                target = node.module or ""
            if target.split(".")[0] == "oficina":
                yield node.lineno, target, [a.name for a in node.names]


def _edges():
    """{(from package, to package): ["file:line", ...]} between different packages."""
    edges = defaultdict(list)
    for module, path in MODULES.items():
        src = _package(module)
        rel = str(path.relative_to(ROOT))
        for line, target, names in _imports(module, path):
            if target == "oficina":
                # `from .. import __version__` reads a constant; anything else is the lazy API
                subs = [n for n in names if f"oficina.{n}" in MODULES]
                if names and not subs and set(names) <= {"__version__"}:
                    continue
                targets = [_package(f"oficina.{n}") for n in subs] or ["oficina"]
            else:
                targets = [_package(target)]
            for dst in targets:
                if dst != src and (rel, dst) not in PENDING_EDGES:
                    edges[src, dst].append(f"{rel}:{line}")
    return edges


EDGES = _edges()


def test_every_package_has_a_layer():
    packages = {_package(m) for m in MODULES} - {"data"}
    assert packages <= set(LAYERS), f"add to LAYERS (and docs/architecture.md): {packages - set(LAYERS)}"


def test_imports_go_down_the_layers():
    wrong = [f"{a} (layer {LAYERS[a]}) imports {b} (layer {LAYERS[b]}): {', '.join(where)}"
             for (a, b), where in sorted(EDGES.items()) if LAYERS[b] > LAYERS[a]]
    assert not wrong, "\n".join(wrong)


def test_no_cycle_between_packages():
    graph = defaultdict(set)
    for a, b in EDGES:
        a, b = COMPONENT.get(a, a), COMPONENT.get(b, b)
        if a != b:
            graph[a].add(b)
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle) + "\n" + "\n".join(
                    f"  {x} -> {y}: {', '.join(EDGES.get((x, y), ['(via ui)']))}" for x, y in zip(cycle, cycle[1:])))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_only_the_cli_imports_the_api():
    users = sorted(w for (a, b), where in EDGES.items() if b == "api" and a not in ("cli", "oficina") for w in where)
    assert not users, f"import the module that defines the name, not oficina.api: {users}"


def test_one_import_style_relative_inside_the_package():
    absolute = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "oficina") \
                    or (isinstance(node, ast.Import) and any(a.name.split(".")[0] == "oficina" for a in node.names)):
                absolute.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not absolute, f"spell own imports relative (from ..x import y): {absolute}"


def test_no_module_over_400_lines():
    long = [f"{p.relative_to(ROOT)}: {n}" for p in MODULES.values()
            if (n := len(p.read_text().splitlines())) > MAX_LINES and str(p.relative_to(ROOT)) not in PENDING_SIZE]
    assert not long, f"split these (one job per module): {long}"


def _says_why(lines: list[str], node: ast.AST) -> bool:
    """A comment right above the def (or its decorators), or the docstring, says "one piece"."""
    first = min([d.lineno for d in getattr(node, "decorator_list", [])] + [node.lineno])
    above = []
    i = first - 2
    while i >= 0 and lines[i].strip().startswith("#"):
        above.append(lines[i])
        i -= 1
    text = " ".join(above) + " " + (ast.get_docstring(node) or "")
    return "one piece" in " ".join(text.split())


def test_no_function_over_80_lines_without_a_reason():
    long = []
    for path in MODULES.values():
        src = path.read_text()
        lines = src.splitlines()
        rel = str(path.relative_to(ROOT))
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION and not _says_why(lines, node) and (rel, node.name) not in PENDING_LONG:
                    long.append(f"{rel}:{node.lineno} {node.name} ({n} lines)")
    assert not long, ("split these, or say above the def why each must be one piece "
                      f"(a comment with the words 'one piece'): {long}")


def test_the_checks_see_the_imports():
    """The graph is read from the source, function-level imports included (a regression here
    would make every test above pass vacuously)."""
    assert ("cli", "serve") in EDGES  # function-level in cli/serve.py
    assert ("generation", "models") in EDGES
    assert ("registry", "models") in EDGES  # top-level in registry/publish.py
    assert len(MODULES) > 150
