"""What every inspection needs: the model's name for messages, index checks that name the valid
range, and the one call that turns text into ids the model can take."""

from __future__ import annotations

from pathlib import Path

from ..errors import OficinaError


def name_of(model) -> str:
    """How messages call the model: its registry name, else its folder's or file's name."""
    if getattr(model, "entry", None) is not None:
        name = model.entry.name
        return name[:-7] if name.endswith(":latest") else name
    folder = getattr(getattr(model, "loaded", None), "folder", None)
    return Path(folder).name if folder else model.info.name or model.info.architecture


def pick(value: int, count: int, what: str, owner: str) -> int:
    """``value`` as an index into the ``count`` {what}s that ``owner`` has (negative counts from
    the end, as in Python), or a one-line error naming the valid range."""
    if count <= 0:
        raise OficinaError(f"{owner} has no {what}s")
    if not -count <= value < count:
        raise OficinaError(f"{what} {value} is out of range: {owner} has {count} {what}s "
                           f"(0..{count - 1}, or -{count}..-1 from the end)")
    return value % count


def require(model, kinds: tuple[str, ...], job: str, hint: str = "") -> None:
    """One line saying which kinds of model ``job`` needs, when this one is not one of them."""
    if model.info.kind not in kinds:
        raise OficinaError(f"{job} needs a {' or '.join(kinds)} model; {name_of(model)} is "
                           f"{model.info.kind} ({model.info.architecture}){hint}")
