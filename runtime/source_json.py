"""One JSON shape for a cited passage, shared by `--json` output, the server and the web page."""
from __future__ import annotations

import dataclasses


def source_record(hit) -> dict:
    """A retrieval Hit as documented in docs/QUERY_APP.md (`sources` items, search results)."""
    span = hit.chunk.source
    return {"rank": hit.rank, "score": float(hit.score), "citation": span.cite(), "text": hit.chunk.text,
            "source": dataclasses.asdict(span)}


def support_record(support) -> dict:
    """An answer's supporting quotes (runtime.support_quote.Support, or None without passages) as
    documented in docs/QUERY_APP.md: `supported` is null when there were no passages to check."""
    if support is None:
        return {"supported": None, "quotes": []}
    return {"supported": support.supported, "quotes": [quote.to_json() for quote in support.quotes]}
