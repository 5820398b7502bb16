"""Quantization commands: quantize (PyTorch int8/int4/fp16/bf16, or --report), export (GGUF)."""

from __future__ import annotations

from pathlib import Path

from ..errors import InvalidOptions
from .common import console, human, registry, short


def quantize(args) -> None:
    if args.report:
        return _report(args)
    if not args.to:
        raise InvalidOptions("say what to quantize to: --to fp16|bf16|int8|int4 (or --report to measure every type)")
    # here, not at the top: loads torch (`oficina --help` stays light)
    from ..models.torch_quant import TorchQuantConfig
    from ..quant.convert import quantize_entry

    entry, result = quantize_entry(registry(), args.name, TorchQuantConfig(args.to, args.group_size), args.out)
    group = "" if result.to in ("fp16", "bf16") else (
        f", groups of {result.group_size}" if result.group_size else ", one scale per output channel")
    print(f"{short(entry.name)} version {entry.version} ({entry.digest[7:19]}) {human(entry.manifest.size)}: "
          f"{len(result.modules)} {'tensors' if result.to in ('fp16', 'bf16') else 'linear layers'} as {result.to}{group}")
    if result.kept:
        print("kept in float32:")
        by_reason: dict[str, list[str]] = {}
        for module, why in result.kept.items():
            by_reason.setdefault(why, []).append(module)
        for why, modules in by_reason.items():
            shown = ", ".join(modules[:4]) + (f" and {len(modules) - 4} more" if len(modules) > 4 else "")
            print(f"  {shown}: {why}")
    if result.per_row:
        print(f"  {len(result.per_row)} layer(s) whose width is not a multiple of {result.group_size} "
              f"use one scale per row instead, e.g. {result.per_row[0]}")


def _report(args) -> None:
    # here, not at the top: loads torch (`oficina --help` stays light)
    from ..api import load
    from ..quant.report import DEFAULT_GGUF, DEFAULT_TORCH, measure

    reg = registry()
    model = load(args.name, registry=reg)
    gguf_types = DEFAULT_GGUF if args.types is None else [t for t in args.types.split(",") if t]
    torch_types = DEFAULT_TORCH if args.torch is None else [t for t in args.torch.split(",") if t]
    info = model.info
    reference = ("float32 weights" if info.format == "hf" else
                 f"float32 weights decoded from the registry's {info.file_type} GGUF")
    report = measure(model, gguf_types, torch_types, text_path=args.text, speed=not args.no_speed,
                     name=short(model.entry.name) if model.entry else args.name, reference=reference)
    console().print(report.table())
    print(f"reference: {report.reference}")
    if args.markdown:
        print()
        print(report.markdown())
    chart = report.chart(args.chart or f"{short(model.entry.name if model.entry else args.name).replace(':', '-').replace('/', '-')}-quant.png")
    print(f"chart: {chart}")
    if args.json:
        print(f"json: {report.save(args.json)}")


def export(args) -> None:
    # here, not at the top: loads torch (`oficina --help` stays light)
    from ..quant.convert import export_entry

    if args.format != "gguf":
        raise InvalidOptions(f"unknown export format {args.format!r} (supported: gguf)")
    # here, not at the top: loads gguf (`oficina --help` stays light)
    from ..formats.ggml.mixes import get

    try:
        get(args.type)  # before the model is pulled or loaded
    except KeyError as e:
        raise InvalidOptions(e.args[0]) from None
    out = Path(args.output or f"{short(args.name).replace(':', '-').replace('/', '-')}-{args.type.lower()}.gguf")
    path = export_entry(registry(), args.name, args.type, out)
    print(f"wrote {path} ({human(path.stat().st_size)})")


def register(sub) -> None:
    # not the whole table (formats/ggml/mixes.py): reading it imports gguf and numpy, and `oficina
    # --help` must stay fast; a wrong name gets the full list
    types = "e.g. F16, BF16, Q8_0, Q6_K, Q5_K_M, Q4_K_M, Q4_0, Q3_K_M, Q2_K"
    s = sub.add_parser("quantize", help="quantize a model's weights in PyTorch (int8/int4/fp16/bf16), "
                                        "or measure every type with --report")
    s.add_argument("name")
    s.add_argument("--to", choices=("fp16", "bf16", "int8", "int4"),
                   help="fp16/bf16: cast every weight; int8: per output channel; int4: in groups")
    s.add_argument("--group-size", type=int, help="input columns per scale for int8/int4 (int4 default 64)")
    s.add_argument("--out", help="register as this name (default NAME:TO, e.g. smollm2:int4)")
    s.add_argument("--report", action="store_true",
                   help="measure size, perplexity, KL divergence, top-1 agreement and speed for each type")
    s.add_argument("--types", help="with --report: GGUF types, comma-separated (default every file type "
                                   f"but F32, the reference; {types}; '' for none)")
    s.add_argument("--torch", help="with --report: PyTorch targets, comma-separated (default fp16,bf16,int8,int4; "
                                   "'' for none)")
    s.add_argument("--text", help="with --report: held-out text (default the shipped heldout.txt)")
    s.add_argument("--chart", help="with --report: where to save the size-vs-quality chart (PNG)")
    s.add_argument("--json", help="with --report: also save the rows as JSON")
    s.add_argument("--markdown", action="store_true", help="with --report: also print a Markdown table")
    s.add_argument("--no-speed", action="store_true", help="with --report: skip the tokens/s measurements")
    s.set_defaults(func=quantize)

    s = sub.add_parser("export", help="write a model as a GGUF file (any type, K-quant mixes included)")
    s.add_argument("name")
    s.add_argument("--format", default="gguf", help="output format (gguf)")
    s.add_argument("--type", default="F16", help=f"GGUF type: {types} (default F16)")
    s.add_argument("-o", "--output", help="output file (default NAME-TYPE.gguf)")
    s.set_defaults(func=export)
