"""Text bound for a terminal: control characters shown, never obeyed.

Document text, file names, model names and model output come from outside; an escape sequence
in any of them could retitle the terminal, clear it, move the cursor or hide what follows. Every
control character but newline and tab, and the bidirectional overrides that reorder what is shown,
is printed as its escape (`\\x1b`, `\\u202e`). JSON output needs none of this: it escapes them itself.
"""
from __future__ import annotations

import re

# C0 controls but tab and newline, DEL, C1 controls (0x9b is an 8-bit CSI), bidirectional overrides.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def visible(text: str) -> str:
    """`text` with every control character but newline and tab written out as an escape."""
    return _UNSAFE.sub(_escape, text)


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
