"""PDF through pypdf: text per page, paragraphs within a page; spans carry the page number."""
from __future__ import annotations

import io
import logging

from pypdf import PdfReader
from pypdf.errors import PdfReadError

from bundler.formats.blocks import Block, BlockWriter, SkipFile
from bundler.formats.text_decoding import numbered_lines


class _ForwardWarnings(logging.Handler):
    """pypdf reports recoverable damage through logging; it belongs in the build's warnings."""

    def __init__(self, warn):
        super().__init__(logging.WARNING)
        self.warn = warn
        self.seen: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message not in self.seen:
            self.seen.add(message)
            self.warn(f"PDF: {message}")


def parse_pdf(data: bytes, warn) -> list[Block]:
    if not data.lstrip().startswith(b"%PDF"):
        raise SkipFile("not a PDF file (no %PDF header)")
    logger = logging.getLogger("pypdf")
    handler = _ForwardWarnings(warn)
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False
    try:
        return _parse(data)
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _parse(data: bytes) -> list[Block]:
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise SkipFile("encrypted PDF (needs a password)")
        pages = [page.extract_text() or "" for page in reader.pages]
    except SkipFile:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SkipFile(f"corrupt PDF ({type(exc).__name__}: {exc})") from None
    except Exception as exc:
        # pypdf reports some encryption and damage cases with other types
        raise SkipFile(f"unreadable PDF ({type(exc).__name__}: {exc})") from None
    if not any(page.strip() for page in pages):
        raise SkipFile("no extractable text (a scanned PDF needs OCR first)")
    blocks: list[Block] = []
    for number, text in enumerate(pages, start=1):
        writer = BlockWriter(page=number)
        for line_number, offset, line in numbered_lines(text):
            if line.strip():
                writer.text(line, line_number, offset, offset + len(line))
            else:
                writer.end_paragraph()
        writer.end_paragraph()
        blocks.extend(writer.blocks)
    return blocks
