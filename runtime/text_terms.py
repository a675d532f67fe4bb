"""The one analyzer BM25 uses, at build time and at query time alike.

Lowercased word tokens, English stopwords removed, Snowball-stemmed. Both sides
must call the same function, so it lives in the runtime and the builder imports it.
"""
from __future__ import annotations

import re

import Stemmer

ANALYZER = "en-snowball-stop-v1"

_WORD = re.compile(r"\w+", re.UNICODE)

# A common English stopword list (articles, pronouns, auxiliaries, prepositions).
STOPWORDS = frozenset(
    """
    a about above after again against all am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further
    had has have having he her here hers herself him himself his how i if in into is it its itself
    just me more most my myself no nor not now of off on once only or other our ours ourselves out
    over own same she should so some such than that the their theirs them themselves then there
    these they this those through to too under until up very was we were what when where which
    while who whom why will with would you your yours yourself yourselves
    """.split()
)

_stemmer = Stemmer.Stemmer("english")


def terms(text: str) -> list[str]:
    """Index terms of a text, in order, repeated terms kept."""
    words = [w for w in _WORD.findall(text.lower()) if w not in STOPWORDS]
    return _stemmer.stemWords(words)
