"""The sentences of the cited passages that best back an answer, so a person can check it at a glance.

A small model can answer beside its sources. Next to the answer we show the one or two sentences
of the passages it cites or quotes (all passages given, when it does neither) that share the most index terms
(runtime.text_terms: stopwords out, stemmed) with the answer and the question; a second sentence
only when it backs answer terms the first does not. An answer that shares no term at all with
those passages is marked unsupported.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Sequence

from runtime.prompt import answer_sources
from runtime.retrieval import Hit
from runtime.text_terms import terms

MAX_QUOTES = 2

# A sentence ends at . ! ? (with closing quotes or brackets) before whitespace, or at a line break
# that ends a block: headings, list items and table rows carry no full stop, but prose wrapped
# over several lines goes on.
_BOUNDARY = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*(?=\s|$)|\n")
_BLOCK_START = re.compile(r"[ \t]*(?:$|[#>|*+-][ \t]|\d+[.)][ \t])")
_ONE_LINE_BLOCK = ("#", "|")    # headings and table rows never continue on the next line
# [n] markers point at sources; their numbers are not words of the answer.
_CITATION = re.compile(r"\[\d+\]")


@dataclass
class Quote:
    source: int             # 1-based number of the passage in the prompt, as the answer's [n] markers
    citation: str           # where the passage is, e.g. "pumps/coolant-pump.md:1-4"
    text: str               # the sentence, exactly as in the passage
    char_start: int         # offsets of the sentence in the passage's text
    char_end: int

    def to_json(self) -> dict:
        return vars(self).copy()


@dataclass
class Support:
    supported: bool         # the answer shares at least one term with the passages quoted from
    quotes: list[Quote]     # best first, at most MAX_QUOTES


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence of a text, surrounding whitespace left out."""
    spans = []
    start = 0
    for boundary in [*_BOUNDARY.finditer(text), None]:
        if boundary is not None and boundary.group() == "\n" and not _ends_block(text, boundary.start()):
            continue
        end = boundary.end() if boundary else len(text)
        piece = text[start:end]
        if piece.strip():
            lead = len(piece) - len(piece.lstrip())
            spans.append((start + lead, start + len(piece.rstrip())))
        start = end
    return spans


def _ends_block(text: str, newline: int) -> bool:
    line = text[text.rfind("\n", 0, newline) + 1:newline]
    return line.lstrip().startswith(_ONE_LINE_BLOCK) or bool(_BLOCK_START.match(text, newline + 1))


def find_support(question: str, answer: str, sources: Sequence[Hit]) -> Optional[Support]:
    """None when the answer was given without passages."""
    if not sources:
        return None
    answer_terms = set(terms(_CITATION.sub(" ", answer)))
    question_terms = set(terms(question))
    candidates = []     # (source number, hit, start, end, terms)
    for hit in answer_sources(answer, question, sources):
        number = sources.index(hit) + 1
        for start, end in sentence_spans(hit.chunk.text):
            candidates.append((number, hit, start, end, set(terms(hit.chunk.text[start:end]))))
    supported = any(sentence & answer_terms for *_, sentence in candidates)

    def score(candidate, covered: set) -> tuple:
        sentence = candidate[-1]
        # Ties go to the better-ranked passage, then the earlier sentence.
        return (len((sentence & answer_terms) - covered) + len((sentence & question_terms) - covered),
                len((sentence & answer_terms) - covered), -candidate[0], -candidate[2])

    chosen = []
    covered: set = set()
    while candidates and len(chosen) < MAX_QUOTES:
        best = max(candidates, key=lambda c: score(c, covered))
        gain = score(best, covered)
        # The first needs any overlap; a second must back answer terms the first left out.
        if gain[0] == 0 or (chosen and gain[1] == 0):
            break
        chosen.append(best)
        candidates.remove(best)
        covered |= best[-1]
    quotes = [Quote(source=number, citation=hit.chunk.source.cite(), text=hit.chunk.text[start:end],
                    char_start=start, char_end=end) for number, hit, start, end, _ in chosen]
    return Support(supported=supported, quotes=quotes)
