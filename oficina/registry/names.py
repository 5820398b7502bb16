"""Model names as users type them: ``family[:tag][@version]`` (Ollama's ``name:tag``, tag
defaults to ``latest``). Case-insensitive, like Ollama."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import RegistryError

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,79}(/[a-z0-9][a-z0-9._-]{0,79}){0,2}$")
_TAG = re.compile(r"^[a-z0-9][a-z0-9._-]{0,79}$")


@dataclass(frozen=True)
class Ref:
    name: str  # "smollm2:latest"
    version: int | None = None  # None = the current head

    def __str__(self) -> str:
        return self.name if self.version is None else f"{self.name}@{self.version}"


def parse_ref(text: str) -> Ref:
    raw = text.strip().lower()
    version = None
    if "@" in raw:
        raw, _, v = raw.rpartition("@")
        if not v.isdigit() or int(v) < 1:
            raise RegistryError(f"invalid version in {text!r}: expected NAME@N with N >= 1")
        version = int(v)
    base, _, tag = raw.partition(":")
    tag = tag or "latest"
    if not _NAME.match(base) or not _TAG.match(tag):
        raise RegistryError(
            f"invalid model name {text!r}: use letters, digits, '.', '_', '-' as NAME[:TAG][@VERSION]")
    return Ref(f"{base}:{tag}", version)


def short(name: str) -> str:
    """``smollm2:latest`` -> ``smollm2`` for display where the tag adds nothing."""
    return name[:-7] if name.endswith(":latest") else name
