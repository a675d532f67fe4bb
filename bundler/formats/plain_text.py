"""Plain text, Markdown and reStructuredText: paragraphs split by blank lines, headings by markup."""
from __future__ import annotations

import re

from bundler.formats.blocks import Block, BlockWriter
from bundler.formats.text_decoding import decode_text, numbered_lines

_ATX = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)\s*$")
_RST_UNDERLINE = re.compile(r"^([=\-~^\"'`*+#:.])\1{2,}\s*$")


def parse_markdown(data: bytes, warn) -> list[Block]:
    """ATX (`## Title`) and setext (`Title` over `===`/`---`) headings; fenced code kept whole."""
    lines = list(numbered_lines(decode_text(data, warn)))
    writer = BlockWriter()
    fence = None
    index = 0
    while index < len(lines):
        number, offset, line = lines[index]
        end = offset + len(line)
        below = lines[index + 1][2] if index + 1 < len(lines) else ""
        index += 1
        opener = _FENCE.match(line)
        if fence is not None:
            writer.text(line, number, offset, end)
            if opener and opener.group(1) == fence:
                fence = None
            continue
        if opener:
            fence = opener.group(1)
            writer.end_paragraph()
            writer.text(line, number, offset, end)
            continue
        heading = _ATX.match(line)
        setext = _SETEXT.match(below) if line.strip() and not writer.in_paragraph else None
        if heading:
            writer.heading(len(heading.group(1)), heading.group(2), number, number, offset, end, line)
        elif setext:
            underline = lines[index]
            writer.heading(1 if setext.group(1)[0] == "=" else 2, line, number, underline[0], offset,
                           underline[1] + len(underline[2]), f"{line}\n{underline[2]}")
            index += 1
        elif line.strip():
            writer.text(line, number, offset, end)
        else:
            writer.end_paragraph()
    writer.end_paragraph()
    return writer.blocks


def parse_underlined(data: bytes, warn) -> list[Block]:
    """reStructuredText, and plain text, which uses the same convention for titles: a line
    underlined (optionally overlined) by a punctuation run at least as long. Levels follow the
    order in which underline styles first appear, as docutils assigns them."""
    lines = list(numbered_lines(decode_text(data, warn)))
    styles: list[tuple[str, bool]] = []
    writer = BlockWriter()
    index = 0
    while index < len(lines):
        number, offset, line = lines[index]
        below = lines[index + 1][2] if index + 1 < len(lines) else ""
        overline = _RST_UNDERLINE.match(line)
        if overline and index + 2 < len(lines) and lines[index + 2][2] == line and lines[index + 1][2].strip():
            title = lines[index + 1][2]
            style = (line[0], True)
            last = lines[index + 2]
            index += 3
        elif line.strip() and not _RST_UNDERLINE.match(line) and _RST_UNDERLINE.match(below) and len(below.rstrip()) >= len(line.rstrip()):
            title = line
            style = (below[0], False)
            last = lines[index + 1]
            index += 2
        else:
            if line.strip():
                writer.text(line, number, offset, offset + len(line))
            else:
                writer.end_paragraph()
            index += 1
            continue
        if style not in styles:
            styles.append(style)
        source_text = "\n".join(entry[2] for entry in lines[index - (3 if style[1] else 2) : index])
        writer.heading(styles.index(style) + 1, title, number, last[0], offset, last[1] + len(last[2]), source_text)
    writer.end_paragraph()
    return writer.blocks
