"""Publishing a version: files -> stored blobs -> manifest (fields inherited from the version it
derives from) -> described -> one new version with its lineage. Every producer of versions
(pull/import, tune, merge, align, distill, pretrain, quantize, create) goes through here, so a
change to what a manifest records reaches all of them at once."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..models.info import describe
from .manifest import FileRef, Manifest
from .sources import collect_files, store_files

# what a derived version keeps from the one it came from (its weights and adapters are new)
INHERITED = ("params", "template", "system", "messages", "license")


def stored_manifest(reg, source: Path | list[FileRef], fmt: str | None = None,
                    inherit: Manifest | None = None, details: dict[str, Any] | None = None,
                    keep_adapters: bool = False, license: list[str] | None = None,
                    license_from_file: bool = False) -> Manifest:
    """A manifest for ``source`` (a folder or file, stored now; or refs already stored, with
    ``fmt``), carrying ``inherit``'s Modelfile fields (and its adapters with ``keep_adapters``),
    described from the stored files, ``details`` added on top. ``license_from_file``: a pulled
    file's own license (GGUF ``general.license``) when none is given."""
    if isinstance(source, (str, Path)):
        fmt, files = collect_files(Path(source))
        refs = store_files(reg, files)
    else:
        refs = list(source)
    fields: dict[str, Any] = {}
    if inherit is not None:
        fields = {k: _copy(getattr(inherit, k)) for k in INHERITED}
        if keep_adapters:
            fields["adapters"] = list(inherit.adapters)
    if license is not None:
        fields["license"] = list(license)
    manifest = Manifest(format=fmt, files=refs, **fields)
    info = describe(reg.snapshot_for(manifest), fmt)
    manifest.details = {**info.summary(), **(details or {})}
    if license_from_file and not manifest.license and info.license:
        manifest.license = [info.license]
    return manifest


def stacked_manifest(reg, base: Manifest, folder: Path, names, details: dict[str, Any]) -> Manifest:
    """``base`` with the files of adapter ``folder`` (those ``names`` accepts) stored as its next
    adapter layer ``<index>/``."""
    index = len({a.path.split("/", 1)[0] for a in base.adapters})
    files = [(f"{index}/{p.name}", p) for p in sorted(Path(folder).iterdir()) if names(p.name)]
    return dataclasses.replace(base, adapters=list(base.adapters) + store_files(reg, files),
                               params=dict(base.params), details={**base.details, **details})


def _copy(v):
    return dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v
