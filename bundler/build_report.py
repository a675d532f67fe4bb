"""The build report: every skipped file with its reason, written as JSON beside the executable,
and the one-line summary of the skips the CLI prints."""
from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from pathlib import Path

from bundler.formats import suffix_of
from bundler.ingest import SkippedFile
from bundler.leftovers import temp_prefix

# kinds whose summary lists the file suffixes seen, and their plural for the summary line
_SUFFIX_KINDS = {"image": "images", "unsupported type": "of unsupported type"}
_SHOWN_SUFFIXES = 4


def report_path(executable: Path) -> Path:
    return executable.with_name(executable.name + ".build-report.json")


def summarise_skips(skipped: list[SkippedFile], report_name: str) -> str:
    """e.g. 'skipped 301 files: 250 images (.png, .svg), 40 binary, 11 too large; full list in X.build-report.json'"""
    counts = Counter(s.kind for s in skipped)
    parts = []
    for kind, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        if kind in _SUFFIX_KINDS:
            suffixes = Counter(suffix_of(s.path) or "no suffix" for s in skipped if s.kind == kind)
            shown = [suffix for suffix, _ in sorted(suffixes.items(), key=lambda item: (-item[1], item[0]))]
            more = ", …" if len(shown) > _SHOWN_SUFFIXES else ""
            parts.append(f"{count} {_SUFFIX_KINDS[kind]} ({', '.join(shown[:_SHOWN_SUFFIXES])}{more})")
        else:
            parts.append(f"{count} {kind}")
    files = "file" if len(skipped) == 1 else "files"
    return f"skipped {len(skipped)} {files}: {', '.join(parts)}; full list in {report_name}"


def write_build_report(path: Path, documents: int, passages: int, duplicate_passages: int,
                       skipped: list[SkippedFile], warnings: list[str]) -> None:
    """Atomically: a reader never sees half a report."""
    report = {
        "documents": documents,
        "passages": passages,
        "duplicate_passages": duplicate_passages,
        "skipped_by_kind": dict(sorted(Counter(s.kind for s in skipped).items())),
        "skipped": [{"path": s.path, "kind": s.kind, "reason": s.reason} for s in skipped],
        "warnings": warnings,
    }
    handle, temp = tempfile.mkstemp(prefix=temp_prefix(f".{path.name}"), dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(report, stream, indent=1, ensure_ascii=False)
            stream.write("\n")
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise
