"""Which parser reads a file: by its suffix when that is known, else by a look at its first bytes.

Debian's documentation shows the cases a suffix table misses: man pages in sections with a
suffix (`x.3type.gz`, `y.3const.gz`, `z.2type.gz`), and plain text without an extension
(`copyright`, `changelog.gz`, `README.Debian`).
"""
from __future__ import annotations

import re

from bundler.formats.names import SUFFIXES, suffix_of

HEAD_BYTES = 4096
# a man section with a suffix: .3type .3const .3head .2type .1ssl .3perl (a plain .1-.9 is in SUFFIXES)
_MAN_SECTION = re.compile(r"\.[1-9][a-z][a-z0-9]*")
# files conventionally named without a document extension (the part before the first dot)
_TEXT_NAMES = {"readme", "changelog", "changes", "news", "copyright", "copying", "license", "licence", "authors",
               "thanks", "todo", "history", "install", "notice"}
# roff source: a man (.TH) or mdoc (.Dd) title, or a roff comment, within its first lines
_ROFF_LINE = re.compile(rb"^(\.TH\s|\.Dd\s|\.\\\"|'\\\"|\.so\s)")
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".svg", ".ico", ".bmp", ".webp", ".tif", ".tiff", ".xpm", ".eps"}


def needs_head(name: str) -> bool:
    """Whether detect_format looks at the content of a file with this name."""
    suffix = suffix_of(name)
    return suffix not in SUFFIXES and (bool(_MAN_SECTION.fullmatch(suffix)) or _text_by_name(name))


def detect_format(name: str, head: bytes) -> str | None:
    """The format name (a FORMATS key) of a file, from its name and first HEAD_BYTES (gunzipped);
    None when no parser reads it."""
    suffix = suffix_of(name)
    if suffix in SUFFIXES:
        return SUFFIXES[suffix]
    if _MAN_SECTION.fullmatch(suffix):
        return "man" if looks_like_roff(head) else None
    if _text_by_name(name):
        if looks_like_roff(head):
            return "man"
        return "text" if looks_like_text(head) else None
    return None


def looks_like_roff(head: bytes) -> bool:
    lines = head.lstrip(b"\xef\xbb\xbf").splitlines()[:20]
    return any(_ROFF_LINE.match(line) for line in lines) and looks_like_text(head)


def looks_like_text(head: bytes) -> bool:
    """UTF-8 (a multi-byte character cut at the end of the sample allowed), no NUL, and at most
    one control character in fifty."""
    if not head.strip() or b"\x00" in head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:
            return False
        text = head[: exc.start].decode("utf-8")
    control = sum(1 for c in text if ord(c) < 32 and c not in "\t\n\r\f")
    return control * 50 <= len(text)


def unsupported_kind(name: str) -> str:
    """How a skipped file of an unsupported type is counted in the build summary."""
    return "image" if suffix_of(name) in _IMAGE_SUFFIXES else "unsupported type"


def _text_by_name(name: str) -> bool:
    base = name.rsplit("/", 1)[-1].lower()
    return suffix_of(name) == "" or base.split(".", 1)[0] in _TEXT_NAMES
