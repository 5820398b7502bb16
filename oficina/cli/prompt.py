"""``oficina prompt``: the prompt library (add, list, show, history, diff, render, test, label)."""

from __future__ import annotations

import json

from ..errors import OficinaError
from .common import when


def parse_vars(pairs) -> dict[str, str]:
    out = {}
    for p in pairs or ():
        k, sep, v = p.partition("=")
        if not sep or not k:
            raise OficinaError(f"--var needs NAME=VALUE, got {p!r}")
        out[k] = v
    return out


def _store():
    # here, not at the top: loads jinja2/yaml (`oficina --help` stays light)
    from ..prompts import PromptStore

    return PromptStore()


def add(args) -> None:
    # here, not at the top: loads jinja2/yaml (`oficina --help` stays light)
    from ..prompts import read

    p, new = _store().add(args.name, read(args.file), source=str(args.file))
    print(f"added {p.ref} ({p.digest[7:19]})" if new else f"unchanged: {p.ref} has the same content")


def list_(args) -> None:
    rows = _store().names()
    if args.json:
        print(json.dumps([{"name": n, "version": v, "modified": t, "labels": lab} for n, v, t, lab in rows]))
        return
    print(f"{'NAME':<24} {'VERSION':<8} {'LABELS':<32} MODIFIED")
    for n, v, t, lab in rows:
        labels = ", ".join(f"{k}→{x}" for k, x in sorted(lab.items())) or "-"
        print(f"{n:<24} {v:<8} {labels:<32} {when(t)}")


def show(args) -> None:
    p = _store().get(args.ref)
    if args.json:
        print(json.dumps({"ref": p.ref, "digest": p.digest, **p.spec.to_dict()}, ensure_ascii=False, indent=2))
        return
    print(f"# {p.ref} ({p.digest[7:19]}, {when(p.created)})")
    print(p.spec.to_yaml(), end="")


def history(args) -> None:
    versions, moves, tests = _store().history(args.name)
    print(f"{'VERSION':<8} {'ID':<13} {'CREATED':<20} SOURCE")
    for p in versions:
        print(f"{p.version:<8} {p.digest[7:19]:<13} {when(p.created):<20} {p.source or '-'}")
    if moves:
        print("\nlabel moves")
        for label, to, frm, at in moves:
            print(f"  {when(at)}  {label}: {frm if frm is not None else '-'} → {to}")
    if tests:
        print("\ntests")
        for v, model, passed, total, score, at in tests:
            print(f"  {when(at)}  version {v} on {model}: {passed}/{total} passed, score {score:.2f}")


def diff(args) -> None:
    store = _store()
    if args.b is None:
        newest = store.get(args.name)
        a, b = (f"{args.name}@{newest.version - 1}", newest.ref) if args.a is None else \
            (_ref(args.name, args.a), newest.ref)
        if newest.version == 1 and args.a is None:
            raise OficinaError(f"{newest.ref} is the only version; nothing to compare")
    else:
        a, b = _ref(args.name, args.a), _ref(args.name, args.b)
    print(store.diff(a, b) or f"{a} and {b} are the same", end="")


def _ref(name: str, v: str) -> str:
    return f"{name}@{v}" if v.isdigit() else f"{name}:{v}"


def render(args) -> None:
    print(_store().get(args.ref).render(parse_vars(args.var)), end="")


def label(args) -> None:
    store = _store()
    version = int(args.version) if args.version else store.get(args.name).version
    before = store.label(args.name, args.label, version)
    print(f"{args.name}:{args.label} → version {version}" + (f" (was {before})" if before else ""))


def test(args) -> int:
    # here, not at the top: loads torch (`oficina --help` stays light)
    from ..api import load
    from ..prompts import test_prompt

    store = _store()
    p = store.get(args.ref)
    names = [args.model] if args.model else p.spec.models
    if not names:
        raise OficinaError(f"{p.ref} names no model: give --model")
    if not p.spec.examples:
        raise OficinaError(f"{p.ref} has no examples to test")
    failed = False
    for name in names:
        model = load(name)
        r = test_prompt(p, model)
        store.record_test(p, r.model, r.passed, len(r.results), r.score)
        failed |= r.passed < len(r.results)
        if args.json:
            print(json.dumps(r.to_dict(), ensure_ascii=False))
            continue
        for i, res in enumerate(r.results, 1):
            mark = "PASS" if res.passed else "FAIL"
            bad = [f"{next(iter(c))}: {next(iter(c.values()))!r}" for c, ok in res.checks if not ok]
            print(f"{mark}  example {i}  score {res.score:.2f}  {res.answer.strip()[:70]!r}"
                  + (f"  failed {', '.join(bad)}" if bad else ""))
        print(f"{p.ref} on {r.model}: {r.passed}/{len(r.results)} passed, score {r.score:.2f}")
    return 1 if failed else 0


def register(sub) -> None:
    s = sub.add_parser("prompt", help="the prompt library: versioned prompts with examples and tests")
    ps = s.add_subparsers(dest="prompt_command", metavar="ACTION", required=True)
    a = ps.add_parser("add", help="store a prompt file as a new version of NAME")
    a.add_argument("name")
    a.add_argument("-f", "--file", required=True, help="prompt.yaml")
    a.set_defaults(func=add)
    a = ps.add_parser("list", help="every prompt, its newest version and labels")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=list_)
    a = ps.add_parser("show", help="a version (NAME, NAME@N, NAME:LABEL) as YAML")
    a.add_argument("ref")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=show)
    a = ps.add_parser("history", help="versions, label moves and test results")
    a.add_argument("name")
    a.set_defaults(func=history)
    a = ps.add_parser("diff", help="what changed between two versions (default: the last two)")
    a.add_argument("name")
    a.add_argument("a", nargs="?", help="version number or label")
    a.add_argument("b", nargs="?", help="version number or label")
    a.set_defaults(func=diff)
    a = ps.add_parser("render", help="the prompt text with --var values")
    a.add_argument("ref")
    a.add_argument("--var", action="append", metavar="NAME=VALUE")
    a.set_defaults(func=render)
    a = ps.add_parser("test", help="run the examples on a model; pass/fail and scores")
    a.add_argument("ref")
    a.add_argument("--model", help="default: the prompt's models")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=test)
    a = ps.add_parser("label", help="point LABEL at a version (default: the newest)")
    a.add_argument("name")
    a.add_argument("label")
    a.add_argument("version", nargs="?")
    a.set_defaults(func=label)
