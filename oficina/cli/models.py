"""Registry commands: pull, list, show, create, cp, rm, history, rollback."""

from __future__ import annotations

import json
from pathlib import Path

from ..create import create as do_create
from ..create import to_modelfile
from ..errors import OficinaError
from ..models.info import describe
from ..options import Options
from ..registry.sources import pull as do_pull
from ..tuning.method import method_of_adapter
from .common import console, count, human, print_history, registry, short, when


def pull(args) -> None:
    entry = do_pull(registry(), args.source, args.name)
    print(f"{short(entry.name)} version {entry.version} ({entry.digest[7:19]}) {human(entry.manifest.size)}")


def list_(args) -> None:
    from rich.table import Table

    entries = registry().list()
    if args.json:
        print(json.dumps([{"name": e.name, "version": e.version, "digest": e.digest,
                           "size": e.manifest.size, **e.manifest.details} for e in entries], indent=2))
        return
    t = Table(box=None, pad_edge=False)
    for col in ("NAME", "VERSION", "ID", "SIZE", "PARAMS", "QUANT", "MODIFIED"):
        t.add_column(col)
    for e in entries:
        d = e.manifest.details
        t.add_row(e.name, str(e.version), e.digest[7:19], human(e.manifest.size),
                  count(d.get("parameters")), str(d.get("quantization", "-")),
                  when(e.created, seconds=False))
    console().print(t)


def cp(args) -> None:
    e = registry().copy(args.source, args.destination)
    print(f"copied {args.source} to {short(e.name)} (version {e.version})")


def rm(args) -> None:
    reg = registry()
    for name in args.names:
        freed = reg.remove(name)
        print(f"deleted {name} ({human(freed)} freed)")


def history(args) -> None:
    versions, head = registry().history(args.name)
    if args.json:
        print(json.dumps([{"version": e.version, "current": e.version == head, "digest": e.digest,
                           "parent": e.parent, "created": e.created, "producer": e.producer,
                           "metrics": e.metrics} for e in versions], indent=2))
        return
    print_history(versions, head, {"METRICS": lambda e: ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in e.metrics.items()) or "-"})


def rollback(args) -> None:
    e = registry().rollback(args.name, args.to)
    print(f"{short(e.name)} now points at version {e.version} ({e.digest[7:19]})")


def create(args) -> None:
    e = do_create(registry(), args.name, Path(args.file), quantize=args.quantize)
    print(f"created {short(e.name)} version {e.version} ({e.digest[7:19]})")


def show(args) -> None:
    # here, not at the top: loads torch (`oficina --help` stays light)
    from ..api import resolve

    reg = registry()
    entry = resolve(args.name, reg)
    m = entry.manifest
    if args.modelfile:
        print(to_modelfile(entry, reg), end="")
        return
    if args.parameters:
        for k, v in Options.from_mapping(m.params).to_pairs():
            print(f"{k:<20} {json.dumps(v) if k == 'stop' else v}")
        return
    if args.template or args.system or args.license:
        text = m.template if args.template else m.system if args.system else "\n".join(m.license)
        print(text or "", end="\n" if text else "")
        return
    if m.format == "remote":  # no weights here: an OpenAI-compatible upstream answers (serve/remote.py)
        print(json.dumps({"name": entry.name, "version": entry.version, "digest": entry.digest, **m.details,
                          "options": m.params, "system": m.system}, indent=2) if args.json else
              f"model      {entry.name} (version {entry.version}, {entry.digest[7:19]})\n"
              f"remote     {m.details['upstream_model']} at {m.details['remote']} (OpenAI-compatible; "
              f"`oficina serve` routes its requests there)"
              + "".join(f"\nparameter  {k} {v}" for k, v in Options.from_mapping(m.params).to_pairs()))
        return
    info = describe(reg.snapshot(entry), m.format)
    params = Options.from_mapping(m.params).to_dict()
    if args.json:
        d = info.to_dict(tensors=args.verbose)
        d.update(name=entry.name, version=entry.version, digest=entry.digest, options=params,
                 model_options=m.params, license=m.license or ([info.license] if info.license else []),
                 template=m.template, system=m.system, adapters=[a.path for a in m.adapters])
        print(json.dumps(d, indent=2))
        return
    _print_info(entry, info, params, reg)


