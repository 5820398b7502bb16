"""A loaded model and what one does with it: resolve a name, load it, turn prompts and
conversations into ids, and run them through a ``Runner`` (fast when the architecture allows,
else transformers). ``oficina.api`` re-exports this for users; the CLI, the server, evaluation
and RAG call it here."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from ..errors import OficinaError
from ..formats import prompt
from ..models.info import ModelInfo, check_loadable, describe
from ..models.loader import Loaded, gguf_cache_folder, gguf_file, load_folder, load_tokenizer
from ..options import Options
from ..registry.registry import Entry, Registry
from ..registry.sources import resolve
from ..report import quiet_libraries, reporter
from ..safety.stream import GuardedStream, check_input, done_reason
from ..tuning.attach import attach_loaded
from .choose import choose_runner
from .engine import Engine, Stats
from .result import Reply, Stream

quiet_libraries()

# Tokens that end an assistant turn in common chat formats (ChatML, Gemma, Llama 3, Phi).
END_OF_TURN = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>", "<|endoftext|>", "</s>", "<eos>")

Message = dict[str, str]

# The ``rag`` option (a model bound to a collection) is answered by oficina.rag, a layer above
# this one: it registers its binder here when imported (oficina.api imports it), as guards and
# task kinds register themselves. ``binder(home, refs, messages)`` returns the messages to
# generate from, ``below_threshold`` and the ``idk`` answer for when nothing retrieved is close.
_binder = None


def register_binder(fn) -> None:
    global _binder
    _binder = fn


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
        self.source, self.fmt, self.cache, self.label = Path(folder), fmt, cache, label
        self.info = describe(self.source, fmt)
        check_loadable(self.info, label or self.source.name)  # declared sizes vs the file, remote code
        self.folder = self.source
        self._model = None
        self.tokenizer = None
        self.hf_folder: Path | None = None  # config.json + tokenizer, when they exist on disk
        if self.info.format == "gguf":
            if cache is not None:
                target = gguf_cache_folder(gguf_file(self.source), cache)
                if (target / "config.json").is_file():
                    self.hf_folder = self.folder = target
        elif (self.source / "config.json").is_file():
            self.hf_folder = self.source
        if self.hf_folder is not None:
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
        self._last = threading.local()  # each thread's last call, for ``last_stats``
        self._lock = threading.RLock()  # building the runner once, the load time reported once
        self._turn = threading.Lock()  # one generating thread at a time (_my_turn)
        self._turn_owner: int | None = None
        self.home: Path | None = None  # the registry's home (where a bound collection is found)
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
        with self._lock:
            if self._runner is None:
                self._runner = choose_runner(self)
        return self._runner

    @property
    def engine(self) -> Engine:
        with self._lock:
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
    def encode_chat(self, messages: Sequence[Message], tools: Sequence[dict] | None = None,
                    template: str | None = None) -> list[int]:
        """Token ids of a conversation as the one prompt builder (``formats.prompt``) renders it
        for this model (its SYSTEM, MESSAGE lines and TEMPLATE or chat template), ready for the
        assistant's answer; ``tools`` go to templates that use them; ``template`` overrides the
        model's (the server's per-request ``template``)."""
        p = prompt.build(messages, self.tokenizer, template=template or self.template, system=self.system,
                         preamble=self.messages, tools=tools)
        return self.encode(p.text, special=not p.templated)

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
    # Each call returns its own result: ``stream``/``chat_stream`` a ``Stream`` (iterate it for
    # the text; its ``stats`` and guard ``verdicts`` are set as it ends), ``generate``/``chat`` a
    # ``Reply`` (a str with ``stats`` and ``verdicts``). Threads can share one Model: they take
    # turns, and none sees another's stats.
    def stream(self, prompt: str, raw: bool = False, system: str | None = None,
               **options: Any) -> Stream:
        """Generate for one prompt, yielding text as it is decided. The chat template is applied
        unless ``raw`` (as in Ollama's /api/generate)."""
        opts = self.options.merged(options)
        if opts.rag and not raw:  # a model bound to a collection: the prompt is the question
            msgs = ([{"role": "system", "content": system}] if system else []) + \
                [{"role": "user", "content": prompt}]
            return self.chat_stream(msgs, **options)
        out = Stream(self._remember)
        if opts.guard:
            return out.over(self._guarded(prompt, opts, lambda p: self._prompt_ids(p, raw, system), out))
        return out.over(self._run(self._prompt_ids(prompt, raw, system), opts, out))

    def generate(self, prompt: str, raw: bool = False, system: str | None = None,
                 **options: Any) -> Reply:
        return self.stream(prompt, raw=raw, system=system, **options).reply()

    def chat_stream(self, messages: Sequence[Message], **options: Any) -> Stream:
        opts = self.options.merged(options)
        msgs = _check_messages(messages)
        out = Stream(self._remember)
        if opts.rag:  # bound to a collection (PARAMETER rag): answer from its documents
            if _binder is None:
                raise OficinaError("this model is bound to a collection (the rag option); "
                                   "import oficina.rag (or oficina) to answer through it")
            p = _binder(self.home, opts.rag, msgs)
            if p.below_threshold:  # nothing retrieved is close enough: the model is not asked
                out.finished(Stats(done_reason="stop"))
                return out.over(iter([p.idk]))
            msgs, opts = p.messages, dataclasses.replace(opts, rag=())
        if opts.guard and msgs and msgs[-1]["role"] == "user":
            return out.over(self._guarded(msgs[-1]["content"], opts, lambda p: self.encode_chat(
                msgs[:-1] + [{"role": "user", "content": p}]), out))
        return out.over(self._run(self.encode_chat(msgs), opts, out))

    def chat(self, messages: Sequence[Message], **options: Any) -> Reply:
        return self.chat_stream(messages, **options).reply()

    @property
    def last_stats(self) -> Stats | None:
        """The Stats of this thread's last finished call (kept for older callers; a call's own
        result carries them: ``reply.stats``, ``stream.stats``)."""
        return getattr(self._last, "stats", None)

    @property
    def last_verdicts(self) -> list:
        """This thread's last call's guard verdicts that flagged or redacted (``.verdicts``)."""
        return getattr(self._last, "verdicts", [])

    def _remember(self, stats: Stats, verdicts: list) -> None:
        self._last.stats, self._last.verdicts = stats, verdicts

    def _guarded(self, text: str, opts: Options, to_ids, out: Stream) -> Iterator[str]:
        """Guards (``options.guard``, oficina/safety) on the user's text, then on the answer as it
        streams: a blocked prompt generates nothing, a blocked answer stops; the stats'
        ``done_reason`` says which guard and why."""
        text, verdict = check_input(text, opts.guard)
        out.verdicts = [verdict] if verdict.verdict != "allow" else []  # flags, redactions
        self._last.verdicts = out.verdicts
        if verdict.blocked:
            out.finished(Stats(done_reason=done_reason(verdict)))
            return iter(())
        ids = to_ids(text)

        def wrap(items):
            stream = GuardedStream(items, opts.guard)
            stream.verdicts = out.verdicts  # the answer's flags join the prompt's as they come
            return stream
        return self._run(ids, opts, out, wrap)

    def _run(self, ids: list[int], opts: Options, out: Stream, wrap=None) -> Iterator[str]:
        engine = self.engine
        with self._my_turn():  # the runner's settings are this call's while it generates
            if opts.num_thread > 0:
                torch.set_num_threads(opts.num_thread)
            engine.runner.num_batch = opts.num_batch
            items = engine.stream(ids, opts, keep=self._keep(ids))
            for item in wrap(items) if wrap else items:
                if isinstance(item, Stats):
                    with self._lock:
                        item.load_seconds, self.load_seconds = self.load_seconds, 0.0
                    out.finished(item)
                    if item.truncated:
                        reporter().warn(item.truncated)
                else:
                    yield item

    @contextlib.contextmanager
    def _my_turn(self):
        """Threads sharing this Model generate one at a time (the server batches requests through
        its scheduler instead). A Lock, not an RLock, since a stream may be finished by another
        thread than the one that began it; a thread that starts a second stream while its first
        is open goes on, and the runner's slots decide, as without threads."""
        if self._turn.acquire(blocking=False):
            held = True
        elif self._turn_owner == threading.get_ident():
            held = False
        else:
            held = self._turn.acquire()
        if held:
            self._turn_owner = threading.get_ident()
        try:
            yield
        finally:
            if held:
                self._turn_owner = None
                self._turn.release()


def _check_messages(messages: Sequence[Message]) -> list[Message]:
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "tool") \
                or not isinstance(m.get("content"), str):
            raise OficinaError(f"message {i}: expected {{'role': system|user|assistant, 'content': str}}")
        out.append({"role": m["role"], "content": m["content"]})
    return out
