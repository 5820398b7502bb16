"""Modelfile parse <-> serialize, following Ollama's grammar (parser/parser.go ``ParseFile``,
``Command.String``, ``quote``/``unquote``; docs/modelfile.mdx).

The grammar, as Ollama's parser actually reads it:

- A line is blank, a comment (its first non-blank character is ``#``), or ``INSTRUCTION value``.
  Instructions are case-insensitive and followed by a space or tab. Comments only start lines:
  ``FROM llama3 # note`` has the value ``llama3 # note``.
- ``PARAMETER name value`` (name: ASCII letters, digits, ``_``); ``MESSAGE role content`` with role
  ``system``, ``user`` or ``assistant`` -- lowercase only, Ollama compares roles exactly.
- A value is bare (the rest of the line, whitespace trimmed), ``"quoted"`` or ``\"\"\"quoted\"\"\"``.
  A quoted value ends at the first line break where the text so far, trimmed, ends with its
  closing quote(s); before that, line breaks belong to the value. There are no escapes (``\\n``
  is two characters), so ``"a"b"`` reads ``a"b``, ``"..."`` may span lines as well, and a value
  with ``\"\"\"`` at the end of one of its lines cannot be written at all.
- ``FROM`` is required. Repeated TEMPLATE/SYSTEM: the last wins (``CreateRequest``). Repeated
  FROM: Ollama merges the files (``ollama show`` writes a vision projector as a second FROM), so
  the first goes to ``from_`` and later ones to ``extra`` as ``("from", value)``.

Where oficina differs from Ollama, on purpose:

- Ollama drops every rune that ``strconv.IsPrint`` rejects (a side effect of using rune 0 as "write
  nothing"): zero-width joiners inside emoji, no-break spaces, control characters. We keep them.
- Ollama counts ``\\r\\n`` as two lines and reports errors found at a line break on the next
  line; we name the line itself.
- More than one blank after PARAMETER or MESSAGE is accepted (Ollama then reads an empty name).
- Ollama's ``quote()`` writes values such as ``"hi"`` or a leading tab bare, and they read back
  differently; ``Modelfile.to_text`` quotes whenever needed, so ``parse(m.to_text()) == m``.
- An empty ``FROM ""`` is an error here; invalid UTF-8 is an error, not U+FFFD.
- Guards (``oficina/safety``) are ``PARAMETER guard NAME`` lines, repeatable like ``stop``
  (``PARAMETER guard pii``, ``PARAMETER guard rules=/abs/path.rules``): a parameter rather than a
  new instruction, because a guard is a per-request setting like ``stop`` -- the same name is then
  a CLI flag (``--guard``), an API option and a server request option, and ``show --modelfile``
  writes it back with the other parameters. Ollama itself rejects the unknown parameter.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from .errors import ModelfileError
from .formats.untrusted import read_bytes

MAX_BYTES = 16 * 1024 * 1024  # Modelfiles come from strangers; real ones are a few KiB

INSTRUCTIONS = ("FROM", "PARAMETER", "TEMPLATE", "SYSTEM", "ADAPTER", "MESSAGE", "LICENSE",
                "REQUIRES", "RENDERER", "PARSER", "DRAFT")
EXTRA = ("from", "requires", "renderer", "parser", "draft")  # kept verbatim in Modelfile.extra
ROLES = ("system", "user", "assistant")

_EOL = re.compile(r"\r\n|\r|\n")  # Ollama's isNewline: \r or \n
_WORD = re.compile(r"[ \t]*(\S*)([^\S\r\n]*)")  # a word, then the blanks after it on this line
_PARAM_NAME = re.compile(r"[A-Za-z0-9_]+")  # Ollama's stateParameter: isAlpha, isNumber, '_'
# A quoted value closes at its quote(s) followed only by blanks up to a line break or the end.
_CLOSE = {q: re.compile(q + r"[^\S\r\n]*(?:\r\n|\r|\n|\Z)") for q in ('"', '"""')}
# Text that """...""" cannot hold: """ then blanks then a line break would close it early.
_UNWRITABLE = re.compile(r'"""[^\S\r\n]*[\r\n]')


