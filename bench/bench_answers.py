"""Answer quality on our own question set: the same code path as `ask`, scored per configuration.

    python bench/bench_answers.py [--bundle dist/python-docs] [--limit 40] [--configs today,default]

Questions: bench/data/python_faq_qa.jsonl (Python FAQ headings turned into questions, short gold
answers written by hand from the sections, plus questions the documents do not answer). Each
question goes through runtime.assistant.Assistant.ask in this process, as `ask` runs it, and is
scored:
  gold cited   a cited passage (all given passages when the answer cites none) is from the gold
               file and holds a gold answer                                    (answerable only)
  contains     the answer contains a gold answer, SQuAD-normalised             (answerable only)
  F1           best token F1 against the gold answers, SQuAD-normalised        (answerable only)
  idk          the answer says it does not know: wanted for unanswerable questions; the share on
               answerable ones is reported too (a guard that abstains too often shows there)
  loops        a word 4-gram occurs 3 or more times in the answer
  length       the answer ran into the token limit
  ttft         seconds from the question to the first token (median)
Without --bundle, uses dist/python-docs (build it with `python build.py`). Prints a table and writes
JSON (settings, load average, per-question answers) to --out.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import statistics
import string
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runtime.assistant import Assistant, AskOptions  # noqa: E402
from runtime.bundle import Bundle  # noqa: E402
from runtime.generation import GenerationConfig  # noqa: E402
from runtime.prompt import GroundingOptions  # noqa: E402

DATA = ROOT / "bench" / "data" / "python_faq_qa.jsonl"
DEFAULT_BUNDLE = ROOT / "dist" / "python-docs"
DEFAULT_OUT = ROOT / "bench" / "results" / "answers.json"

# What `ask` did before the repetition guard and grounding options existed.
TODAY_GENERATION = {"dry_multiplier": 0.0, "loop_ngram": 0, "copy_bonus": 0.0, "copy_focus": 0, "copy_focus_bonus": 0.0}
TODAY_GROUNDING = {"passages": 4, "trim_sentences": 0, "system_prompt": "cite", "answer_first": False,
                   "stop_after_paragraph": False, "stop_after_sentences": 0, "stop_at_unknown_citation": False,
                   "abstain_below": 0.0, "answer_prefix": "", "passage_order": "relevance"}
# The repetition guard's defaults, without what came after it.
GUARD_GENERATION = {"copy_bonus": 0.0, "copy_focus": 0, "copy_focus_bonus": 0.0, "loop_number_repeats": 0}
# The defaults chosen by the first round of measurements (docs/QUERY_APP.md), before the second.
ROUND1_GROUNDING = {**TODAY_GROUNDING, "passages": 2, "system_prompt": "brief", "abstain_below": 0.5}

# The defaults chosen by the second round: round1 with the two stops.
ROUND2_GROUNDING = {**ROUND1_GROUNDING, "stop_at_unknown_citation": True, "stop_after_sentences": 3,
                    "answer_prefix": ""}
ROUND2_GENERATION = GUARD_GENERATION
ROUND3_GENERATION = {**GUARD_GENERATION, "copy_bonus": 1.0, "copy_min_match": 1}

# name -> (GenerationConfig changes, GroundingOptions changes); "default" is the current defaults.
# Every other configuration is spelled out in full from today's, so the table stays meaningful
# when the defaults move.
CONFIGS: dict[str, tuple[dict, dict]] = {
    "today": (TODAY_GENERATION, TODAY_GROUNDING),
    "guard": (GUARD_GENERATION, TODAY_GROUNDING),
    "guard-dry-only": ({**GUARD_GENERATION, "loop_ngram": 0}, TODAY_GROUNDING),
    "p1": (GUARD_GENERATION, {**TODAY_GROUNDING, "passages": 1}),
    "p2": (GUARD_GENERATION, {**TODAY_GROUNDING, "passages": 2}),
    "p3": (GUARD_GENERATION, {**TODAY_GROUNDING, "passages": 3}),
    "p2-trim3": (GUARD_GENERATION, {**TODAY_GROUNDING, "passages": 2, "trim_sentences": 3}),
    "p2-trim5": (GUARD_GENERATION, {**TODAY_GROUNDING, "passages": 2, "trim_sentences": 5}),
    "p2-brief": (GUARD_GENERATION, {**TODAY_GROUNDING, "passages": 2, "system_prompt": "brief"}),
    "p2-first": (GUARD_GENERATION, {**TODAY_GROUNDING, "passages": 2, "answer_first": True}),
    "p2-stop": (GUARD_GENERATION, {**TODAY_GROUNDING, "passages": 2, "stop_after_paragraph": True}),
    "p2-abstain": (GUARD_GENERATION, {**TODAY_GROUNDING, "passages": 2, "abstain_below": 0.5}),
    "p2-brief-stop": (GUARD_GENERATION, {**TODAY_GROUNDING, "passages": 2, "system_prompt": "brief", "stop_after_paragraph": True}),
    "p2-brief-first-stop": (GUARD_GENERATION, {**TODAY_GROUNDING, "passages": 2, "system_prompt": "brief", "answer_first": True,
                                 "stop_after_paragraph": True}),
    "p1-brief": (GUARD_GENERATION, {**TODAY_GROUNDING, "passages": 1, "system_prompt": "brief"}),
    "p3-brief": (GUARD_GENERATION, {**TODAY_GROUNDING, "passages": 3, "system_prompt": "brief"}),
    "p4-brief": (GUARD_GENERATION, {**TODAY_GROUNDING, "passages": 4, "system_prompt": "brief"}),
    "p1-brief-first-stop": (GUARD_GENERATION, {**TODAY_GROUNDING, "passages": 1, "system_prompt": "brief", "answer_first": True,
                                 "stop_after_paragraph": True}),
    "round1": (GUARD_GENERATION, ROUND1_GROUNDING),
    "round1-example": (GUARD_GENERATION, {**ROUND1_GROUNDING, "system_prompt": "example"}),
    "round1-extract": (GUARD_GENERATION, {**ROUND1_GROUNDING, "system_prompt": "extract"}),
    "round1-sentence": (GUARD_GENERATION, {**ROUND1_GROUNDING, "stop_after_sentences": 1}),
    "round1-example-sentence": (GUARD_GENERATION, {**ROUND1_GROUNDING, "system_prompt": "example", "stop_after_sentences": 1}),
    "round1-extract-sentence": (GUARD_GENERATION, {**ROUND1_GROUNDING, "system_prompt": "extract", "stop_after_sentences": 1}),
    "round1-dry1": ({**GUARD_GENERATION, "dry_allowed_length": 1}, ROUND1_GROUNDING),
    "round1-p1-example-sentence": (GUARD_GENERATION, {**ROUND1_GROUNDING, "passages": 1, "system_prompt": "example",
                                        "stop_after_sentences": 1}),
    "round1-citestop": (GUARD_GENERATION, {**ROUND1_GROUNDING, "stop_at_unknown_citation": True}),
    "round1-citestop-sentences3": (GUARD_GENERATION, {**ROUND1_GROUNDING, "stop_at_unknown_citation": True,
                                        "stop_after_sentences": 3}),
    "round2": (ROUND2_GENERATION, ROUND2_GROUNDING),
    "round2-copy0.5": ({**GUARD_GENERATION, "copy_bonus": 0.5}, ROUND2_GROUNDING),
    "round2-copy1": ({**GUARD_GENERATION, "copy_bonus": 1.0}, ROUND2_GROUNDING),
    "round2-copy2": ({**GUARD_GENERATION, "copy_bonus": 2.0}, ROUND2_GROUNDING),
    "round2-copy3": ({**GUARD_GENERATION, "copy_bonus": 3.0}, ROUND2_GROUNDING),
    "round2-copy2-match2": ({**GUARD_GENERATION, "copy_bonus": 2.0, "copy_min_match": 2}, ROUND2_GROUNDING),
    "round2-prefix-according": (ROUND2_GENERATION, {**ROUND2_GROUNDING, "answer_prefix": "According to the sources,"}),
    "round2-prefix-quote": (ROUND2_GENERATION, {**ROUND2_GROUNDING, "answer_prefix": 'The sources say: "'}),
    "round2-extract": (ROUND2_GENERATION, {**ROUND2_GROUNDING, "system_prompt": "extract"}),
    "round2-copy1-prefix-quote": ({**GUARD_GENERATION, "copy_bonus": 1.0}, {**ROUND2_GROUNDING, "answer_prefix": 'The sources say: "'}),
    "round2-copy2-prefix-quote": ({**GUARD_GENERATION, "copy_bonus": 2.0}, {**ROUND2_GROUNDING, "answer_prefix": 'The sources say: "'}),
    "round2-copy1-prefix-according": ({**GUARD_GENERATION, "copy_bonus": 1.0}, {**ROUND2_GROUNDING,
                                                            "answer_prefix": "According to the sources,"}),
    "round2-copy2-prefix-according": ({**GUARD_GENERATION, "copy_bonus": 2.0}, {**ROUND2_GROUNDING,
                                                            "answer_prefix": "According to the sources,"}),
    "round2-copy1-extract": ({**GUARD_GENERATION, "copy_bonus": 1.0}, {**ROUND2_GROUNDING, "system_prompt": "extract"}),
    "round2-copy2-extract": ({**GUARD_GENERATION, "copy_bonus": 2.0}, {**ROUND2_GROUNDING, "system_prompt": "extract"}),
    "round2-copy1-p1": ({**GUARD_GENERATION, "copy_bonus": 1.0}, {**ROUND2_GROUNDING, "passages": 1}),
    "round2-copy2-p1": ({**GUARD_GENERATION, "copy_bonus": 2.0}, {**ROUND2_GROUNDING, "passages": 1}),
    # the search's order since retrieval went one document at a time (runtime.retrieval.one_document_at_a_time)
    "round2-documents": (ROUND2_GENERATION, {**ROUND2_GROUNDING, "passage_order": "documents"}),
    "round2-documents-copy1": ({**GUARD_GENERATION, "copy_bonus": 1.0}, {**ROUND2_GROUNDING, "passage_order": "documents"}),
    "round2-documents-copy2": ({**GUARD_GENERATION, "copy_bonus": 2.0}, {**ROUND2_GROUNDING, "passage_order": "documents"}),
    # The defaults chosen by the third round: round2 with the copy bias over the passages.
    "round3": (ROUND3_GENERATION, ROUND2_GROUNDING),
    "round3-match2": ({**ROUND3_GENERATION, "copy_min_match": 2}, ROUND2_GROUNDING),
    "round3-p1": (ROUND3_GENERATION, {**ROUND2_GROUNDING, "passages": 1}),
    "round3-extract": (ROUND3_GENERATION, {**ROUND2_GROUNDING, "system_prompt": "extract"}),
    "round3-focus1-b2": ({**ROUND3_GENERATION, "copy_focus": 1, "copy_focus_bonus": 2.0}, ROUND2_GROUNDING),
    "round3-focus1-b4": ({**ROUND3_GENERATION, "copy_focus": 1, "copy_focus_bonus": 4.0}, ROUND2_GROUNDING),
    "round3-focus2-b2": ({**ROUND3_GENERATION, "copy_focus": 2, "copy_focus_bonus": 2.0}, ROUND2_GROUNDING),
    "round3-focus2-b4": ({**ROUND3_GENERATION, "copy_focus": 2, "copy_focus_bonus": 4.0}, ROUND2_GROUNDING),
    # The defaults chosen by the fourth round: round3 with extract-then-copy and the counting stop.
    "round4": ({**ROUND3_GENERATION, "copy_focus": 1, "copy_focus_bonus": 4.0, "loop_number_repeats": 12},
               ROUND2_GROUNDING),
    "default": ({}, {}),
}

IDK = re.compile(r"\b(i (do not|don't|dont) know|(do|does) not (contain|mention|say|provide|include)"
                 r"|(is|are) not (mentioned|provided|given|included)|no (information|mention))\b", re.I)


def normalise(text: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(c for c in text.lower() if c not in string.punctuation)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(prediction: str, gold: str) -> float:
    pred, ref = normalise(prediction).split(), normalise(gold).split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def contains_gold(text: str, golds: list[str], question: str = "") -> bool:
    """A gold answer occurs in `text`, literally (case aside) or SQuAD-normalised; a form of it that
    the question itself holds does not count (echoing the question earns nothing)."""
    padded, asked = f" {normalise(text)} ", f" {normalise(question)} "
    for gold in golds:
        if gold.lower() in text.lower() and gold.lower() not in question.lower():
            return True
        normal = f" {normalise(gold)} "
        if normal.strip() and normal in padded and normal not in asked:
            return True
    return False


def loops(text: str, n: int = 4, times: int = 3) -> bool:
    words = normalise(text).split()
    grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    return any(count >= times for count in grams.values())


def cites_gold(cited: list[dict], item: dict) -> bool:
    """cited: [{"path", "text"}] of the passages the answer cites."""
    return any(c["path"] == item["doc"] and contains_gold(c["text"], item["answers"]) for c in cited)


# The held-out questions: the other half of an evenly spaced 60 (`--limit 60 --shard 2/2`), the
# confirmation set of the second and third rounds; no setting is chosen by looking at them.
HELD_OUT_SPACING = 60
SPLITS = ("all", "tuning", "held-out")


def held_out_positions(total: int) -> set[int]:
    step = total / HELD_OUT_SPACING
    return {int(i * step) for i in range(1, HELD_OUT_SPACING, 2)}


def load_questions(path: Path, limit: int | None, split: str = "all") -> list[dict]:
    """The questions of `split` ("tuning": all but the held-out ones), `limit` of them evenly spaced."""
    items = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if split != "all":
        held = held_out_positions(len(items))
        items = [item for n, item in enumerate(items) if (n in held) == (split == "held-out")]
    if limit and limit < len(items):
        # evenly spaced, so a quick look still mixes files and unanswerable questions
        step = len(items) / limit
        items = [items[int(i * step)] for i in range(limit)]
    return items


def run_config(assistant: Assistant, name: str, items: list[dict], max_tokens: int) -> dict:
    generation_changes, grounding_changes = CONFIGS[name]
    config = GenerationConfig(**{"max_new_tokens": max_tokens, **generation_changes})
    grounding = GroundingOptions(**grounding_changes)
    rows = []
    for number, item in enumerate(items, 1):
        answer = assistant.ask(item["question"], AskOptions(generation=config, grounding=grounding)).finish()
        print(f"{name} {number}/{len(items)}: {answer.stats.new_tokens} tokens, {answer.stats.total_s:.1f} s",
              file=sys.stderr, flush=True)
        text = answer.text.strip()
        row = {"question": item["question"], "answerable": item["answerable"], "answer": text,
               "idk": bool(IDK.search(text)), "loop": loops(text), "length": answer.stats.finish_reason == "length",
               "ttft": answer.stats.first_token_s, "total_s": answer.stats.total_s,
               "new_tokens": answer.stats.new_tokens, "prompt_tokens": answer.stats.prompt_tokens,
               "loop_stopped": answer.stats.loop_stopped}
        if item["answerable"]:
            row["cited"] = [{"path": hit.chunk.source.path, "text": hit.chunk.text} for hit in answer.cited]
            row.update(gold_cited=cites_gold(row["cited"], item),
                       contains=contains_gold(text, item["answers"], item["question"]),
                       f1=max(token_f1(text, g) for g in item["answers"]))
        rows.append(row)
    return {"generation": dataclasses.asdict(config) | {"stop_token_ids": []},
            "grounding": dataclasses.asdict(grounding), "summary": summarise(rows), "answers": rows}


def summarise(rows: list[dict]) -> dict:
    answerable = [r for r in rows if r["answerable"]]
    unanswerable = [r for r in rows if not r["answerable"]]

    def share(subset, key):
        return sum(r[key] for r in subset) / len(subset) if subset else float("nan")

    return {
        "questions": len(rows),
        "gold_cited": share(answerable, "gold_cited"),
        "contains": share(answerable, "contains"),
        "f1": statistics.fmean(r["f1"] for r in answerable) if answerable else float("nan"),
        "idk_unanswerable": share(unanswerable, "idk"),
        "idk_answerable": share(answerable, "idk"),
        "loops": share(rows, "loop"),
        "length": share(rows, "length"),
        "ttft_p50": statistics.median(r["ttft"] for r in rows),
        "new_tokens_mean": statistics.fmean(r["new_tokens"] for r in rows),
        "seconds": sum(r["total_s"] for r in rows),
    }


COLUMNS = [("gold_cited", "gold cited", "{:.3f}"), ("contains", "contains", "{:.3f}"), ("f1", "F1", "{:.3f}"),
           ("idk_unanswerable", "idk unans.", "{:.3f}"), ("idk_answerable", "idk ans.", "{:.3f}"),
           ("loops", "loops", "{:.3f}"), ("length", "length", "{:.3f}"), ("ttft_p50", "ttft s", "{:.2f}"),
           ("new_tokens_mean", "tokens", "{:.0f}")]


def table(results: dict) -> str:
    lines = ["| config | n | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
             "|---|---|" + "---|" * len(COLUMNS)]
    for name, result in results.items():
        s = result["summary"]
        cells = " | ".join(fmt.format(s[key]) for key, _, fmt in COLUMNS)
        lines.append(f"| {name} | {s['questions']} | {cells} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE, help="bundle executable or staging folder")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--split", choices=SPLITS, default="all",
                        help="which questions: all, the tuning part or the held-out part (the 30 of "
                             "`--limit 60 --shard 2/2`, never used to choose a setting)")
    parser.add_argument("--limit", type=int, default=None,
                        help="score this many questions of the split, evenly spaced")
    parser.add_argument("--shard", default="1/1", metavar="I/N",
                        help="score only every N-th of the chosen questions, starting at the I-th (to spread a "
                             "run over processes; merge the JSON files' answers)")
    parser.add_argument("--configs", default="today,default", help=f"comma-separated, of: {', '.join(CONFIGS)}")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                        help="instead of running, merge the answers of earlier runs' JSON files (shards, or "
                             "runs of different configurations) into one table and --out")
    args = parser.parse_args()
    if args.merge:
        return merge(args.merge, args.out)
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        parser.error(f"unknown configuration {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    if not args.bundle.exists():
        parser.error(f"{args.bundle}: no such bundle (build it with `python build.py`)")
    shard, shards = (int(x) for x in args.shard.split("/"))
    items = load_questions(args.data, args.limit, args.split)[shard - 1::shards]
    assistant = Assistant.from_bundle(Bundle.open(args.bundle), threads=args.threads)
    started, loads = time.time(), [os.getloadavg()[0]]
    results = {}
    for name in names:
        results[name] = run_config(assistant, name, items, args.max_tokens)
        loads.append(os.getloadavg()[0])
        print(table({name: results[name]}).splitlines()[-1], file=sys.stderr, flush=True)
    record = {
        "bench": "answers", "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(time.time() - started, 1),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "load_average": {"start": loads[0], "max": max(loads), "end": loads[-1]}},
        "settings": {"bundle": str(args.bundle), "data": str(args.data), "split": args.split, "limit": args.limit,
                     "shard": args.shard,
                     "threads": args.threads, "max_tokens": args.max_tokens},
        "configs": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    part = args.out.with_name(args.out.name + ".part")
    part.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(part, args.out)
    print(table(results))
    print(f"load average {loads[0]:.2f} at the start, {max(loads):.2f} at most; JSON: {args.out}", file=sys.stderr)
    return 0


def merge(paths: list[Path], out: Path) -> int:
    records = [json.loads(path.read_text()) for path in paths]
    configs: dict = {}
    for record in records:
        for name, result in record["configs"].items():
            merged = configs.setdefault(name, {**result, "answers": []})
            merged["answers"] = merged["answers"] + result["answers"]
    golds = {item["question"]: item for item in load_questions(DATA, None)}
    for result in configs.values():
        for row in result["answers"]:  # scored again against the current gold answers
            item = golds.get(row["question"])
            if item and item["answerable"]:
                row["contains"] = contains_gold(row["answer"], item["answers"], item["question"])
                if "cited" in row:
                    row["gold_cited"] = cites_gold(row["cited"], item)
                row["f1"] = max(token_f1(row["answer"], g) for g in item["answers"])
        result["summary"] = summarise(result["answers"])
    loads = [r["machine"]["load_average"] for r in records]
    record = {"bench": "answers", "merged_from": [str(p) for p in paths],
              "machine": {**records[0]["machine"], "load_average": {
                  "start": min(l["start"] for l in loads), "max": max(l["max"] for l in loads),
                  "end": max(l["end"] for l in loads)}},
              "settings": records[0]["settings"], "configs": configs}
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(out.name + ".part")
    part.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(part, out)
    print(table(configs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
