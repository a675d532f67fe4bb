"""One JSON shape for a cited passage, shared by `--json` output, the server and the web page."""
from __future__ import annotations


def source_record(hit) -> dict:
    """A retrieval Hit as the documented `sources` item (see docs/QUERY_APP.md)."""
    span = hit.chunk.source
    return {
        "rank": hit.rank,
        "score": float(hit.score),
        "cite": span.cite(),
        "path": span.path,
        "page": span.page,
        "line_start": span.line_start,
        "line_end": span.line_end,
        "heading": span.heading,
        "text": hit.chunk.text,
    }
