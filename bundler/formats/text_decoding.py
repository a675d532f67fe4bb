"""Turning bytes that claim to be text into str, or refusing them with a reason."""
from __future__ import annotations

from bundler.formats.blocks import SkipFile

# A text file with a longer line is almost certainly generated or binary-like, not a manual.
MAX_LINE_CHARS = 100_000
_CONTROL = bytes(c for c in range(32) if c not in (9, 10, 12, 13))


def decode_text(data: bytes, warn, max_line_chars: int | None = MAX_LINE_CHARS) -> str:
    """UTF-8 text (BOM dropped); invalid bytes replaced with a warning; binary data refused.

    Markup formats pass max_line_chars=None: minified HTML is one long line and still fine."""
    if not data.strip():
        raise SkipFile("empty file")
    sample = data[:65536]
    if b"\x00" in sample or sum(sample.count(c) for c in _CONTROL) > len(sample) // 20:
        raise SkipFile("binary data, not text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        text = data.decode("utf-8-sig", errors="replace")
        bad = text.count("\ufffd")
        if bad > len(text) // 10:
            raise SkipFile(f"not UTF-8 text ({bad} undecodable bytes)") from None
        warn(f"not valid UTF-8 (first bad byte at offset {exc.start}); {bad} characters replaced")
    if max_line_chars is not None:
        longest = max(len(line) for line in text.split("\n"))
        if longest > max_line_chars:
            raise SkipFile(f"a line of {longest} characters (limit {max_line_chars})")
    return text


def numbered_lines(text: str):
    """(1-based line number, char offset, line text without its ending) for each line."""
    # Only "\n" ends a line, as editors and `grep -n` count them.
    offset = 0
    for number, line in enumerate(text.split("\n"), start=1):
        yield number, offset, line.rstrip("\r")
        offset += len(line) + 1
