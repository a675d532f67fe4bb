"""Finding the documents under a folder and reading each into Blocks (or a reason to skip it)."""
from __future__ import annotations

import gzip
import io
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from bundler.errors import BuildError
from bundler.formats import FORMATS, Block, SkipFile
from bundler.formats.detect import HEAD_BYTES, detect_format, needs_head, unsupported_kind

DEFAULT_MAX_FILE_BYTES = 50 * 1024 * 1024
# Key material by name: SSH keys, PEM and PKCS#12 containers, Java keystores, PuTTY keys.
KEY_FILE = re.compile(r"^id_(rsa|dsa|ecdsa|ed25519)(_sk)?(\.pub)?$|\.(pem|key|p12|pfx|jks|keystore|ppk)$", re.IGNORECASE)


@dataclass
class SkippedFile:
    path: str     # relative to the documents folder, posix
    reason: str
    kind: str = "unreadable"  # what the build summary counts it as: "image", "binary", "too large", ...


@dataclass
class SourceFile:
    path: Path
    relative: str  # posix, relative to the documents folder
    format: str    # a bundler.formats.FORMATS key


@dataclass
class ParsedDocument:
    relative: str
    blocks: list[Block]
    warnings: list[str] = field(default_factory=list)


@dataclass
class DocumentScan:
    found: list[SourceFile]
    skipped: list[SkippedFile]
    left_out: list[str]  # private entries not looked at (relative; folders end in "/")


def is_private(name: str) -> bool:
    """Hidden files and folders (.env, .git, .ssh) and key files: what a documents folder may hold
    but must not carry into a bundle."""
    return name.startswith(".") or KEY_FILE.search(name) is not None


def find_documents(docs_dir: Path, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
                   include_hidden: bool = False) -> DocumentScan:
    """Supported files under docs_dir in path order, the files passed over with reasons, and the
    private entries left out.

    Unless `include_hidden`: hidden files and folders, key files, and symlinks to any of them are
    left out unread, and symlinks are followed only when they stay inside the folder. A file's
    format comes from its suffix, or for man sections like `.3type` and extensionless text from its
    first bytes.
    """
    if not docs_dir.exists():
        raise BuildError(docs_dir, "documents folder does not exist")
    if not docs_dir.is_dir():
        raise BuildError(docs_dir, "not a folder")
    root = docs_dir.resolve()
    found: list[SourceFile] = []
    skipped: list[SkippedFile] = []
    left_out: list[str] = []
    for folder, subfolders, files in os.walk(root):
        subfolders.sort()
        if not include_hidden:
            left_out += [(Path(folder) / d).relative_to(root).as_posix() + "/" for d in subfolders if is_private(d)]
            subfolders[:] = [d for d in subfolders if not is_private(d)]
        for name in sorted(files):
            path = Path(folder) / name
            relative = path.relative_to(root).as_posix()
            if not include_hidden and is_private(name):
                left_out.append(relative)
                continue
            try:
                target = path.resolve()
            except (RuntimeError, OSError):  # Python 3.11 raises RuntimeError for a symlink loop
                skipped.append(SkippedFile(relative, "symlink loop", "symlink"))
                continue
            inside = root in target.parents
            if not inside and not include_hidden:
                skipped.append(SkippedFile(relative, "symlink to a file outside the documents folder "
                                                     "(--include-hidden follows it)", "symlink"))
            elif inside and not include_hidden and any(is_private(p) for p in target.relative_to(root).parts):
                left_out.append(relative)
            elif not target.is_file():
                skipped.append(SkippedFile(relative, "not a regular file", "not a regular file"))
            elif target.stat().st_size > max_file_bytes:
                skipped.append(SkippedFile(relative, f"larger than the {max_file_bytes} byte limit ({target.stat().st_size} bytes)", "too large"))
            else:
                try:
                    format_name = detect_format(name, _read_head(target, name) if needs_head(name) else b"")
                except SkipFile as exc:
                    skipped.append(SkippedFile(relative, str(exc), "unreadable"))
                    continue
                if format_name is None and needs_head(name):
                    skipped.append(SkippedFile(relative, "not text and not a man page", "binary"))
                elif format_name is None:
                    skipped.append(SkippedFile(relative, "unsupported file type", unsupported_kind(name)))
                else:
                    found.append(SourceFile(target, relative, format_name))
    found.sort(key=lambda f: f.relative)
    return DocumentScan(found, skipped, sorted(left_out))


def _read_head(path: Path, name: str) -> bytes:
    """The first bytes of a file, gunzipped if it is gzipped: enough to tell its type."""
    try:
        if name.lower().endswith(".gz"):
            with gzip.open(path) as stream:
                return stream.read(HEAD_BYTES)
        with open(path, "rb") as stream:
            return stream.read(HEAD_BYTES)
    except (OSError, EOFError, zlib.error) as exc:
        raise SkipFile(f"cannot be read ({exc})") from None


def unpack_source(source: SourceFile, data: bytes, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> bytes:
    """The file's bytes as read, gunzipped if it is gzipped (bounded, against gzip bombs)."""
    if source.relative.lower().endswith(".gz"):
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
                data = stream.read(max_file_bytes + 1)
        except (OSError, EOFError) as exc:
            raise SkipFile(f"not a valid gzip file ({exc})") from None
        if len(data) > max_file_bytes:
            raise SkipFile(f"decompresses to more than the {max_file_bytes} byte limit")
    return data


def parse_source(source: SourceFile, data: bytes) -> ParsedDocument:
    """Blocks of one file; raises SkipFile when nothing usable is in it."""
    warnings: list[str] = []
    blocks = FORMATS[source.format](data, warnings.append)
    if not any(b.text.strip() for b in blocks):
        raise SkipFile("no text found")
    return ParsedDocument(source.relative, blocks, warnings)
