"""What quantizing one model costs, measured: for each GGUF file type and each PyTorch target, one
row of size on disk, bits per weight, perplexity on a held-out text and its change, mean KL
divergence of the next-token distributions from the unquantized model's, top-1 agreement with
it, and decode speed; and a chart of size against quality.

    report = measure(oficina.load("smollm2"), gguf_types=["Q8_0", "Q4_K_M"], torch_types=["int4"])
    print(report.table()); report.chart("quant.png")

How each number is taken:
- quality is measured on the weights alone: each GGUF file is written (``export_gguf``), read
  back and dequantized into a copy of the reference model (``load_gguf_weights``), and run in
  float32 torch; PyTorch targets run as ``torch_quant`` leaves them (int8/int4 ``QuantLinear``,
  fp16/bf16 casts). llama.cpp's own ``llama-perplexity --kl-divergence`` numbers also include
  its activation rounding (it multiplies quantized weights by Q8-rounded activations), so they
  come out a little worse than these for the same file;
- the text is cut into lm-eval's disjoint rolling windows (``evaluation.scoring.rolling_windows``,
  the convention of ``oficina eval ppl``); every token is predicted once;
- KL is KL(reference || quantized) in nats per token, averaged over tokens, and top-1 is the share
  of tokens where both pick the same most likely next token (llama.cpp calls it "same top p");
- speed is one-token decode steps per second after a short prompt (prompt time excluded), the
  best of three runs: llama.cpp on the GGUF file when llama-cpp-python is installed, oficina's
  torch engine for the PyTorch targets. It depends on the machine and on what else runs on it.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from ..evaluation.scoring import DEFAULT_WINDOW, rolling_windows
from ..evaluation.tasks import builtin_path
from ..formats.gguf_export import export_gguf, file_type, load_gguf_weights
from ..generation.engine import Engine
from ..models.torch_quant import TorchQuantConfig, quantize, save
from ..options import Options
from ..report import reporter
from . import llamacpp

__all__ = ["DEFAULT_GGUF", "DEFAULT_TORCH", "Report", "Row", "measure"]

DEFAULT_GGUF = ("F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_1", "Q5_0", "Q4_K_M", "Q4_K_S",
                "Q4_1", "Q4_0", "Q3_K_L", "Q3_K_M", "Q3_K_S", "Q2_K")
DEFAULT_TORCH = ("fp16", "bf16", "int8", "int4")
SPEED_TOKENS = {"llama.cpp": 32, "torch": 8}  # decode steps timed per run
SPEED_REPEATS = 3  # runs per row; the fastest is reported


@dataclass
class Row:
    type: str  # "Q4_K_M", "int4", "F32" (the reference)
    engine: str  # what the speed was measured on: "llama.cpp", "torch"
    size: int  # bytes on disk
    bpw: float  # bits per weight, over every tensor
    ppl: float
    ppl_change: float  # relative to the reference: 0.028 is +2.8 %
    kl: float  # mean KL(reference || this), nats per token
    top1: float  # share of tokens where the most likely next token is the same
    tok_s: float | None  # decode tokens per second


@dataclass
class Report:
    model: str
    reference: str  # what the reference weights are
    text: str
    tokens: int
    rows: list[Row] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"model": self.model, "reference": self.reference, "text": self.text, "tokens": self.tokens,
                "rows": [asdict(r) for r in self.rows]}

    def save(self, path: str | Path) -> Path:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return Path(path)

    def table(self):
        from rich.table import Table

        t = Table(title=f"{self.model}: {self.tokens} tokens of {self.text}", box=None, pad_edge=False)
        for col in ("TYPE", "SIZE", "BPW", "PPL", "ΔPPL", "KL (nats)", "TOP-1", "TOK/S", "ENGINE"):
            t.add_column(col, justify="left" if col in ("TYPE", "ENGINE") else "right")
        for r in self.rows:
            t.add_row(r.type, f"{r.size / 1e6:.1f} MB", f"{r.bpw:.2f}", f"{r.ppl:.3f}", f"{100 * r.ppl_change:+.2f}%",
                      f"{r.kl:.5f}", f"{100 * r.top1:.1f}%", "-" if r.tok_s is None else f"{r.tok_s:.1f}", r.engine)
        return t

    def markdown(self) -> str:
        head = "| type | size | bits/weight | perplexity | Δ perplexity | mean KL (nats) | top-1 agreement | tokens/s | speed on |"
        lines = [head, "|" + "---|" * 9]
        for r in self.rows:
            lines.append(f"| {r.type} | {r.size / 1e6:.1f} MB | {r.bpw:.2f} | {r.ppl:.3f} | {100 * r.ppl_change:+.2f}% "
                         f"| {r.kl:.5f} | {100 * r.top1:.1f}% | {'-' if r.tok_s is None else f'{r.tok_s:.1f}'} "
                         f"| {r.engine} |")
        return "\n".join(lines)

    def chart(self, path: str | Path) -> Path:
        """Size on disk against mean KL divergence (log scale) and perplexity change."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = [r for r in self.rows if r.kl > 0]
        fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
        for ax, key, label, log in ((axes[0], "kl", "mean KL divergence from the reference (nats/token, log)", True),
                                    (axes[1], "ppl_change", "perplexity change vs the reference (%)", False)):
            for engine, marker, colour in (("llama.cpp", "o", "tab:blue"), ("torch", "s", "tab:orange"),
                                           ("-", "o", "tab:blue")):
                pts = [r for r in rows if r.engine == engine]
                if not pts:
                    continue
                ys = [getattr(r, key) * (1 if log else 100) for r in pts]
                ax.scatter([r.size / 1e6 for r in pts], ys, marker=marker, color=colour,
                           label="GGUF file" if marker == "o" else "PyTorch (oficina quantize --to)")
                for r, y in zip(pts, ys):
                    ax.annotate(r.type, (r.size / 1e6, y), textcoords="offset points", xytext=(4, 3), fontsize=8)
            if log:
                ax.set_yscale("log")
            ax.set_xlabel("size on disk (MB)")
            ax.set_ylabel(label)
            ax.grid(True, alpha=0.3)
        exact = [r.type for r in self.rows[1:] if r.kl == 0]
        if exact:  # a log axis has no room for them
            axes[0].text(0.01, 0.01, f"not shown, KL = 0: {', '.join(exact)}", transform=axes[0].transAxes, fontsize=8)
        handles, labels = axes[0].get_legend_handles_labels()
        axes[0].legend(dict(zip(labels, handles)).values(), dict(zip(labels, handles)).keys(), loc="upper right")
        fig.suptitle(f"{self.model}: size vs quality ({self.tokens} tokens of {self.text}; reference {self.reference})",
                     fontsize=10)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return Path(path)


