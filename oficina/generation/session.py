"""A loaded model and what one does with it: resolve a name, load it, turn prompts and
conversations into ids, and run them through a ``Runner`` (fast when the architecture allows,
else transformers). ``oficina.api`` re-exports this for users; the CLI, the server, evaluation
and RAG call it here."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from ..errors import OficinaError
from ..formats.template import render_chat
from .engine import Engine, Stats
from ..models.info import ModelInfo
from ..models.loader import Loaded, load_folder
from ..options import Options
from ..registry.registry import Entry, Registry
from ..registry.sources import catalog, pull
from ..registry.names import parse_ref
from ..report import quiet_libraries, reporter

quiet_libraries()

# Tokens that end an assistant turn in common chat formats (ChatML, Gemma, Llama 3, Phi).
END_OF_TURN = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>", "<|endoftext|>", "</s>", "<eos>")

Message = dict[str, str]


def resolve(name: str, registry: Registry | None = None, auto_pull: bool = True) -> Entry:
    """A registry entry for ``name``, pulling catalogue models on first use (like `ollama run`)."""
    reg = registry or Registry()
    entry = reg.find(name)
    if entry is None and auto_pull and parse_ref(name).name in catalog():
        entry = pull(reg, name)
    return entry if entry is not None else reg.get(name)


def load(name: str | Path, registry: Registry | None = None, **options: Any) -> "Model":
    """Load a registry model (pulled on first use if it is in the catalogue), or a local
    ``.gguf`` file / Hugging Face folder directly. The transformers model itself is loaded only
    when something needs it (the fast runner reads the weights on its own)."""
    t0 = time.perf_counter()
    Options.from_mapping(options)  # a wrong option is refused before the model loads
    path = Path(name).expanduser()
    if isinstance(name, Path) or path.exists():
        if not path.exists():
            raise OficinaError(f"no such file or folder: {name}")
        model = Model(_lazy(path, None, None), None, Options.from_mapping(options))
    else:
        reg = registry or Registry()
        entry = resolve(str(name), reg)
        if entry.manifest.format == "rag":
            raise OficinaError(f"{name} is a document collection, not a model; ask it with "
                               f"`oficina rag ask`")
        snap = reg.snapshot(entry)
        cache = reg.home / "cache"
        if entry.manifest.adapters:  # `oficina tune` results and Modelfile ADAPTER lines (PEFT layout)
            from ..tuning.attach import attach_loaded

            loaded = attach_loaded(load_folder(snap, entry.manifest.format, cache=cache, label=entry.ref),
                                   snap / "adapters")
        else:
            loaded = _lazy(snap, entry.manifest.format, cache, label=entry.ref)
        base = Options.from_mapping(entry.manifest.params)
        model = Model(loaded, entry, base.merged(options), cache=cache)
        model.home = reg.home
    model.load_seconds = time.perf_counter() - t0
    return model


class LazyLoaded:
    """A ``Loaded`` whose transformers model is built on first use: the tokenizer, the config
    and the facts are read now (a second or less), the weights only if a transformers path
    needs them (scoring, inspection, the fallback runner)."""

    def __init__(self, folder: Path, fmt: str | None, cache: Path | None, label: str | None = None):
        from ..models.info import check_loadable, describe

        self.source, self.fmt, self.cache, self.label = Path(folder), fmt, cache, label
        self.info = describe(self.source, fmt)
        check_loadable(self.info, label or self.source.name)  # declared sizes vs the file, remote code
        self.folder = self.source
        self._model = None
        self.tokenizer = None
        self.hf_folder: Path | None = None  # config.json + tokenizer, when they exist on disk
        if self.info.format == "gguf":
            from ..models.loader import gguf_cache_folder, gguf_file

            if cache is not None:
                target = gguf_cache_folder(gguf_file(self.source), cache)
                if (target / "config.json").is_file():
                    self.hf_folder = self.folder = target
        elif (self.source / "config.json").is_file():
            self.hf_folder = self.source
        if self.hf_folder is not None:
            from ..models.loader import load_tokenizer

            self.tokenizer = load_tokenizer(self.hf_folder, self.label)
        else:  # a GGUF seen for the first time: the conversion gives tokenizer and config
            self._materialize()

    def _materialize(self) -> None:
        loaded = load_folder(self.source, self.fmt, cache=self.cache, label=self.label)
        self._model, self.tokenizer, self.folder = loaded.model, loaded.tokenizer, loaded.folder
        if self.info.format == "gguf" and self.cache is not None:
            self.hf_folder = loaded.folder
        elif self.info.format != "gguf":
            self.hf_folder = self.source

    @property
    def model(self):
        if self._model is None:
            self._materialize()
        return self._model

    @property
    def loaded(self) -> bool:
        return self._model is not None


def _lazy(folder: Path, fmt: str | None, cache: Path | None, label: str | None = None):
    from ..models.info import describe

    info = describe(folder, fmt)
    if info.kind != "decoder-only":  # encoders are small and always go through transformers
        return load_folder(folder, fmt, cache=cache, info=info, label=label)
    return LazyLoaded(folder, fmt, cache, label)


class Model:
    def __init__(self, loaded: Loaded | LazyLoaded, entry: Entry | None, options: Options,
                 cache: Path | None = None, max_batch: int = 1):
        self.loaded = loaded
        self.entry = entry
        self.options = options
        m = entry.manifest if entry else None
        self.system: str | None = m.system if m else None
        self.template: str | None = m.template if m else None
        self.messages: list[Message] = list(m.messages) if m else []
        self.last_stats: Stats | None = None
        self.home: Path | None = None  # the registry's home (where a bound collection is found)
        self.last_verdicts: list = []  # guard verdicts of the last call that flagged or redacted
        self.load_seconds = 0.0      # reported once, with the first answer (Ollama's load_duration)
        self.cache = cache
        self.max_batch = max_batch   # sequence slots of the runner (the server asks for more)
        self._engine: Engine | None = None
        self._runner = None

    # -- facts ----------------------------------------------------------------------------------
    @property
    def info(self) -> ModelInfo:
        return self.loaded.info

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    @property
    def torch_model(self):
        return self.loaded.model

    @property
    def chat_template(self) -> str | None:
        return self.template or getattr(self.tokenizer, "chat_template", None)

    @property
    def runner(self):
        """The ``Runner`` generation goes through: fast when the architecture, weights and
        adapters allow, else transformers; ``runner.capabilities.note`` says why."""
        if self.info.kind != "decoder-only":
            raise OficinaError(f"{self.info.architecture} is an {self.info.kind} model; text "
                               f"generation needs a decoder-only model")
        if self._runner is None:
            from .choose import choose_runner

            self._runner = choose_runner(self)
        return self._runner

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            runner = self.runner
            self._engine = Engine(runner, self.tokenizer, self._eos_ids(), runner.context_length
                                  or self.info.context_length)
        return self._engine

    def _eos_ids(self) -> list[int]:
        ids: set[int] = set()
        for src in self._configs():
            eos = src.get("eos_token_id")
            ids |= set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        vocab = self.tokenizer.get_vocab()
        ids |= {vocab[t] for t in END_OF_TURN if t in vocab}
        return sorted(ids)

    def _configs(self) -> list[dict]:
        """config.json and generation_config.json as dicts, without loading the weights."""
        loaded = self.loaded
        if getattr(loaded, "hf_folder", None) is not None and not getattr(loaded, "loaded", True):
            out = []
            for name in ("generation_config.json", "config.json"):
                f = loaded.hf_folder / name
                if f.is_file():
                    out.append(json.loads(f.read_text()))
            return out
        m = loaded.model
        gen = getattr(m, "generation_config", None)
        return [c.to_dict() for c in (gen, m.config) if c is not None]

    # -- prompts --------------------------------------------------------------------------------
    def encode_chat(self, messages: Sequence[Message], tools: Sequence[dict] | None = None) -> list[int]:
        """Token ids of a conversation rendered with the model's chat template (or the Modelfile
        TEMPLATE), ready for the assistant's answer; ``tools`` go to templates that use them."""
        msgs = list(messages)
        if self.system and not any(m.get("role") == "system" for m in msgs):
            msgs.insert(0, {"role": "system", "content": self.system})
        msgs = self.messages + msgs if self.messages else msgs
        template = self.chat_template
        if not template:
            return self.encode(_plain_transcript(msgs), special=True)
        text = render_chat(template, msgs, self.tokenizer, tools=tools)
        return self.encode(text, special=False)

    def encode(self, text: str, special: bool = True) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=special)["input_ids"])

    def _prompt_ids(self, prompt: str, raw: bool, system: str | None) -> list[int]:
        if raw or not self.chat_template:
            return self.encode(prompt, special=True)
        msgs: list[Message] = []
        if system:
            msgs.append({"role": "system", "content": system})
        msgs.append({"role": "user", "content": prompt})
        return self.encode_chat(msgs)

    def _keep(self, ids: list[int]) -> int:
        bos = self.tokenizer.bos_token_id
        return 1 if ids and bos is not None and ids[0] == bos else 0

    # -- generation -----------------------------------------------------------------------------
    def stream(self, prompt: str, raw: bool = False, system: str | None = None,
               **options: Any) -> Iterator[str]:
        """Generate for one prompt, yielding text as it is decided. The chat template is applied
        unless ``raw`` (as in Ollama's /api/generate)."""
        opts = self.options.merged(options)
        if opts.rag and not raw:  # a model bound to a collection: the prompt is the question
            msgs = ([{"role": "system", "content": system}] if system else []) + \
                [{"role": "user", "content": prompt}]
            return self.chat_stream(msgs, **options)
        if opts.guard:
            return self._guarded(prompt, opts, lambda p: self._prompt_ids(p, raw, system))
        ids = self._prompt_ids(prompt, raw, system)
        return self._run(ids, opts)

    def generate(self, prompt: str, raw: bool = False, system: str | None = None,
                 **options: Any) -> str:
        return "".join(self.stream(prompt, raw=raw, system=system, **options))

    def chat_stream(self, messages: Sequence[Message], **options: Any) -> Iterator[str]:
        opts = self.options.merged(options)
        msgs = _check_messages(messages)
        if opts.rag:  # bound to a collection (PARAMETER rag): answer from its documents
            from ..rag.bound import IDK, bind  # layer 4, called back like the guards' stream below

            p = bind(self.home, opts.rag, msgs)
            if p.below_threshold:  # nothing retrieved is close enough: the model is not asked
                self.last_stats = Stats(done_reason="stop")
                return iter([IDK])
            msgs, opts = p.messages, dataclasses.replace(opts, rag=())
        if opts.guard and msgs and msgs[-1]["role"] == "user":
            return self._guarded(msgs[-1]["content"], opts, lambda p: self.encode_chat(
                msgs[:-1] + [{"role": "user", "content": p}]))
        return self._run(self.encode_chat(msgs), opts)

    def chat(self, messages: Sequence[Message], **options: Any) -> str:
        return "".join(self.chat_stream(messages, **options))

    def _guarded(self, text: str, opts: Options, to_ids) -> Iterator[str]:
        """Guards (``options.guard``, oficina/safety) on the user's text, then on the answer as it
        streams: a blocked prompt generates nothing, a blocked answer stops; ``last_stats``'
        ``done_reason`` says which guard and why."""
        from ..safety.stream import GuardedStream, check_input, done_reason

        text, verdict = check_input(text, opts.guard)
        self.last_verdicts = [verdict] if verdict.verdict != "allow" else []  # flags, redactions
        if verdict.blocked:
            self.last_stats = Stats(done_reason=done_reason(verdict))
            return iter(())
        ids = to_ids(text)

        def wrap(items):
            stream = GuardedStream(items, opts.guard)
            stream.verdicts = self.last_verdicts  # the answer's flags join the prompt's as they come
            return stream
        return self._run(ids, opts, wrap)

    def _run(self, ids: list[int], opts: Options, wrap=None) -> Iterator[str]:
        engine = self.engine
        if opts.num_thread > 0:
            torch.set_num_threads(opts.num_thread)
        engine.runner.num_batch = opts.num_batch
        items = engine.stream(ids, opts, keep=self._keep(ids))
        for item in wrap(items) if wrap else items:
            if isinstance(item, Stats):
                item.load_seconds, self.load_seconds = self.load_seconds, 0.0
                self.last_stats = item
                if item.truncated:
                    reporter().warn(item.truncated)
            else:
                yield item


def _check_messages(messages: Sequence[Message]) -> list[Message]:
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "tool") \
                or not isinstance(m.get("content"), str):
            raise OficinaError(f"message {i}: expected {{'role': system|user|assistant, 'content': str}}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _plain_transcript(messages: Sequence[Message]) -> str:
    """For models without a chat template (base models): a plain transcript they can continue."""
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n".join(lines) + "\nAssistant:"
