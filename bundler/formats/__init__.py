"""Document parsers, one per format, registered by format name and file suffix (names.py).

A parser takes the file's bytes and a `warn(message)` callback and returns Blocks, or raises
SkipFile with the reason. Parsers never see paths: the caller names the file in messages.
"""
from __future__ import annotations

from typing import Callable

from bundler.formats.blocks import Block, SkipFile
from bundler.formats.docx import parse_docx
from bundler.formats.html import parse_html
from bundler.formats.man_page import parse_man
from bundler.formats.names import SUFFIXES, suffix_of
from bundler.formats.pdf import parse_pdf
from bundler.formats.plain_text import parse_markdown, parse_underlined

Parser = Callable[[bytes, Callable[[str], None]], list[Block]]

FORMATS: dict[str, Parser] = {
    "text": parse_underlined,
    "markdown": parse_markdown,
    "html": parse_html,
    "pdf": parse_pdf,
    "docx": parse_docx,
    "man": parse_man,
}
PARSERS: dict[str, Parser] = {suffix: FORMATS[name] for suffix, name in SUFFIXES.items()}

# Bump when any parser's output changes, so cached parses are not reused.
PARSER_VERSION = 4


def parser_for(name: str) -> Parser | None:
    return PARSERS.get(suffix_of(name))


__all__ = ["Block", "SkipFile", "FORMATS", "PARSERS", "PARSER_VERSION", "parser_for", "suffix_of"]