# -- measuring -------------------------------------------------------------------------------------

class _Logprobs:
    """Next-token log-probabilities of one model over the text's windows, compared with the
    reference's as they come, so only the reference's are kept."""

    def __init__(self, windows: list[tuple[list[int], list[int]]], window: int):
        self.windows, self.window = windows, window

    def run(self, model) -> list[torch.Tensor]:
        out = []
        with torch.inference_mode():
            for ctx, cont in self.windows:
                full = (list(ctx) + list(cont))[-(self.window + 1):]
                ids = torch.tensor([full[:-1]], device=next(model.parameters()).device)
                logits = model(input_ids=ids, use_cache=False).logits[0, -len(cont):].float()
                out.append(torch.log_softmax(logits, -1).cpu())
        return out


def _compare(ref: list[torch.Tensor], ours: list[torch.Tensor], targets: list[list[int]]) -> tuple[float, float, float]:
    """(perplexity of ours, mean KL(ref || ours), top-1 agreement) over every predicted token."""
    nll = kl = same = n = 0.0
    for r, o, t in zip(ref, ours, targets):
        for s in range(0, len(t), 256):  # [k, V] at a time
            rs, os_ = r[s:s + 256], o[s:s + 256]
            tt = torch.tensor(t[s:s + 256])
            nll -= float(os_.gather(-1, tt[:, None]).sum())
            kl += float((rs.exp() * (rs - os_)).sum())
            same += float((rs.argmax(-1) == os_.argmax(-1)).sum())
            n += len(tt)
    return math.exp(nll / n), kl / n, same / n


def _torch_speed(model, tokenizer, prompt: list[int]) -> float:
    engine = Engine(model, tokenizer, eos_ids=[], context_length=None)
    opts = Options.from_mapping({"temperature": 0, "num_predict": SPEED_TOKENS["torch"]})
    best = 0.0
    for _ in range(SPEED_REPEATS):  # the best run: the least disturbed by whatever else runs
        stats = [item for item in engine.stream(prompt, opts) if not isinstance(item, str)][-1]
        best = max(best, stats.eval_tokens / max(stats.eval_seconds, 1e-9))
    return best


