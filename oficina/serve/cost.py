"""What a response cost: a price table per model, read from a TOML file
(``$OFICINA_HOME/prices.toml`` by default, or ``oficina serve --prices FILE``)::

    currency = "USD"

    [models.smollm2]            # a registry name (":latest" implied) or "*" for any other model
    prompt_per_1k = 0.00005     # per 1,000 prompt tokens
    output_per_1k = 0.0002      # per 1,000 generated tokens

    [models."llama-gpu"]
    per_second = 0.0011         # per busy second (a rented GPU: time, not tokens)

A typo is an error that names the file and line; prices are non-negative numbers.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from pathlib import Path

import tomllib

from ..errors import FormatError
from ..registry.registry import default_home


@dataclass(frozen=True)
class Price:
    prompt_per_1k: float = 0.0
    output_per_1k: float = 0.0
    per_second: float = 0.0

    def cost(self, prompt_tokens: int, output_tokens: int, busy_seconds: float = 0.0) -> float:
        return (prompt_tokens * self.prompt_per_1k + output_tokens * self.output_per_1k) / 1000 \
            + busy_seconds * self.per_second


PRICE_KEYS = tuple(f.name for f in fields(Price))
TOP_KEYS = ("currency", "models")


@dataclass(frozen=True)
class PriceTable:
    prices: dict[str, Price]
    currency: str = "USD"
    path: Path | None = None

    def price(self, model: str) -> Price | None:
        """The model's price: its exact name, then without/with ``:latest``, then ``*``."""
        base = model.removesuffix(":latest")
        for key in (model, base, f"{base}:latest", "*"):
            if key in self.prices:
                return self.prices[key]
        return None

    def cost(self, model: str, prompt_tokens: int, output_tokens: int, busy_seconds: float = 0.0) -> float | None:
        """None when the table has no price for this model (no cost is better than a wrong one)."""
        p = self.price(model)
        return None if p is None else p.cost(prompt_tokens, output_tokens, busy_seconds)


def default_path() -> Path:
    return default_home() / "prices.toml"


def load(path: str | Path | None = None) -> PriceTable | None:
    """The table at ``path`` (it must exist), or the default file if there is one, else None."""
    if path is None:
        p = default_path()
        if not p.is_file():
            return None
    else:
        p = Path(path).expanduser()
        if not p.is_file():
            raise FormatError(f"{p}: no such price table")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise FormatError(f"{p}: not valid UTF-8") from None
    return parse(text, p)


_AT = re.compile(r"\s*\(at line (\d+), column \d+\)$")


def parse(text: str, path: Path | str = "<prices>") -> PriceTable:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        m = _AT.search(msg)
        line = m.group(1) if m else "1"
        raise FormatError(f"{path}:{line}: not valid TOML ({_AT.sub('', msg)})") from None

    def fail(table: str | None, key: str | None, message: str):
        raise FormatError(f"{path}:{_line(text, table, key)}: {message}")

    for key in doc:
        if key not in TOP_KEYS:
            fail(None, key, f"unknown setting {key!r}; expected {', '.join(TOP_KEYS)}")
    currency = doc.get("currency", "USD")
    if not isinstance(currency, str) or not currency.strip():
        fail(None, "currency", "currency must be a name such as \"USD\"")
    models = doc.get("models", {})
    if not isinstance(models, dict):
        fail(None, "models", "models must be a table: [models.NAME]")
    prices = {}
    for name, values in models.items():
        table = f"models.{name}"
        if not isinstance(values, dict):
            fail("models", name, f"[models.{name}] must be a table of prices ({', '.join(PRICE_KEYS)})")
        for k, v in values.items():
            if k not in PRICE_KEYS:
                fail(table, k, f"unknown price {k!r} for model {name!r}; expected {', '.join(PRICE_KEYS)}")
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or math.isnan(v):
                fail(table, k, f"{k} for model {name!r} must be a non-negative number (got {v!r})")
        if not values:
            fail(table, None, f"[models.{name}] sets no price; expected {', '.join(PRICE_KEYS)}")
        prices[name] = Price(**{k: float(v) for k, v in values.items()})
    return PriceTable(prices, currency.strip(), Path(path) if path != "<prices>" else None)


_HEADER = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(?:#.*)?$")


def _line(text: str, table: str | None, key: str | None) -> int:
    """The line where ``key`` is set inside ``[table]`` (TOML values carry no positions once
    parsed, so we look for them: header lines, then ``key =`` or ``"key" =`` in that table)."""
    current, header_line = None, None
    for n, line in enumerate(text.splitlines(), 1):
        h = _HEADER.match(line)
        if h:
            current = ".".join(p.strip().strip('"\'') for p in re.split(r"\.(?=(?:[^\"']*[\"'][^\"']*[\"'])*[^\"']*$)", h.group(1)))
            if table is not None and current == table:
                header_line = n
                if key is None:
                    return n
            continue
        if key is not None and current == table:
            if re.match(rf"""^\s*(?:{re.escape(key)}|"{re.escape(key)}"|'{re.escape(key)}')\s*[=.]""", line):
                return n
    if header_line:
        return header_line
    if key is not None:  # a dotted or inline form: the first line that names the key
        for n, line in enumerate(text.splitlines(), 1):
            if re.search(rf"""(?:^|[\s.{{,"'])(?:{re.escape(key)})["']?\s*=""", line):
                return n
    return 1
