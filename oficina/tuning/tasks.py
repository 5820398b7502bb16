"""What is being learned: next tokens (causal LM), a label (sequence classification) or a
target text (seq2seq). A task says which transformers class holds the model, how a record
becomes token ids and targets, and what the loss is. Tasks are rows of ``TASKS``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FormatError, InvalidOptions
from ..formats.template import render_jinja
from ..models.loader import AUTO_CLASSES, load_torch
from .data import Dataset, Record

IGNORE = -100  # label of a position that is not trained (torch cross_entropy's ignore_index)


@dataclass(frozen=True)
class Example:
    ids: list[int]
    target: list[int] | int  # per-token labels (IGNORE = not trained) or a class index
    where: str


@dataclass
class Context:
    """What encoding needs besides the record: the tokenizer and the recipe's limits."""

    tokenizer: Any
    max_length: int
    train_on: str = "answers"
    truncate: bool = False
    split_long: bool = False  # plain text: cut long documents into max_length pieces
    labels: tuple[str, ...] = ()
    system: str | None = None  # the model's SYSTEM (Modelfile), added as ``oficina run`` adds it
    messages: tuple[dict, ...] = ()  # the model's MESSAGE lines, before every conversation


@dataclass(frozen=True)
class Task:
    name: str
    kinds: tuple[str, ...]          # model kinds it runs on
    auto_class: str                 # transformers class that holds the model
    peft_task_type: str             # peft's TaskType for this task
    shapes: tuple[str, ...]         # record shapes (data.SHAPES) it learns from
    encode: Callable[[Record, str, Context], list[Example]]
    loss: Callable[[nn.Module, dict], torch.Tensor]
    head: tuple[str, ...] = ()      # modules the task adds, trained by every method
    packable: bool = False
    score: Callable[[nn.Module, dict], dict[str, float]] | None = None  # summable counts


# -- encoding -------------------------------------------------------------------------------------
def _fit(ids: list[int], target, where: str, ctx: Context, what: str = "example"):
    if len(ids) <= ctx.max_length:
        return ids, target
    if not ctx.truncate:
        raise FormatError(f"{where}: {what} is {len(ids)} tokens, longer than max_length "
                          f"{ctx.max_length}; raise max_length or set truncate: true")
    return ids[:ctx.max_length], target[:ctx.max_length] if isinstance(target, list) else target


def _eos(tok) -> list[int]:
    return [tok.eos_token_id] if tok.eos_token_id is not None else []


def encode_causal(rec: Record, shape: str, ctx: Context) -> list[Example]:
    tok = ctx.tokenizer
    f = rec.fields
    if shape == "text":
        ids = list(tok(f["text"], add_special_tokens=True)["input_ids"]) + _eos(tok)
        if ctx.split_long and len(ids) > ctx.max_length:
            step = ctx.max_length
            return [Example(ids[i:i + step], ids[i:i + step], rec.where) for i in range(0, len(ids), step)
                    if len(ids[i:i + step]) > 1]
        ids, labels = _fit(ids, list(ids), rec.where, ctx)
        return [Example(ids, labels, rec.where)]
    messages = list(f["messages"] if shape == "chat" else _instruction_messages(f))
    # the same additions as api.Model.encode_chat, so training sees what `oficina run` will send
    if ctx.system and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": ctx.system})
    messages = list(ctx.messages) + messages
    text, spans, templated = render(messages, tok, rec.where)
    enc = tok(text, add_special_tokens=not templated, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    if ctx.train_on == "all":
        labels = list(ids)
    else:
        labels = [i if any(a <= s < b for a, b in spans) else IGNORE
                  for i, (s, _) in zip(ids, enc["offset_mapping"])]
    if not templated and messages[-1]["role"] == "assistant":
        ids, labels = ids + _eos(tok), labels + _eos(tok)
    ids, labels = _fit(ids, labels, rec.where, ctx)
    return [Example(ids, labels, rec.where)]


def _instruction_messages(f: dict) -> list[dict[str, str]]:
    prompt = f["instruction"] + (f"\n\n{f['input']}" if f.get("input") else "")
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": f["output"]}]


def render(messages: list[dict], tok, where: str) -> tuple[str, list[tuple[int, int]], bool]:
    """The conversation as the model will see it at run time (its chat template, or the plain
    transcript ``oficina run`` uses for models without one) and the character spans of the
    assistant's answers. Returns (text, spans, templated)."""
    from ..api import _plain_transcript  # the one definition of the template-less prompt

    template = getattr(tok, "chat_template", None)

    def prompt(msgs):
        if template:
            return _apply(tok, msgs, True, where)
        return _plain_transcript(msgs)

    def full(msgs):
        if template:
            return _apply(tok, msgs, False, where)
        return _plain_transcript(msgs[:-1]) + " " + msgs[-1]["content"]

    text, spans = "", []
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before, after = prompt(messages[:k]), full(messages[:k + 1])
        if not after.startswith(before) or not before.startswith(text):
            raise FormatError(f"{where}: the chat template does not render this conversation turn "
                              f"by turn, so the answers cannot be located; set train_on: all")
        spans.append((len(before), len(after)))
        text = after
    return text, spans, bool(template)


def _apply(tok, msgs, generation_prompt: bool, where: str) -> str:
    try:
        # the same budgeted sandbox as `run` (formats/template.py): a model's template can hang
        if isinstance(tok.chat_template, str):
            return render_jinja(tok.chat_template, msgs, tok, add_generation_prompt=generation_prompt)
        return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation_prompt)
    except Exception as e:  # template errors from an untrusted template: one line, with the record
        raise FormatError(f"{where}: chat template failed: {str(e).splitlines()[0] if str(e) else e!r}") from None


