"""File suffixes and the format each names (kept apart from the parsers so that type detection
imports no parsing library)."""
from __future__ import annotations

SUFFIXES: dict[str, str] = {
    ".txt": "text",
    ".text": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".rst": "text",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
    ".docx": "docx",
    **{f".{section}": "man" for section in range(1, 10)},
}


def suffix_of(name: str) -> str:
    """The lower-case suffix of a file name, looking through a final .gz ('' when none)."""
    lower = name.lower().rsplit("/", 1)[-1]
    if lower.endswith(".gz"):
        lower = lower[:-3]
    dot = lower.rfind(".")
    return lower[dot:] if dot > 0 else ""
