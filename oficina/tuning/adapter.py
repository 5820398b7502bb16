"""Bottleneck adapters: h + W_up f(W_down h) after a sublayer's output projection, before the
residual add. Houlsby et al. 2019 (§2.1, fig. 2) put one after the attention and one after the
feed-forward sublayer of every layer; Pfeiffer et al. 2021 (AdapterFusion, §3.1) keep only the
one after the feed-forward sublayer, at nearly the same quality for half the parameters.
W_up starts at zero, so the adapted model starts as the base model (Houlsby's near-identity
initialisation).

Our own small module (the ``adapters`` library would pin an older transformers): each adapter is
a child module ``bottleneck`` of the projection it follows, applied by a forward hook, so the
base's parameter names do not change and the base weights load as they are. Saved in peft's
file layout (``adapter_config.json`` with ``oficina_method: adapter``, plus
``adapter_model.safetensors``); peft itself cannot load this kind.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from ..errors import InvalidOptions
from .method import Method, register

# model_type -> (attention output projection, feed-forward output projection), as regexes on
# module names; the names are those of transformers' modeling_<type>.py.
SUBLAYERS: dict[str, tuple[str, str]] = {
    # LlamaAttention.o_proj, LlamaMLP.down_proj (modeling_llama.py; the same in its descendants)
    **dict.fromkeys(("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text",
                     "smollm3", "olmo", "olmo2", "granite"), (r"\.self_attn\.o_proj$", r"\.mlp\.down_proj$")),
    # GPT2Attention.c_proj, GPT2MLP.c_proj (modeling_gpt2.py)
    "gpt2": (r"\.attn\.c_proj$", r"\.mlp\.c_proj$"),
    # BertSelfOutput.dense, BertOutput.dense (modeling_bert.py)
    **dict.fromkeys(("bert", "roberta", "xlm-roberta", "electra"),
                    (r"\.attention\.output\.dense$", r"\.layer\.\d+\.output\.dense$")),
    # T5Attention.o (self and cross attention), T5DenseActDense.wo (modeling_t5.py)
    **dict.fromkeys(("t5", "mt5", "umt5"), (r"\.(SelfAttention|EncDecAttention)\.o$", r"\.DenseReluDense\.wo$")),
}
PLACEMENTS = {"houlsby": (0, 1), "pfeiffer": (1,)}  # indices into a SUBLAYERS pair
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}
CHILD = "bottleneck"


@dataclass
class AdapterConfig:
    reduction: int = 16            # hidden size / bottleneck size
    placement: str = "pfeiffer"    # houlsby: after attention and feed-forward; pfeiffer: after feed-forward
    activation: str = "relu"
    peft_type: ClassVar[str | None] = None

    def __post_init__(self) -> None:
        if self.reduction < 1:
            raise InvalidOptions(f"adapter reduction must be at least 1 (got {self.reduction})")
        if self.placement not in PLACEMENTS:
            raise InvalidOptions(f"adapter placement must be one of {', '.join(PLACEMENTS)} (got {self.placement!r})")
        if self.activation not in ACTIVATIONS:
            raise InvalidOptions(f"adapter activation must be one of {', '.join(ACTIVATIONS)}")


class Bottleneck(nn.Module):
    def __init__(self, dim: int, reduction: int, activation: str):
        super().__init__()
        hidden = max(1, dim // reduction)
        self.down = nn.Linear(dim, hidden)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(hidden, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # h [..., dim]
        return h + self.up(self.act(self.down(h)))


def _hook(module: nn.Module, args, output):
    return getattr(module, CHILD)(output)


def _out_features(module: nn.Module) -> int:
    # nn.Linear has out_features; GPT-2's Conv1D has nf
    return getattr(module, "out_features", None) or getattr(module, "nf", None) or module.weight.shape[0]


def _targets(model: nn.Module, cfg: AdapterConfig) -> list[tuple[str, nn.Module]]:
    model_type = getattr(model.config, "model_type", "")
    if model_type not in SUBLAYERS:
        raise InvalidOptions(f"bottleneck adapters do not know where the sublayers of a {model_type!r} "
                             f"model are; known: {', '.join(sorted(SUBLAYERS))} (add a row to SUBLAYERS)")
    patterns = [re.compile(SUBLAYERS[model_type][i]) for i in PLACEMENTS[cfg.placement]]
    found = [(n, m) for n, m in model.named_modules() if any(p.search(n) for p in patterns)]
    if not found:
        raise InvalidOptions(f"no {cfg.placement} adapter positions found in this {model_type} model")
    return found


def apply(model: nn.Module, cfg: AdapterConfig, task) -> nn.Module:
    model.requires_grad_(False)
    for _, module in _targets(model, cfg):
        ref = next(module.parameters())
        adapter = Bottleneck(_out_features(module), cfg.reduction, cfg.activation).to(ref.device)
        module.add_module(CHILD, adapter)
        module._oficina_hook = module.register_forward_hook(_hook)
    for name, module in model.named_modules():  # the task's new head trains too
        if name.rsplit(".", 1)[-1] in task.head:
            module.requires_grad_(True)
    for name, p in model.named_parameters():
        if trainable(name):
            p.requires_grad_(True)
    model._oficina_adapter = cfg
    return model


def trainable(name: str, param=None) -> bool:
    return f".{CHILD}." in name


def save(model: nn.Module, folder: Path) -> None:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
    cfg = {"oficina_method": "adapter", **asdict(model._oficina_adapter),
           "base_model_name_or_path": getattr(model, "name_or_path", None),
           "modules": sorted({n.split(f".{CHILD}.")[0] for n in state if trainable(n)}),
           "modules_to_save": sorted({n.rsplit(".", 1)[0] for n in state if not trainable(n)})}
    (folder / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    save_file(state, str(folder / "adapter_model.safetensors"))


def load(model: nn.Module, folder: Path, task) -> nn.Module:
    from safetensors.torch import load_file

    meta = json.loads((Path(folder) / "adapter_config.json").read_text())
    cfg = AdapterConfig(**{k: meta[k] for k in ("reduction", "placement", "activation") if k in meta})
    model = apply(model, cfg, task)
    state = load_file(str(Path(folder) / "adapter_model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    expected = {n for n, _ in model.named_parameters() if trainable(n)}
    if unexpected or expected & set(missing):
        raise InvalidOptions(f"{folder}: adapter does not fit this model "
                             f"({len(unexpected)} unknown tensors, {len(expected & set(missing))} missing)")
    model.requires_grad_(False)
    return model


METHOD = register(Method(
    name="adapter", summary="bottleneck adapters after sublayers (Houlsby/Pfeiffer; own module)",
    config=AdapterConfig, apply=apply, trainable=trainable, save=save, load=load, merge=None,
    learning_rate=1e-3,  # Houlsby et al. searched 1e-4..1e-3; small data wants the top of it
))
