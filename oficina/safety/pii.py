"""``pii``: personal data found by patterns that are then validated, the way Presidio's pattern
recognizers work (regex candidate -> checksum or range validation -> context words where a bare
number is ambiguous), with no model: e-mails, phone numbers, payment cards (Luhn), IBANs (ISO 13616
mod-97), IPv4/IPv6 addresses (the ``ipaddress`` module), Brazilian CPF and Portuguese NIF (their
check digits) and US SSNs (SSA's rules: no area 000/666/9xx, group 00 or serial 0000).

Bare 9- and 11-digit numbers are everywhere (order numbers, invoices): a NIF, an unformatted SSN
or an unformatted CPF counts only with a context word (``NIF``, ``SSN``, ``CPF``, ...) just before
it (no other number in between) -- Presidio's context enhancement, made a requirement. Formatted ones (``123-45-6789``,
``123.456.789-09``) need none.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .guard import Guard, Span, Verdict, redact, register

CONTEXT_CHARS = 40  # how far before a bare number a context word may start
CONTEXT_GAP = 24  # ... and how much text (no digits) may separate it from the number


def luhn(digits: str) -> bool:
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = int(c)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


# ISO 13616 lengths for the countries our users are most likely to paste; others: 15..34.
IBAN_LENGTHS = {"PT": 25, "BR": 29, "GB": 22, "IE": 22, "ES": 24, "FR": 27, "DE": 22, "IT": 27,
                "NL": 18, "BE": 16, "LU": 20, "CH": 21, "AT": 20, "AO": 25, "MZ": 25, "CV": 25}


def iban_ok(raw: str) -> bool:
    s = re.sub(r"\s", "", raw).upper()
    if IBAN_LENGTHS.get(s[:2], len(s)) != len(s) or not 15 <= len(s) <= 34:
        return False
    moved = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def cpf_ok(raw: str) -> bool:
    d = [int(c) for c in re.sub(r"\D", "", raw)]
    if len(d) != 11 or len(set(d)) == 1:
        return False
    for n in (9, 10):  # the two check digits, Receita Federal's weights 10..2 and 11..2
        s = sum(d[i] * (n + 1 - i) for i in range(n))
        if (s * 10 % 11) % 10 != d[n]:
            return False
    return True


def nif_ok(raw: str) -> bool:
    d = [int(c) for c in re.sub(r"\D", "", raw)]
    if len(d) != 9 or d[0] not in (1, 2, 3, 5, 6, 8, 9):
        return False
    check = 11 - sum(d[i] * (9 - i) for i in range(8)) % 11
    return (0 if check >= 10 else check) == d[8]


def ssn_ok(raw: str) -> bool:
    d = re.sub(r"\D", "", raw)
    area, group, serial = d[:3], d[3:5], d[5:]
    return (len(d) == 9 and area not in ("000", "666") and not area.startswith("9")
            and group != "00" and serial != "0000")


def card_ok(raw: str) -> bool:
    d = re.sub(r"\D", "", raw)
    # issuer prefixes (Visa 4, Mastercard 51-55/22-27, Amex 34/37, Discover/others 6, Diners 30/36/38)
    return 13 <= len(d) <= 19 and re.match(r"4|5[1-5]|2[2-7]|3[0478]|6", d) is not None and luhn(d)


def ip_ok(raw: str) -> bool:
    try:
        ipaddress.ip_address(raw)
        return True
    except ValueError:
        return False


def _digits_between(lo: int, hi: int) -> Callable[[str], bool]:
    return lambda raw: lo <= len(re.sub(r"\D", "", raw)) <= hi


@dataclass(frozen=True)
class Recognizer:
    category: str
    pattern: re.Pattern
    valid: Callable[[str], bool]
    context: re.Pattern | None = None  # a word that must come just before the match


_CTX_NIF = re.compile(r"\b(nif|nipc|contribuinte|n\.?º? ?fiscal|número fiscal|tax (?:id|number))\b", re.IGNORECASE)
_CTX_SSN = re.compile(r"\b(ssn|social security)\b", re.IGNORECASE)
_CTX_CPF = re.compile(r"\bcpf\b", re.IGNORECASE)
_NB = r"(?<![\w.+-])"  # not glued to a word, a number or another id on the left
_NA = r"(?![\w-])"  # ... or on the right (a sentence's full stop may follow, "-B" may not)

# Order matters: validated ids first; a later match that overlaps an earlier one is dropped.
RECOGNIZERS: tuple[Recognizer, ...] = (
    Recognizer("email", re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"),
               lambda raw: True),
    Recognizer("iban", re.compile(_NB + r"[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}" + _NA), iban_ok),
    Recognizer("credit_card", re.compile(_NB + r"\d(?:[ -]?\d){12,18}" + _NA), card_ok),
    Recognizer("cpf", re.compile(_NB + r"\d{3}\.\d{3}\.\d{3}-\d{2}" + _NA), cpf_ok),
    Recognizer("cpf", re.compile(_NB + r"\d{11}" + _NA), cpf_ok, _CTX_CPF),
    Recognizer("ssn", re.compile(_NB + r"\d{3}-\d{2}-\d{4}" + _NA), ssn_ok),
    Recognizer("ssn", re.compile(_NB + r"\d{3} ?\d{2} ?\d{4}" + _NA), ssn_ok, _CTX_SSN),
    Recognizer("nif", re.compile(_NB + r"\d{3} ?\d{3} ?\d{3}" + _NA), nif_ok, _CTX_NIF),
    Recognizer("ip_address", re.compile(_NB + r"(?:\d{1,3}\.){3}\d{1,3}" + _NA), ip_ok),
    Recognizer("ip_address", re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){2,7}(?::|[0-9A-Fa-f]{1,4})"
                                        r"(?:[0-9A-Fa-f:]*)(?![\w:])"), lambda raw: ":" in raw and ip_ok(raw)),
    # phones: international (+CC ...), NANP (555) 123-4567, Portuguese 9x/2x numbers, Brazilian
    Recognizer("phone", re.compile(r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}" + _NA),
               _digits_between(8, 15)),
    Recognizer("phone", re.compile(_NB + r"(?:\(\d{3}\) ?|\d{3}[-. ])\d{3}[-. ]\d{4}" + _NA),
               lambda raw: True),
    Recognizer("phone", re.compile(_NB + r"(?:9[1236]\d|2\d\d)(?: ?\d{3}){2}" + _NA), lambda raw: True),
    Recognizer("phone", re.compile(_NB + r"\(\d{2}\) ?9?\d{4}-\d{4}" + _NA), lambda raw: True),
)
CATEGORIES = tuple(dict.fromkeys(r.category for r in RECOGNIZERS))


def _has_context(word: re.Pattern, text: str, start: int) -> bool:
    """A context word just before ``start``: at most CONTEXT_GAP characters after it, with no
    digit and no sentence break between ("NIF 123456789, order 987654321": the order number is
    not a NIF)."""
    window = text[max(0, start - CONTEXT_CHARS):start]
    last = None
    for last in word.finditer(window):
        pass
    if last is None:
        return False
    gap = window[last.end():]
    return len(gap) <= CONTEXT_GAP and not re.search(r"\d|[;!?]|\.\s", gap)


def find(text: str) -> list[Span]:
    """Every piece of personal data in ``text``, as non-overlapping spans in text order."""
    spans: list[Span] = []
    for r in RECOGNIZERS:
        for m in r.pattern.finditer(text):
            if any(m.start() < s.end and s.start < m.end() for s in spans):
                continue
            if r.context is not None and not _has_context(r.context, text, m.start()):
                continue
            if r.valid(m.group()):
                spans.append(Span(m.start(), m.end(), r.category))
    return sorted(spans, key=lambda s: s.start)


# a trailing run of tokens that still contain digits (a phone, card or IBAN being written in
# groups), plus the last, unfinished token
_TAIL = re.compile(r"(?:[^\s]*\d[^\s]*[ ]?)*\S*$")


class PII(Guard):
    lookback = CONTEXT_CHARS  # enough for a context word before a number

    def check(self, text: str, context: Mapping[str, Any] | None = None) -> Verdict:
        spans = find(text)
        if not spans:
            return Verdict("allow", guard=self.name)
        counts: dict[str, int] = {}
        for s in spans:
            counts[s.category] = counts.get(s.category, 0) + 1
        top = max(counts, key=counts.get)
        return Verdict("redact", top, 1.0, tuple(spans), self.name, redact(text, spans))

    def hold(self, text: str) -> int:
        # An id can only still grow at the end: hold back the trailing digit groups and the last word.
        m = _TAIL.search(text)
        return m.start() if m else len(text)


@register("pii", "personal data (e-mail, phone, card, IBAN, IP, CPF, NIF, SSN): redacted")
def _make(arg: str | None) -> Guard:
    return PII()
