"""Man pages (troff source with the man macros, .1 to .9, gzipped or not).

.TH names the page, .SH/.SS open sections; paragraph macros break blocks; font macros
keep their text; other requests are layout only. Spans point at lines of the troff source.
"""
from __future__ import annotations

import re
import shlex

from bundler.formats.blocks import Block, BlockWriter, SkipFile
from bundler.formats.text_decoding import decode_text, numbered_lines

_BREAKS = {"PP", "LP", "P", "TP", "IP", "HP", "sp", "RS", "RE", "TQ", "EX", "EE", "nf", "fi", "br", "in"}
_FONT_MACROS = {"B", "I", "BR", "RB", "BI", "IB", "IR", "RI", "SM", "SB", "UR", "MT", "OP"}
_NAMED = {"em": "—", "en": "–", "bu": "•", "co": "©", "rg": "®", "lq": "“", "rq": "”", "aq": "'", "dq": '"',
          "oq": "‘", "cq": "’", "hy": "-", "mi": "-", "pl": "+", "mu": "×", "di": "÷", "<=": "≤", ">=": "≥", "->": "→"}
_ESCAPES = re.compile(r"\\(f(\[[^\]]*\]|\(..|.)|s[+-]?\d+|\*(\(..|\[[^\]]*\]|.)|\((..)|\[([^\]]*)\]|.)")


def _unescape(text: str) -> str:
    def replace(match: re.Match) -> str:
        whole = match.group(1)
        if whole[0] in "fs*":
            return ""
        name = match.group(4) or match.group(5)
        if name is not None:
            return _NAMED.get(name, "")
        return {"-": "-", "e": "\\", "\\": "\\", " ": " ", "~": " ", "0": " ", "'": "'", "`": "`", ".": "."}.get(whole, "")
    return _ESCAPES.sub(replace, text)


def _arguments(rest: str) -> list[str]:
    try:
        return shlex.split(rest)
    except ValueError:
        return rest.split()


def parse_man(data: bytes, warn) -> list[Block]:
    writer = BlockWriter()
    pending_heading = 0  # .SH/.SS with the title on the next line
    lines = list(numbered_lines(decode_text(data, warn)))
    requests = [line for _, _, line in lines if line.strip() and not line.startswith(('.\\"', "'\\\""))]
    if len(requests) == 1 and requests[0].startswith(".so "):
        # an alias page (`creat.2` holding `.so man2/open.2`): its text is the other page's
        raise SkipFile(f"man page alias of {requests[0][4:].strip()} (.so)")
    for number, offset, line in lines:
        end = offset + len(line)
        if line.startswith(('.\\"', "'\\\"", '.\\#')) or line in (".", "'"):
            continue
        if line[:1] in (".", "'"):
            request, _, rest = line[1:].strip().partition(" ")
            args = _arguments(rest)
            if request == "TH" and args:
                section = f"({args[1]})" if len(args) > 1 else ""
                writer.heading(1, f"{args[0]}{section}", number, number, offset, end)
            elif request in ("SH", "SS"):
                level = 2 if request == "SH" else 3
                if args:
                    writer.heading(level, _unescape(" ".join(args)), number, number, offset, end)
                else:
                    pending_heading = level
            elif request in _FONT_MACROS:
                # .B/.I set their words in one font; .BR and kin alternate fonts with no space between
                joiner = " " if request in ("B", "I", "SM", "SB", "OP") else ""
                writer.text(_unescape(joiner.join(args)), number, offset, end)
            elif request in _BREAKS:
                writer.end_paragraph()
                if request == "IP" and args:
                    writer.text(_unescape(args[0]), number, offset, end)
            continue
        if pending_heading:
            writer.heading(pending_heading, _unescape(line), number, number, offset, end)
            pending_heading = 0
        elif line.strip():
            writer.text(_unescape(line), number, offset, end)
        else:
            writer.end_paragraph()
    writer.end_paragraph()
    return writer.blocks