@dataclass
class Modelfile:
    from_: str | None = None
    parameters: list[tuple[str, str]] = field(default_factory=list)  # raw (name, value), in order
    template: str | None = None
    system: str | None = None
    adapters: list[str] = field(default_factory=list)
    messages: list[tuple[str, str]] = field(default_factory=list)  # (role, content)
    license: list[str] = field(default_factory=list)
    extra: list[tuple[str, str]] = field(default_factory=list)  # (one of EXTRA, value)
    # instruction -> the line of each of its values, in order (for errors found after parsing:
    # a PARAMETER value, a TEMPLATE that does not translate, an ADAPTER that is not one)
    lines: dict[str, list[int]] = field(default_factory=dict, compare=False, repr=False)

    def line_of(self, cmd: str, index: int = -1) -> int:
        """The line of the ``index``-th ``cmd`` value (0 when the Modelfile was not parsed)."""
        found = self.lines.get(cmd.upper(), [])
        return found[index] if -len(found) <= index < len(found) else 0

    def to_text(self) -> str:
        """The Modelfile as text, in Ollama's order (``Model.String`` in server/images.go)."""
        if not self.from_:
            raise _error("no FROM line: set from_ before writing")
        lines = [f"FROM {_quote(self.from_, 'FROM')}"]
        lines += [f"ADAPTER {_quote(a, 'ADAPTER')}" for a in self.adapters]
        for cmd, value in self.extra:
            if cmd not in EXTRA:
                raise _error(f"cannot write extra instruction {cmd!r}; valid: {', '.join(EXTRA)}")
            lines.append(f"{cmd.upper()} {_quote(value, cmd.upper())}")
        if self.template is not None:
            lines.append(f"TEMPLATE {_quote(self.template, 'TEMPLATE')}")
        if self.system is not None:
            lines.append(f"SYSTEM {_quote(self.system, 'SYSTEM')}")
        for name, value in self.parameters:
            if not _PARAM_NAME.fullmatch(name):
                raise _error(f"cannot write parameter name {name!r}: use letters, digits and _")
            lines.append(f"PARAMETER {name} {_quote(value, name)}")
        lines += [f"LICENSE {_quote(text, 'LICENSE')}" for text in self.license]
        for role, content in self.messages:
            if role not in ROLES:
                raise _error(f"cannot write MESSAGE role {role!r}; valid: {', '.join(ROLES)}")
            lines.append(f"MESSAGE {role} {_quote(content, 'MESSAGE')}")
        return "\n".join(lines) + "\n"


def parse(text: str) -> Modelfile:
    """Read a Modelfile; a problem raises ModelfileError naming its 1-based line."""
    m = Modelfile()
    text = text.removeprefix("\ufeff")  # Ollama's decoder drops a byte-order mark
    pos, line, n = 0, 1, len(text)
    while pos < n:
        eol = _EOL.search(text, pos)
        end, nxt = (eol.start(), eol.end()) if eol else (n, n)
        head = _WORD.match(text, pos, end)
        word, blank = head.groups()
        if not word or word.startswith("#"):
            pos, line = nxt, line + 1
            continue
        cmd = word.upper()
        if cmd not in INSTRUCTIONS:
            raise ModelfileError(line, f'unknown instruction "{word[:40]}"; valid: {", ".join(INSTRUCTIONS)}')
        what = {"PARAMETER": "a name and a value", "MESSAGE": "a role and content"}
        if not blank:
            raise ModelfileError(line, f"{cmd} needs {what.get(cmd, 'a value')}")
        start, key = head.end(), ""
        if cmd in ("PARAMETER", "MESSAGE"):
            arg = _WORD.match(text, start, end)
            key, blank = arg.groups()
            if not key:
                raise ModelfileError(line, f"{cmd} needs {what[cmd]}")
            if cmd == "PARAMETER" and not _PARAM_NAME.fullmatch(key):
                raise ModelfileError(line, f'invalid parameter name "{key[:40]}": use letters, digits and _')
            if cmd == "MESSAGE" and key not in ROLES:
                raise ModelfileError(line, f'MESSAGE role must be one of {", ".join(ROLES)}, not "{key[:40]}"')
            if not blank:
                raise ModelfileError(line, f"{cmd} {key} has no {what[cmd].split()[-1]}")
            start = arg.end()
        value, after = _read_value(text, start, end, nxt, line)
        _apply(m, cmd, key, value, line)
        line += len(_EOL.findall(text, pos, after))
        pos = after
    if m.from_ is None:
        raise _error("no FROM line (add FROM <model name or path>)")
    return m


