"""A manifest says what a model version is made of: weight/tokenizer files (by digest), the
parameters, template, system prompt, adapters, messages and license. It is stored as a blob
itself, so a version is identified by one digest (like an Ollama or OCI manifest)."""

from __future__ import annotations

import json
import posixpath
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import RegistryError
from .store import check_digest

FORMATS = ("gguf", "hf", "remote", "rag")  # remote: an upstream in details (serve/remote.py); rag: a document collection (rag/collection.py)
SCHEMA = 1


@dataclass(frozen=True)
class FileRef:
    path: str  # relative path inside the model folder, e.g. "model.gguf", "1_Pooling/config.json"
    digest: str
    size: int

    def __post_init__(self) -> None:
        check_digest(self.digest)
        safe_relpath(self.path)


@dataclass
class Manifest:
    format: str
    files: list[FileRef]
    params: dict[str, Any] = field(default_factory=dict)
    template: str | None = None
    system: str | None = None
    adapters: list[FileRef] = field(default_factory=list)
    messages: list[dict[str, str]] = field(default_factory=list)
    license: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise RegistryError(f"unknown model format {self.format!r}")

    @property
    def weights(self) -> FileRef:
        """The main weight file of a GGUF model."""
        for f in self.files:
            if f.path.endswith(".gguf"):
                return f
        raise RegistryError("manifest has no .gguf file")

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files) + sum(f.size for f in self.adapters)

    def digests(self) -> set[str]:
        return {f.digest for f in self.files} | {f.digest for f in self.adapters}

    def to_json(self) -> bytes:
        d = asdict(self)
        d["schema"] = SCHEMA
        return json.dumps(d, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "Manifest":
        try:
            d = json.loads(data)
            d.pop("schema", None)
            d["files"] = [FileRef(**f) for f in d["files"]]
            d["adapters"] = [FileRef(**f) for f in d.get("adapters", [])]
            return cls(**d)
        except (ValueError, TypeError, KeyError) as e:
            raise RegistryError(f"corrupt manifest: {e}") from None


def safe_relpath(path: str) -> str:
    """A relative path that cannot escape its folder (no absolute paths, no '..')."""
    norm = posixpath.normpath(path)
    if (not path or path.startswith("/") or norm.startswith("..") or "\\" in path
            or norm != path or "\x00" in path):
        raise RegistryError(f"unsafe file path in model: {path!r}")
    return path
