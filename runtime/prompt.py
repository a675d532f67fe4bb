"""Turning a question and retrieved passages into chat messages with numbered sources."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

from runtime.retrieval import Hit

SYSTEM_PROMPT = (
    "You answer questions using only the numbered sources the user gives you. "
    "Cite the sources you use with their numbers in square brackets, like [1]. "
    "If the sources do not contain the answer, say that you do not know."
)

_CITATION = re.compile(r"\[(\d+)\]")


@dataclass
class Prompt:
    messages: list[dict]
    sources: list[Hit]


def format_source(number: int, hit: Hit) -> str:
    return f"[{number}] ({hit.chunk.source.cite()})\n{hit.chunk.text.strip()}"


def build_prompt(
    question: str,
    hits: Sequence[Hit],
    count_tokens: Callable[[str], int],
    passage_budget: int,
    history: Sequence[dict] = (),
) -> Prompt:
    """Messages for one question; passages are kept by rank while they fit `passage_budget` tokens."""
    kept: list[Hit] = []
    used = 0
    for hit in hits:
        cost = count_tokens(format_source(len(kept) + 1, hit))
        if used + cost > passage_budget:
            break
        kept.append(hit)
        used += cost
    if kept:
        sources = "\n\n".join(format_source(n, hit) for n, hit in enumerate(kept, 1))
        content = f"Sources:\n\n{sources}\n\nQuestion: {question}"
    else:
        content = question
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, *history, {"role": "user", "content": content}]
    return Prompt(messages=messages, sources=kept)


def cited_sources(answer: str, sources: Sequence[Hit]) -> list[Hit]:
    """The sources an answer points at with [n] markers, in order of first mention."""
    seen: list[Hit] = []
    for match in _CITATION.finditer(answer):
        number = int(match.group(1))
        if 1 <= number <= len(sources) and sources[number - 1] not in seen:
            seen.append(sources[number - 1])
    return seen