def parse_file(path: str | os.PathLike) -> Modelfile:
    """Read a Modelfile from disk: UTF-8, or UTF-16 with a byte-order mark (as Ollama does)."""
    return parse(_decode(read_bytes(os.fspath(path), MAX_BYTES, "Modelfile", _error)))


def _read_value(text: str, start: int, end: int, nxt: int, line: int) -> tuple[str, int]:
    """The value at ``text[start:]`` and where the next line begins. ``end``/``nxt``: the end of
    this line and the start of the next (Ollama's stateValue plus ``unquote``)."""
    if not text.startswith('"', start):
        return text[start:end].strip(), nxt
    q = '"""' if text.startswith('"""', start) else '"'
    close = _CLOSE[q].search(text, start + len(q))
    if close is None:
        raise ModelfileError(line, f"unterminated {q} starting on this line "
                                   f"(a closing {q} must end its line)")
    return text[start + len(q):close.start()], close.end()


def _apply(m: Modelfile, cmd: str, key: str, value: str, line: int) -> None:
    m.lines.setdefault(cmd, []).append(line)
    if cmd == "FROM":
        if not value:
            raise ModelfileError(line, "FROM needs a model name or path")
        if m.from_ is None:
            m.from_ = value
        else:
            m.extra.append(("from", value))
    elif cmd == "PARAMETER":
        m.parameters.append((key, value))
    elif cmd == "MESSAGE":
        m.messages.append((key, value))
    elif cmd == "TEMPLATE":
        m.template = value
    elif cmd == "SYSTEM":
        m.system = value
    elif cmd == "ADAPTER":
        m.adapters.append(value)
    elif cmd == "LICENSE":
        m.license.append(value)
    else:
        m.extra.append((cmd.lower(), value))


def _quote(value: str, what: str) -> str:
    """Write ``value`` so that it reads back unchanged: bare when it can be, ``\"\"\"`` for text
    with line breaks or quotes (like Ollama's ``quote()``), ``"`` for blanks at the edges."""
    multiline = "\r" in value or "\n" in value
    if value and value == value.strip() and not multiline and not value.startswith('"'):
        return value
    if not multiline and '"' not in value:
        return f'"{value}"'
    if _UNWRITABLE.search(value):
        raise _error(f'cannot write {what}: its text has """ at the end of a line, '
                     "which Modelfile quoting cannot express")
    return f'"""{value}"""'


def _decode(data: bytes) -> str:
    # Ollama: unicode.BOMOverride(unicode.UTF8.NewDecoder()) -- UTF-16 only with a byte-order mark.
    encoding = "utf-8"
    for bom, codec in ((b"\xef\xbb\xbf", "utf-8"), (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be")):
        if data.startswith(bom):
            data, encoding = data[len(bom):], codec
            break
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        line = len(_EOL.findall(data[:e.start].decode(encoding, "replace"))) + 1
        raise ModelfileError(line, f"not valid {encoding.upper()} text ({e.reason})") from None


def _error(message: str) -> ModelfileError:
    """A ModelfileError about the whole file, with no line to name: reads "Modelfile: ..."."""
    err = ModelfileError(0, message)
    err.args = (f"Modelfile: {message}",)
    return err
