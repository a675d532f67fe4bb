"""HTML: block elements become blocks, h1-h6 headings; script, style and <head> are dropped.

Spans point into the HTML source (line numbers and character offsets of the text's tags).
"""
from __future__ import annotations

import re
from html.parser import HTMLParser

from bundler.formats.blocks import Block, BlockWriter
from bundler.formats.text_decoding import decode_text

_BLOCKS = {
    "p", "div", "li", "dt", "dd", "pre", "blockquote", "td", "th", "tr", "table", "ul", "ol", "dl",
    "section", "article", "header", "footer", "nav", "aside", "main", "figure", "figcaption", "form",
    "br", "hr", "body", "caption", "details", "summary", "address",
}
_HEADINGS = {f"h{n}": n for n in range(1, 7)}
_HIDDEN = {"script", "style", "head", "noscript", "template", "svg"}
_SPACES = re.compile(r"\s+")


class _BlockParser(HTMLParser):
    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.writer = BlockWriter()
        self._line_offsets = [0]
        for line in text.split("\n"):
            self._line_offsets.append(self._line_offsets[-1] + len(line) + 1)
        self._hidden = 0
        self._pre = 0
        self._heading = 0
        self._pieces: list[str] = []
        self._start: tuple[int, int] | None = None  # line, char offset of the first piece
        self._end: tuple[int, int] = (0, 0)

    def _offset(self) -> tuple[int, int]:
        line, column = self.getpos()
        return line, self._line_offsets[line - 1] + column

    def handle_starttag(self, tag, attrs):
        if tag in _HIDDEN:
            self._hidden += 1
        elif tag in _BLOCKS or tag in _HEADINGS:
            self._flush()
            if tag == "pre":
                self._pre += 1
            if tag in _HEADINGS:
                self._heading = _HEADINGS[tag]

    def handle_endtag(self, tag):
        if tag in _HIDDEN:
            self._hidden = max(0, self._hidden - 1)
        elif tag in _BLOCKS or tag in _HEADINGS:
            self._flush()
            if tag == "pre":
                self._pre = max(0, self._pre - 1)
            if tag in _HEADINGS:
                self._heading = 0

    def handle_data(self, data):
        if self._hidden or not data:
            return
        line, offset = self._offset()
        if self._start is None:
            if not data.strip():
                return
            self._start = (line, offset)
        self._end = (line + data.count("\n"), offset + len(data))
        self._pieces.append(data)

    def _flush(self):
        if self._start is not None:
            text = "".join(self._pieces)
            text = text.strip("\n") if self._pre else _SPACES.sub(" ", text).strip()
            (line, start), (line_end, end) = self._start, self._end
            if self._heading:
                self.writer.heading(self._heading, text, line, line_end, start, end)
            else:
                self.writer.text(text, line, start, end, line_end)
                self.writer.end_paragraph()
        self._pieces, self._start = [], None

    def close(self):
        super().close()
        self._flush()


def parse_html(data: bytes, warn) -> list[Block]:
    text = decode_text(data, warn, max_line_chars=None)
    parser = _BlockParser(text)
    parser.feed(text)
    parser.close()
    return parser.writer.blocks
