"""Documents from outside -> plain text with its structure: pages (PDF), sections (Markdown and
HTML headings) and character offsets into the extracted text, so a chunk can say where it came
from. One reader per file type, registered in ``READERS``.

Files are untrusted: every way one can be bad (empty, invalid UTF-8, encrypted or image-only
PDF, too big, unreadable) raises ``DocumentError`` with the reason, and the caller skips that
file with one line. HTML keeps the main text only (scripts, styles, menus, headers and footers
dropped, ``<main>``/``<article>`` preferred when present) through BeautifulSoup; PDF text comes
from pypdf.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import FormatError

MAX_BYTES = 50_000_000  # per file; `rag ingest --max-file-mb` changes it


class DocumentError(FormatError):
    """This file cannot be read as a document; the message is the reason."""


@dataclass
class Section:
    start: int  # offset of this section's text in Document.text
    end: int
    title: str | None = None  # the heading it sits under (Markdown/HTML)
    page: int | None = None  # 1-based page (PDF)


@dataclass
class Document:
    source: str  # the file, or file#line for .jsonl records
    kind: str  # "txt", "md", "html", "pdf", "jsonl"
    text: str
    sections: list[Section]
    metadata: dict[str, Any] = field(default_factory=dict)
    title: str | None = None


def _decode(data: bytes, path: Path) -> str:
    if not data.strip():
        raise DocumentError("empty file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DocumentError(f"not valid UTF-8 (byte {e.start})") from None


def _whole(path: Path, data: bytes, kind: str) -> list[Document]:
    text = _decode(data, path)
    return [Document(str(path), kind, text, [Section(0, len(text))])]


_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$", re.MULTILINE)


def read_markdown(path: Path, data: bytes) -> list[Document]:
    """Sections start at ATX headings (``# Title``); the text is kept as written."""
    text = _decode(data, path)
    marks = [(m.start(), m.group(2).strip()) for m in _HEADING.finditer(text)]
    bounds = ([(0, None)] if not marks or marks[0][0] > 0 else []) + marks
    sections = []
    for i, (start, title) in enumerate(bounds):
        end = bounds[i + 1][0] if i + 1 < len(bounds) else len(text)
        if text[start:end].strip():
            sections.append(Section(start, end, title))
    title = marks[0][1] if marks else None
    return [Document(str(path), "md", text, sections, title=title)]


_DROP = ("script", "style", "noscript", "nav", "header", "footer", "aside", "form", "template",
         "svg", "iframe", "button")
_BLOCKS = ("h1", "h2", "h3", "h4", "h5", "h6", "p", "li", "tr", "pre", "blockquote", "dt", "dd",
           "figcaption", "caption")


def read_html(path: Path, data: bytes) -> list[Document]:
    """Main text of a page: block elements in order, table rows as ``cell | cell``, headings
    open sections."""
    import warnings

    from bs4 import BeautifulSoup

    text = _decode(data, path)
    with warnings.catch_warnings():  # bs4 warns on text that looks like a URL or a file name
        warnings.simplefilter("ignore")
        soup = BeautifulSoup(text, "html.parser")
    for tag in soup.find_all(_DROP):
        tag.decompose()
    for tag in soup.find_all(attrs={"role": ("navigation", "banner", "contentinfo")}):
        tag.decompose()
    root = soup.find("main") or soup.find("article") or soup.body or soup
    page_title = soup.title.get_text(" ", strip=True) if soup.title else None
    out: list[str] = []
    sections: list[Section] = []
    pos = 0
    current: Section | None = None
    for el in root.find_all(_BLOCKS):
        if el.find_parent(_BLOCKS) is not None and el.name not in ("tr",):
            continue  # nested block: its text is in the parent's
        if el.name == "tr":
            line = " | ".join(c.get_text(" ", strip=True) for c in el.find_all(("th", "td")))
        else:
            line = el.get_text(" ", strip=True)
        if not line:
            continue
        if el.name in ("h1", "h2", "h3", "h4", "h5", "h6") or current is None:
            if current is not None:
                current.end = pos
            current = Section(pos, pos, line if el.name.startswith("h") else None)
            sections.append(current)
        out.append(line)
        pos += len(line) + 1
    if current is not None:
        current.end = pos
    body = "\n".join(out) + ("\n" if out else "")
    if not body.strip():
        raise DocumentError("no text in the page")
    h1 = root.find("h1")
    return [Document(str(path), "html", body, [s for s in sections if s.end > s.start],
                     title=page_title or (h1.get_text(" ", strip=True) if h1 else None))]


def read_pdf(path: Path, data: bytes) -> list[Document]:
    """One section per page with text; encrypted files that open with an empty password are
    read, others skipped; a PDF with no text layer at all (scanned images) is skipped."""
    import io

    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # its warnings are not the user's business
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            try:
                if not reader.decrypt(""):
                    raise DocumentError("encrypted PDF (needs a password)")
            except DocumentError:
                raise
            except (PdfReadError, NotImplementedError, ValueError, ImportError) as e:
                # pypdf raises DependencyError (an ImportError) for AES without `cryptography`
                raise DocumentError(f"encrypted PDF (cannot decrypt: {type(e).__name__})") from None
        pages = [p.extract_text() or "" for p in reader.pages]
    except DocumentError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, IndexError,
            RecursionError, OSError) as e:
        raise DocumentError(f"unreadable PDF ({type(e).__name__}: {str(e)[:80]})") from None
    if not any(p.strip() for p in pages):
        raise DocumentError(f"no text layer in {len(pages)} page(s) (image-only PDF?)")
    text, sections = "", []
    for n, page in enumerate(pages, 1):
        if page.strip():
            sections.append(Section(len(text), len(text) + len(page), None, n))
            text += page + "\n"
    meta = reader.metadata
    title = str(meta.title) if meta is not None and meta.title else None
    return [Document(str(path), "pdf", text, sections, {"pages": len(pages)}, title=title)]


def read_jsonl(path: Path, data: bytes) -> list[Document]:
    """One document per line: ``{"text": ..., other keys become metadata}``."""
    text = _decode(data, path)
    docs = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as e:
            raise DocumentError(f"line {n}: not JSON ({e.msg})") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
            raise DocumentError(f'line {n}: expected an object with a "text" string')
        body = rec.pop("text")
        if body.strip():
            docs.append(Document(f"{path}#{n}", "jsonl", body, [Section(0, len(body))], rec,
                                 title=rec.get("title") if isinstance(rec.get("title"), str) else None))
    if not docs:
        raise DocumentError("no records with text")
    return docs


# suffix -> reader(path, bytes) -> documents
READERS: dict[str, Callable[[Path, bytes], list[Document]]] = {
    ".txt": lambda p, d: _whole(p, d, "txt"),
    ".md": read_markdown,
    ".markdown": read_markdown,
    ".html": read_html,
    ".htm": read_html,
    ".pdf": read_pdf,
    ".jsonl": read_jsonl,
}


def read_document(path: Path, data: bytes | None = None, max_bytes: int = MAX_BYTES) -> list[Document]:
    """Documents in one file (a .jsonl file holds several)."""
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise DocumentError(f"unsupported file type {path.suffix or '(none)'}")
    if data is None:
        size = path.stat().st_size
        if size > max_bytes:
            raise DocumentError(f"{size / 1e6:.1f} MB is over the {max_bytes / 1e6:.0f} MB limit per file")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise DocumentError(f"cannot read ({e.strerror})") from None
    return reader(path, data)
