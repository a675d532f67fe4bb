"""Word .docx through python-docx: one paragraph (or table row) per line, "Heading N" styles as headings.

Line numbers count the document's paragraphs and table rows in order, 1-based; character
offsets point into those lines joined by newlines. The archive is checked before parsing, since a
.docx is a zip file and may be a zip bomb.
"""
from __future__ import annotations

import io
import re
import zipfile

import docx
from docx.table import Table
from docx.text.paragraph import Paragraph

from bundler.formats.blocks import Block, BlockWriter, SkipFile

MAX_UNCOMPRESSED_BYTES = 256 * 1024 * 1024
MAX_COMPRESSION_RATIO = 200
_HEADING_STYLE = re.compile(r"^heading (\d)$", re.IGNORECASE)


def check_archive(data: bytes) -> None:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise SkipFile("not a .docx (not a zip archive)") from None
    with archive:
        members = archive.infolist()
        total = sum(m.file_size for m in members)
        packed = sum(m.compress_size for m in members)
        if total > MAX_UNCOMPRESSED_BYTES or (total > 1024 * 1024 and total > MAX_COMPRESSION_RATIO * max(packed, 1)):
            raise SkipFile(f"zip bomb suspected ({total} bytes uncompressed from {packed})")
        if "word/document.xml" not in archive.namelist():
            raise SkipFile("not a .docx (zip archive without word/document.xml)")


def _lines(document) -> list[tuple[str, int]]:
    """(text, heading level or 0) for each paragraph and table row, in document order."""
    out = []
    for item in document.iter_inner_content():
        if isinstance(item, Paragraph):
            style = item.style.name if item.style is not None else ""
            match = _HEADING_STYLE.match(style)
            level = int(match.group(1)) if match else (1 if style.lower() == "title" else 0)
            out.append((item.text, level))
        elif isinstance(item, Table):
            for row in item.rows:
                out.append((" | ".join(cell.text.replace("\n", " ") for cell in row.cells), 0))
    return out


def parse_docx(data: bytes, warn) -> list[Block]:
    check_archive(data)
    try:
        document = docx.Document(io.BytesIO(data))
    except Exception as exc:  # python-docx raises assorted types for damaged parts
        raise SkipFile(f"corrupt .docx ({type(exc).__name__}: {exc})") from None
    writer = BlockWriter()
    offset = 0
    for number, (text, level) in enumerate(_lines(document), start=1):
        end = offset + len(text)
        if level and text.strip():
            writer.heading(level, text, number, number, offset, end)
        elif text.strip():
            # each Word paragraph is a paragraph: a block of its own
            writer.text(text, number, offset, end)
            writer.end_paragraph()
        offset = end + 1
    writer.end_paragraph()
    return writer.blocks
