"""Summary quality on the bundled documents: `summarize FILE:LINES` for sections of the sample docs.

    python bench/bench_summaries.py [--bundle dist/python-docs] [--limit 20] [--max-tokens 160]

For each document of the bundle (in name order, up to --limit), the summary of its first --lines
lines goes through runtime.summarize.Summarizer in this process, as `summarize` runs it, and is scored:
  coverage   share of the section's 10 key terms (most frequent stemmed terms of its passages, minus
             those common to every section) that the summary contains
  cited      share of the summary's sentences that cite a passage (written by the model or attributed)
  by model   share of sentences whose citation the model wrote itself
  loops      a word 4-gram occurs 3 or more times in the summary
  length     the summary ran into the token limit
  passes     map-reduce passes per summary (mean)
  seconds    wall time per summary (median)
Prints a table and writes bench/results/summaries.json (bench_record.py) with every summary.
"""
from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_record import BenchRecord  # noqa: E402
from runtime.assistant import Assistant  # noqa: E402
from runtime.bundle import Bundle  # noqa: E402
from runtime.generation import GenerationConfig  # noqa: E402
from runtime.summarize import Scope, Summarizer, passages_in_scope  # noqa: E402
from runtime.text_terms import terms  # noqa: E402

DEFAULT_BUNDLE = ROOT / "dist" / "python-docs"
KEY_TERMS = 10


def loops(text: str, n: int = 4, times: int = 3) -> bool:
    words = re.findall(r"\w+", text.lower())
    grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    return any(count >= times for count in grams.values())


def key_terms(passages, common: set[str]) -> list[str]:
    counts = Counter(t for p in passages for t in terms(p.text) if t not in common and len(t) > 2)
    return [t for t, _ in counts.most_common(KEY_TERMS)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--limit", type=int, default=20, help="documents to summarise")
    parser.add_argument("--lines", type=int, default=80, help="summarise lines 1..N of each document")
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not args.bundle.exists():
        raise SystemExit(f"{args.bundle}: no bundle (build it with `python build.py`)")
    assistant = Assistant.from_bundle(Bundle.open(args.bundle), threads=args.threads)
    store = assistant.retriever.chunks
    paths = sorted({store[i].source.path for i in range(len(store))})[:args.limit]
    sections = {path: passages_in_scope(store, Scope(path, lines=(1, args.lines))) for path in paths}
    # terms in every section say nothing about one of them
    document_terms = [set(t for p in passages for t in terms(p.text)) for passages in sections.values()]
    common = set.intersection(*document_terms) if document_terms else set()
    summarizer = Summarizer(assistant.tokenizer, assistant.decoder)
    rows = []
    with BenchRecord("summaries", vars(args)) as record:
        for number, (path, passages) in enumerate(sections.items(), 1):
            started = time.perf_counter()
            summary = summarizer.summarize(passages, GenerationConfig(max_new_tokens=args.max_tokens)).finish()
            seconds = time.perf_counter() - started
            wanted = key_terms(passages, common)
            found = set(terms(summary.text))
            sentences = summary.sentences
            rows.append({
                "document": path, "passages": len(passages), "summary": summary.text.strip(),
                "coverage": sum(t in found for t in wanted) / len(wanted) if wanted else 0.0,
                "cited": sum(bool(s.sources) for s in sentences) / len(sentences) if sentences else 0.0,
                "by_model": sum(s.cited_by_model for s in sentences) / len(sentences) if sentences else 0.0,
                "loops": loops(summary.text), "length": summary.stats.finish_reason == "length",
                "passes": summary.stats.passes, "seconds": seconds,
            })
            print(f"{number}/{len(sections)} {path}: {seconds:.1f} s", file=sys.stderr, flush=True)

        def mean(key: str) -> float:
            return statistics.fmean(float(r[key]) for r in rows)

        record.figures = {"documents": len(rows), "coverage": mean("coverage"), "cited": mean("cited"),
                          "by_model": mean("by_model"), "loops": mean("loops"), "length": mean("length"),
                          "passes": mean("passes"), "seconds_median": statistics.median(r["seconds"] for r in rows),
                          "rows": rows}
    print("| documents | key-term coverage | sentences cited | cited by the model | loops | hit limit "
          "| passes | s/summary (median) |")
    print("|---|---|---|---|---|---|---|---|")
    f = record.figures
    print(f"| {f['documents']} | {f['coverage']:.2f} | {f['cited']:.2f} | {f['by_model']:.2f} | {f['loops']:.2f} "
          f"| {f['length']:.2f} | {f['passes']:.1f} | {f['seconds_median']:.1f} |")


if __name__ == "__main__":
    main()