def encode_classification(rec: Record, shape: str, ctx: Context) -> list[Example]:
    label = rec.fields["label"]
    if label not in ctx.labels:
        raise FormatError(f"{rec.where}: label {label!r} is not in the label set ({', '.join(ctx.labels)})")
    ids = list(ctx.tokenizer(rec.fields["text"], add_special_tokens=True)["input_ids"])
    ids, _ = _fit(ids, None, rec.where, ctx, "text")
    return [Example(ids, ctx.labels.index(label), rec.where)]


def encode_seq2seq(rec: Record, shape: str, ctx: Context) -> list[Example]:
    f = rec.fields
    source, target = (f["input"], f["target"]) if shape == "pair" else (
        _instruction_messages(f)[0]["content"], f["output"])
    ids = list(ctx.tokenizer(source, add_special_tokens=True)["input_ids"])
    labels = list(ctx.tokenizer(target, add_special_tokens=True)["input_ids"])
    ids, _ = _fit(ids, None, rec.where, ctx, "input")
    labels, _ = _fit(labels, None, rec.where, ctx, "target")
    return [Example(ids, labels, rec.where)]


def encode(ds: Dataset, task: Task, ctx: Context) -> list[Example]:
    if ds.shape not in task.shapes:
        raise FormatError(f"{ds.path}: {ds.shape} records cannot train a {task.name} model; "
                          f"expected {' or '.join(task.shapes)} records"
                          + ("; preference pairs train with `oficina dpo` or `oficina reward`"
                             if ds.shape == "preference" else ""))
    out = []
    for rec in ds.records:
        out.extend(task.encode(rec, ds.shape, ctx))
    return out


# -- losses ---------------------------------------------------------------------------------------
def unwrap(model: nn.Module) -> nn.Module:
    """The model under DDP and peft wrappers."""
    model = getattr(model, "module", model)  # DistributedDataParallel
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _shifts_positions(model: nn.Module) -> bool:
    """peft's prompt and prefix tuning add virtual positions, so the model must line up the
    labels itself."""
    cfg = getattr(getattr(model, "module", model), "active_peft_config", None)
    return bool(getattr(cfg, "is_prompt_learning", False))


def causal_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    labels = batch["labels"]
    # No KV cache while training: it is never read, costs memory, and its presence turns off
    # transformers' packed-sequence masking (masking_utils._preprocess_mask_arguments).
    inputs = {k: v for k, v in batch.items() if k != "labels"} | {"use_cache": False}
    if _shifts_positions(model) or "logits_to_keep" not in inspect.signature(unwrap(model).forward).parameters:
        return model(**inputs, labels=labels).loss
    # Logits only where a next token is trained (transformers' boolean ``logits_to_keep``,
    # modeling_utils.slice_logits_to_keep): with loss on the answers only this skips most of
    # the vocabulary projection and the [tokens, vocab] logits it would allocate.
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE
    if not keep.any():
        return sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0
    logits = model(**inputs, logits_to_keep=keep).logits          # [N, V]
    return F.cross_entropy(logits.float(), labels[:, 1:][keep[:, :-1]])


def model_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    return model(**batch, use_cache=False).loss if "decoder_input_ids" in batch or _is_seq2seq(model) \
        else model(**batch).loss


def _is_seq2seq(model: nn.Module) -> bool:
    return bool(getattr(unwrap(model).config, "is_encoder_decoder", False))


def accuracy(model: nn.Module, batch: dict) -> dict[str, float]:
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs).logits
    return {"correct": float((logits.argmax(-1) == batch["labels"]).sum()), "count": float(len(batch["labels"]))}


TASKS: dict[str, Task] = {t.name: t for t in (
    Task("causal", ("decoder-only",), AUTO_CLASSES["decoder-only"], "CAUSAL_LM",
         ("text", "instruction", "chat"), encode_causal, causal_loss, packable=True),
    Task("classification", ("encoder-only", "decoder-only"), "AutoModelForSequenceClassification",
         "SEQ_CLS", ("labelled",), encode_classification, model_loss,
         head=("classifier", "score"), score=accuracy),
    Task("seq2seq", ("encoder-decoder",), AUTO_CLASSES["encoder-decoder"], "SEQ_2_SEQ_LM",
         ("pair", "instruction"), encode_seq2seq, model_loss),
)}

# what a model kind learns when the recipe says task: auto
DEFAULT_TASK = {"decoder-only": "causal", "encoder-only": "classification", "encoder-decoder": "seq2seq"}


def for_model(kind: str, requested: str = "auto") -> Task:
    name = DEFAULT_TASK.get(kind, "causal") if requested == "auto" else requested
    task = TASKS[name]
    if kind not in task.kinds:
        raise InvalidOptions(f"a {kind} model cannot be tuned for {name}; "
                             f"it can for: {', '.join(t.name for t in TASKS.values() if kind in t.kinds)}")
    return task


def load_model(task: Task, folder: Path, labels: tuple[str, ...] = (), pad_id: int | None = None) -> nn.Module:
    """The model in ``folder`` (a Hugging Face folder) in the task's class, fp32, on the device."""
    return load_torch(folder, task.auto_class, labels=labels, pad_id=pad_id)
