"""The sentences of the passages an answer should most likely quote (extract, then copy).

A small model given two passages often opens with "The answer to the question is:" and drifts,
although the sentence holding the answer is in front of it. Choosing that sentence is cheap:
the passage sentence sharing the most index terms (runtime.text_terms: stemmed, no stopwords)
with the question. The copy bias (runtime/copy_bias.py) then favours starting and continuing
these sentences over the rest of the passages. Headings are left out: a section titled with the
question itself always shares the most terms and answers nothing.
"""
from __future__ import annotations

import re
from typing import Sequence

from runtime.retrieval import Hit
from runtime.support_quote import sentence_spans
from runtime.text_terms import terms

# A line of only punctuation: a reStructuredText title's under- or overline, a Markdown rule.
_RULE_LINE = re.compile(r"^\s*[^\w\s]+\s*$")


def body_sentences(hit: Hit) -> list[str]:
    """The passage's sentences without rule lines, its heading title left out."""
    heading = hit.chunk.source.heading.split(" > ")[-1].strip().lower() if hit.chunk.source.heading else ""
    text = hit.chunk.text
    sentences = []
    for start, end in sentence_spans(text):
        lines = [line.strip() for line in text[start:end].splitlines() if not _RULE_LINE.match(line)]
        sentence = " ".join(line for line in lines if line)
        if sentence and sentence.lstrip("#* ").lower() != heading:
            sentences.append(sentence)
    return sentences


# A passage's opening sentence (after its heading) usually states what the section says: it
# counts as one question term more (on the tuning questions, the gold answer is in the top
# sentence of two passages for 0.62 of them with it, 0.54 without).
OPENING_BONUS = 1


def focus_sentences(question: str, hits: Sequence[Hit], count: int) -> list[str]:
    """The `count` sentences of `hits` sharing the most question terms (the opening sentence of a
    passage counts one more; a sentence scoring nothing is never chosen), best first; ties go to
    the better-ranked passage, then the earlier sentence."""
    if count <= 0:
        return []
    wanted = set(terms(question))
    scored = []
    for rank, hit in enumerate(hits):
        for position, sentence in enumerate(body_sentences(hit)):
            score = len(wanted & set(terms(sentence))) + (OPENING_BONUS if position == 0 else 0)
            if score:
                scored.append((-score, rank, position, sentence))
    return [sentence for *_, sentence in sorted(scored)[:count]]
