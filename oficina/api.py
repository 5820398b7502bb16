"""The Python API, the same functions the CLI calls::

    import oficina
    m = oficina.load("smollm2")
    m.generate("Why is the sky blue?", temperature=0)
    m.chat([{"role": "user", "content": "Hi"}])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

from .errors import OficinaError
from .formats.template import render_chat
from .generation.engine import Engine, Stats
from .models.info import ModelInfo
from .models.loader import Loaded, load_folder
from .options import Options
from .registry.registry import Entry, Registry
from .registry.sources import catalog, pull
from .registry.names import parse_ref
from .report import quiet_libraries, reporter

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
    ``.gguf`` file / Hugging Face folder directly."""
    Options.from_mapping(options)  # a wrong option is refused before the model loads
    path = Path(name).expanduser()
    if isinstance(name, Path) or path.exists():
        if not path.exists():
            raise OficinaError(f"no such file or folder: {name}")
        return Model(load_folder(path), None, Options.from_mapping(options))
    reg = registry or Registry()
    entry = resolve(str(name), reg)
    loaded = load_folder(reg.snapshot(entry), entry.manifest.format, cache=reg.home / "cache",
                         label=entry.ref)
    if entry.manifest.adapters:  # `oficina tune` results and Modelfile ADAPTER lines (PEFT layout)
        from .tuning.attach import attach_loaded

        loaded = attach_loaded(loaded, reg.snapshot(entry) / "adapters")
    base = Options.from_mapping(entry.manifest.params)
    return Model(loaded, entry, base.merged(options))


class Model:
    def __init__(self, loaded: Loaded, entry: Entry | None, options: Options):
        self.loaded = loaded
        self.entry = entry
        self.options = options
        m = entry.manifest if entry else None
        self.system: str | None = m.system if m else None
        self.template: str | None = m.template if m else None
        self.messages: list[Message] = list(m.messages) if m else []
        self.last_stats: Stats | None = None
        self._engine: Engine | None = None

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
    def engine(self) -> Engine:
        if self.info.kind != "decoder-only":
            raise OficinaError(f"{self.info.architecture} is an {self.info.kind} model; text "
                               f"generation needs a decoder-only model")
        if self._engine is None:
            self._engine = Engine(self.loaded.model, self.tokenizer, self._eos_ids(),
                                  self.info.context_length)
        return self._engine

    def _eos_ids(self) -> list[int]:
        ids: set[int] = set()
        for src in (getattr(self.loaded.model, "generation_config", None), self.loaded.model.config):
            eos = getattr(src, "eos_token_id", None)
            ids |= set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        vocab = self.tokenizer.get_vocab()
        ids |= {vocab[t] for t in END_OF_TURN if t in vocab}
        return sorted(ids)

    # -- prompts --------------------------------------------------------------------------------
    def encode_chat(self, messages: Sequence[Message]) -> list[int]:
        """Token ids of a conversation rendered with the model's chat template (or the Modelfile
        TEMPLATE), ready for the assistant's answer."""
        msgs = list(messages)
        if self.system and not any(m.get("role") == "system" for m in msgs):
            msgs.insert(0, {"role": "system", "content": self.system})
        msgs = self.messages + msgs if self.messages else msgs
        template = self.chat_template
        if not template:
            return self.encode(_plain_transcript(msgs), special=True)
        text = render_chat(template, msgs, self.tokenizer)
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
        ids = self._prompt_ids(prompt, raw, system)
        return self._run(ids, opts)

    def generate(self, prompt: str, raw: bool = False, system: str | None = None,
                 **options: Any) -> str:
        return "".join(self.stream(prompt, raw=raw, system=system, **options))

    def chat_stream(self, messages: Sequence[Message], **options: Any) -> Iterator[str]:
        opts = self.options.merged(options)
        return self._run(self.encode_chat(_check_messages(messages)), opts)

    def chat(self, messages: Sequence[Message], **options: Any) -> str:
        return "".join(self.chat_stream(messages, **options))

    def _run(self, ids: list[int], opts: Options) -> Iterator[str]:
        engine = self.engine
        for item in engine.stream(ids, opts, keep=self._keep(ids)):
            if isinstance(item, Stats):
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
