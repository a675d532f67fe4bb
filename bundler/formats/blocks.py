"""The structure every document parser returns: text blocks with their source spans."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


class SkipFile(Exception):
    """This file cannot be indexed; the message is the reason shown to the user."""


@dataclass
class Block:
    """A structural unit (heading, paragraph, list item, page paragraph) of one document."""

    text: str
    line_start: int
    line_end: int
    char_start: int
    char_end: int
    heading: str = ""
    page: Optional[int] = None
    is_heading: bool = False  # the heading's own text (markup included), the first block of its section


class BlockWriter:
    """Collects text pieces into blocks, tracking the heading path and the span they came from."""

    def __init__(self, page: Optional[int] = None):
        self.page = page
        self.blocks: list[Block] = []
        self._headings: list[str] = []
        self._parts: list[str] = []
        self._span: list[int] = []  # line_start, line_end, char_start, char_end

    @property
    def in_paragraph(self) -> bool:
        return bool(self._parts)

    @property
    def heading_path(self) -> str:
        return " > ".join(h for h in self._headings if h)

    def heading(
        self, level: int, title: str, line_start: int, line_end: int, char_start: int, char_end: int, source_text: str = ""
    ) -> None:
        """A heading opens a new section; its source text (markup included) is the section's first block."""
        self.end_paragraph()
        del self._headings[level - 1 :]
        self._headings.extend([""] * (level - 1 - len(self._headings)))
        self._headings.append(title.strip())
        self.text(source_text or title, line_start, char_start, char_end, line_end)
        self.end_paragraph(is_heading=True)

    def text(self, text: str, line: int, char_start: int, char_end: int, line_end: Optional[int] = None) -> None:
        if not text.strip():
            return
        if not self._parts:
            self._span = [line, line_end or line, char_start, char_end]
        else:
            self._span[1] = max(self._span[1], line_end or line)
            self._span[3] = max(self._span[3], char_end)
        self._parts.append(text)

    def end_paragraph(self, is_heading: bool = False) -> None:
        if self._parts:
            # Parts are joined as they came, so for line-based formats the block text is exactly
            # the source text between char_start and char_end.
            text = "\n".join(self._parts)
            start, end, cstart, cend = self._span
            self.blocks.append(Block(text, start, end, cstart, cend, self.heading_path, self.page, is_heading))
        self._parts = []
