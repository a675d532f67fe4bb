"""A second retrieval test set from what the project ships: the Python docs cut into sections, and
the FAQ questions of bench/data/python_faq_qa.jsonl with relevance judgements from their gold file
and answer strings.

Documents: every section of examples/python-docs (a title underlined, optionally overlined, with
`=-~^"'`#*+`, as reStructuredText writes them), one document per section with its title line, named
`<folder>-<file>-<NNN>` (`faq-programming-012`). Queries: the answerable questions. Relevant (gain 1):
the sections of the question's gold file whose text holds one of its answer strings (case and
whitespace folded); a question with no such section is left out. Not used to choose any setting.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

TITLE_MARK = re.compile(r"^([=\-~^\"'`#*+])\1+\s*$")


def sections(text: str) -> list[str]:
    """The file cut before each section title (its overline, if any, goes with it)."""
    lines = text.splitlines()
    starts = []
    for i in range(len(lines) - 1):
        title, mark = lines[i], lines[i + 1]
        if title.strip() and not TITLE_MARK.match(title) and TITLE_MARK.match(mark) and len(mark.rstrip()) >= len(title.rstrip()):
            starts.append(i - 1 if i > 0 and TITLE_MARK.match(lines[i - 1]) else i)
    bounds = [0] + starts + [len(lines)]
    return ["\n".join(lines[a:b]).strip() for a, b in zip(bounds, bounds[1:])]


def folded(text: str) -> str:
    return " ".join(text.lower().split())


def python_faq_set(examples: Path, questions: Path) -> tuple[dict[str, str], dict[str, str], list[tuple[str, str, int]]]:
    """(documents {name: text}, queries {id: question}, qrels [(query id, document name, gain)])."""
    docs: dict[str, str] = {}
    for path in sorted(examples.rglob("*.txt")):
        stem = path.relative_to(examples).with_suffix("").as_posix().replace("/", "-")
        for n, section in enumerate(sections(path.read_text(encoding="utf-8"))):
            if any(line.strip() for line in section.splitlines()[2:]):  # more than a bare title
                docs[f"{stem}-{n:03d}"] = section
    queries, qrels = {}, []
    for n, line in enumerate(questions.read_text(encoding="utf-8").splitlines()):
        row = json.loads(line)
        if not row["answerable"]:
            continue
        prefix = row["doc"].removesuffix(".txt").replace("/", "-") + "-"
        answers = [folded(a) for a in row["answers"]]
        relevant = [name for name, text in docs.items() if name.startswith(prefix) and any(a in folded(text) for a in answers)]
        if relevant:
            queries[str(n)] = row["question"]
            qrels += [(str(n), name, 1) for name in relevant]
    return docs, queries, qrels