def _print_info(entry, info, params, reg=None) -> None:
    from rich.table import Table

    c = console()
    t = Table(box=None, pad_edge=False, show_header=False)
    t.add_column(style="bold")
    t.add_column()
    rows = [
        ("model", f"{entry.name} (version {entry.version}, {entry.digest[7:19]})"),
        ("architecture", info.architecture), ("family", info.family), ("kind", info.kind),
        ("parameters", f"{count(info.parameters)} ({info.parameters:,})"),
        ("layers", info.layers), ("attention heads", info.heads), ("key/value heads", info.kv_heads),
        ("head dimension", info.head_dim), ("context length", info.context_length),
        ("embedding length", info.embedding_length), ("feed-forward length", info.feed_forward_length),
        ("vocabulary size", info.vocab_size),
        ("quantization", f"{info.file_type}, {info.bits_per_weight:.2f} bits per weight"),
        ("file size", human(info.file_size)), ("format", info.format),
        ("chat template", "yes" if info.chat_template or entry.manifest.template else "no"),
        ("license", "; ".join(entry.manifest.license) or info.license or "-"),
    ]
    for k, v in rows:
        t.add_row(k, "-" if v is None else str(v))
    c.print(t)
    c.print("\n[bold]tensor types by component[/]")
    q = Table(box=None, pad_edge=False, show_header=False)
    for comp, types in info.quantization.items():
        q.add_row(f"  {comp}", ", ".join(f"{k} x{n}" for k, n in types.items()))
    c.print(q)
    c.print("\n[bold]parameters[/] (* = set by this model)")
    p = Table(box=None, pad_edge=False, show_header=False)
    for k, v in params.items():
        p.add_row(f"  {k}", json.dumps(v) if isinstance(v, list) else str(v),
                  "*" if k in entry.manifest.params else "")
    c.print(p)
    if entry.manifest.adapters and reg is not None:
        c.print("\n[bold]adapters[/] (applied on top of the weights above, in order)")
        a = Table(box=None, pad_edge=False, show_header=False)
        for index, kind, size in _adapters(entry, reg):
            a.add_row(f"  {index}", kind, human(size))
        c.print(a)
    if entry.manifest.system:
        c.print("\n[bold]system[/]")
        c.print(f"  {entry.manifest.system}", markup=False)


def _adapters(entry, reg) -> list[tuple[str, str, int]]:
    """(index, method, bytes) of each adapter a registry model stacks on its weights."""
    sizes: dict[str, int] = {}
    for f in entry.manifest.adapters:
        index = f.path.split("/", 1)[0]
        sizes[index] = sizes.get(index, 0) + f.size
    out = []
    for index, size in sizes.items():
        folder = reg.snapshot(entry) / "adapters" / index
        try:
            kind = "gguf lora" if (folder / "adapter.gguf").is_file() else method_of_adapter(folder)
        except OficinaError:
            kind = "unknown"
        out.append((index, kind, size))
    return out


def register(sub) -> None:
    s = sub.add_parser("pull", help="fetch a model into the registry (catalogue name, .gguf, HF folder, hf://id)")
    s.add_argument("source")
    s.add_argument("--name", help="register under this name (default: derived from the source)")
    s.set_defaults(func=pull)

    s = sub.add_parser("list", aliases=["ls"], help="models in the registry")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=list_)

    s = sub.add_parser("show", help="what a model is: architecture, sizes, quantization, parameters")
    s.add_argument("name")
    s.add_argument("--json", action="store_true")
    s.add_argument("--verbose", "-v", action="store_true", help="with --json: every tensor")
    s.add_argument("--modelfile", action="store_true", help="a Modelfile that re-creates the model")
    s.add_argument("--parameters", action="store_true")
    s.add_argument("--template", action="store_true")
    s.add_argument("--system", action="store_true")
    s.add_argument("--license", action="store_true")
    s.set_defaults(func=show)

    s = sub.add_parser("create", help="create a model from a Modelfile")
    s.add_argument("name")
    s.add_argument("-f", "--file", default="Modelfile")
    s.add_argument("-q", "--quantize", metavar="TYPE",
                   help="store the weights as one GGUF file of this type (e.g. q4_K_M, q8_0; see oficina export)")
    s.set_defaults(func=create)

    s = sub.add_parser("cp", help="copy a model to a new name")
    s.add_argument("source")
    s.add_argument("destination")
    s.set_defaults(func=cp)

    s = sub.add_parser("rm", help="remove models")
    s.add_argument("names", nargs="+")
    s.set_defaults(func=rm)

    s = sub.add_parser("history", help="versions of a model, their parents and what made them")
    s.add_argument("name")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=history)

    s = sub.add_parser("rollback", help="point a name back at an earlier version")
    s.add_argument("name")
    s.add_argument("--to", type=int, help="version number (default: the one before the current)")
    s.set_defaults(func=rollback)
