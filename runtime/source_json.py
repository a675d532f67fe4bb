"""One JSON shape for a cited passage, shared by `--json` output, the server and the web page."""
from __future__ import annotations

import dataclasses


def source_record(hit) -> dict:
    """A retrieval Hit as documented in docs/QUERY_APP.md (`sources` items, search results)."""
    span = hit.chunk.source
    return {"rank": hit.rank, "score": float(hit.score), "citation": span.cite(), "text": hit.chunk.text,
            "source": dataclasses.asdict(span)}
