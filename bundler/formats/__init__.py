"""Document parsers, one per format, registered by file suffix.

A parser takes the file's bytes and a `warn(message)` callback and returns Blocks, or raises
SkipFile with the reason. Parsers never see paths: the caller names the file in messages.
"""
from __future__ import annotations

from typing import Callable

from bundler.formats.blocks import Block, SkipFile
from bundler.formats.docx import parse_docx
from bundler.formats.html import parse_html
from bundler.formats.man_page import parse_man
from bundler.formats.pdf import parse_pdf
from bundler.formats.plain_text import parse_markdown, parse_underlined

Parser = Callable[[bytes, Callable[[str], None]], list[Block]]

PARSERS: dict[str, Parser] = {
    ".txt": parse_underlined,
    ".text": parse_underlined,
    ".md": parse_markdown,
    ".markdown": parse_markdown,
    ".rst": parse_underlined,
    ".html": parse_html,
    ".htm": parse_html,
    ".pdf": parse_pdf,
    ".docx": parse_docx,
    **{f".{section}": parse_man for section in range(1, 10)},
}

# Bump when any parser's output changes, so cached parses are not reused.
PARSER_VERSION = 3


def parser_for(name: str) -> Parser | None:
    return PARSERS.get(suffix_of(name))


def suffix_of(name: str) -> str:
    lower = name.lower()
    if lower.endswith(".gz"):
        lower = lower[:-3]
    dot = lower.rfind(".")
    return lower[dot:] if dot > 0 else ""


__all__ = ["Block", "SkipFile", "PARSERS", "PARSER_VERSION", "parser_for", "suffix_of"]
