"""One JSON shape for a cited passage, shared by `--json` output, the server and the web page."""
from __future__ import annotations

import dataclasses


def source_record(hit) -> dict:
    """A retrieval Hit as documented in docs/QUERY_APP.md (`sources` items, search results)."""
    span = hit.chunk.source
    return {"rank": hit.rank, "score": float(hit.score), "citation": span.cite_with_copies(), "text": hit.chunk.text,
            "source": dataclasses.asdict(span)}


def passage_record(number: int, chunk) -> dict:
    """A passage given to a summary (`passages` items of `summarize --json` and /v1/summarize)."""
    return {"number": number, "citation": chunk.source.cite_with_copies(), "text": chunk.text,
            "source": dataclasses.asdict(chunk.source)}


def summary_record(summary) -> dict:
    """A finished runtime.summarize.Summary as documented in docs/QUERY_APP.md."""
    return {
        "summary": summary.text.strip(),
        "sentences": [{"text": s.text, "sources": s.sources, "cited_by_model": s.cited_by_model}
                      for s in summary.sentences],
        "passages": [passage_record(n, chunk) for n, chunk in enumerate(summary.passages, 1)],
        "stats": dict(vars(summary.stats)),
    }


def support_record(support) -> dict:
    """An answer's supporting quotes (runtime.support_quote.Support, or None without passages) as
    documented in docs/QUERY_APP.md: `supported` is null when there were no passages to check."""
    if support is None:
        return {"supported": None, "quotes": []}
    return {"supported": support.supported, "quotes": [quote.to_json() for quote in support.quotes]}