def _gguf_size(path: Path) -> tuple[int, float]:
    import gguf

    reader = gguf.GGUFReader(path)
    bits = sum(int(t.n_bytes) * 8 for t in reader.tensors)
    weights = sum(int(t.n_elements) for t in reader.tensors)
    return path.stat().st_size, bits / weights


def measure(model, gguf_types: Sequence[str] = DEFAULT_GGUF, torch_types: Sequence[str] = DEFAULT_TORCH,
            text_path: str | Path | None = None, window: int | None = None, speed: bool = True,
            name: str | None = None, reference: str | None = None, workdir: str | Path | None = None) -> Report:
    """Measure every type against ``model`` (an ``oficina.api.Model`` with float32 weights in an
    HF folder, ``model.loaded.folder``)."""
    for t in gguf_types:
        file_type(t)  # unknown names fail before anything runs
    for t in torch_types:
        TorchQuantConfig(t)
    text_path = Path(text_path) if text_path else builtin_path("heldout.txt")
    text = text_path.read_text(encoding="utf-8")
    tok = model.tokenizer
    tokens = list(tok(text, add_special_tokens=False)["input_ids"])
    prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    window = min(window or DEFAULT_WINDOW, model.info.context_length or DEFAULT_WINDOW)
    windows = rolling_windows(tokens, prefix, window, window)
    targets = [cont for _, cont in windows]
    runner = _Logprobs(windows, window)
    prompt = ([prefix] if prefix is not None else []) + tokens[:32]
    folder = Path(model.loaded.folder)
    lm = model.torch_model

    report = Report(name or folder.name, reference or "float32 weights", text_path.name, len(tokens))
    with reporter().progress("reference (float32)", None):
        ref = runner.run(lm)
    ppl, _, _ = _compare(ref, ref, targets)
    ref_size = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    n_weights = sum(p.numel() for p in lm.parameters())
    report.rows.append(Row("F32 (reference)", "torch", ref_size, 8 * ref_size / n_weights, ppl, 0.0, 0.0, 1.0,
                           _torch_speed(lm, tok, prompt) if speed else None))

    why_no_llama = llamacpp.missing()
    if speed and gguf_types and why_no_llama:
        reporter().warn(f"no llama.cpp speeds: {why_no_llama}")
    with contextlib.ExitStack() as stack:
        work = Path(workdir) if workdir else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="oficina-quant-")))
        work.mkdir(parents=True, exist_ok=True)
        _measure_types(report, lm, tok, folder, gguf_types, torch_types, runner, ref, targets, prompt, speed,
                       why_no_llama, work)
    return report


def _measure_types(report, lm, tok, folder, gguf_types, torch_types, runner, ref, targets, prompt, speed,
                   why_no_llama, work) -> None:
    ppl = report.rows[0].ppl
    n_weights = sum(p.numel() for p in lm.parameters())
    scratch = copy.deepcopy(lm)
    with reporter().progress("measuring", len(gguf_types) + len(torch_types)) as bar:
        for t in gguf_types:
            ft = file_type(t)
            bar.update(description=f"GGUF {ft.name}")
            path = export_gguf(folder, work / f"{ft.name}.gguf", dtype=ft.name)
            size, bpw = _gguf_size(path)
            load_gguf_weights(path, scratch)
            q_ppl, kl, top1 = _compare(ref, runner.run(scratch), targets)
            tok_s = None
            if speed and not why_no_llama:
                llm = llamacpp.open_model(path, n_ctx=256)
                tok_s = llamacpp.decode_speed(llm, prompt, SPEED_TOKENS["llama.cpp"], SPEED_REPEATS)
                del llm
            report.rows.append(Row(ft.name, "llama.cpp" if tok_s else "-", size, bpw, q_ppl, q_ppl / ppl - 1,
                                   kl, top1, tok_s))
            path.unlink()
            bar.advance()
        for t in torch_types:
            bar.update(description=f"PyTorch {t}")
            q = copy.deepcopy(lm)
            result = quantize(q, TorchQuantConfig(t))
            packed = save(q, None, work / t, result)
            size = (packed / "model.safetensors").stat().st_size
            q_ppl, kl, top1 = _compare(ref, runner.run(q), targets)
            tok_s = _torch_speed(q, tok, prompt) if speed else None
            report.rows.append(Row(t, "torch", size, 8 * size / n_weights, q_ppl, q_ppl / ppl - 1, kl, top1, tok_s))
            del q
            bar.advance()
