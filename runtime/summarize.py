"""Summaries of a document (or a part of it) and of what the documents say about a topic.

Map-reduce within the context window: the passages are cut into batches that fit the window beside
the room kept for the output; each batch is summarised with its passages numbered as in the whole
selection, so a citation [n] means the same passage in every pass; when there was more than one
batch, the partial summaries are combined in a last pass, which is the one streamed. Every sentence
of the result then cites the passages it came from: the numbers the model wrote when they exist,
otherwise the passage sharing the most terms with the sentence; a sentence that shares nothing with
any passage cites none and is reported as unsupported.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Sequence

from runtime.assistant import stream_text
from runtime.errors import UserError
from runtime.generation import GenerationConfig
from runtime.retrieval import Chunk, Hit, SourceSpan
from runtime.support_quote import sentence_spans
from runtime.text_terms import terms

MAP_PROMPT = (
    "You summarise the numbered passages the user gives you in a few short, plain sentences. "
    "Use only what the passages say. After each sentence, cite the passages it comes from with their "
    "numbers in square brackets, like [2]."
)
REDUCE_PROMPT = (
    "You combine partial summaries of one text into a single short summary of a few sentences. "
    "Keep the passage numbers in square brackets that the partial summaries cite."
)
# Tokens kept for each pass's output when the caller does not say.
DEFAULT_SUMMARY_TOKENS = 200
# Past this share of its tokens a summary ends with its next finished sentence (--wrap-up), so it
# ends on a sentence instead of being cut at the limit (docs/QUERY_APP.md#summaries).
DEFAULT_WRAP_UP = 0.75
# A passage longer than a whole batch is cut to the batch, keeping at least this many tokens.
MIN_PASSAGE_TOKENS = 32

_CITATION = re.compile(r"\[(\d+)\]")
_SCOPE = re.compile(r"^(?P<path>.+?)(?::(?:p(?P<page_a>\d+)(?:-(?P<page_b>\d+))?|(?P<line_a>\d+)(?:-(?P<line_b>\d+))?))?$")


class SummaryError(UserError):
    """Nothing to summarise, or a scope that names no passage; the message says which."""


@dataclass(frozen=True)
class Scope:
    """FILE, FILE:FIRST-LAST (lines) or FILE:pFIRST-LAST (pages), as `info` and citations print them."""

    path: str
    pages: Optional[tuple[int, int]] = None
    lines: Optional[tuple[int, int]] = None

    @classmethod
    def parse(cls, spec: str) -> "Scope":
        match = _SCOPE.match(spec.strip())
        if not match:
            raise SummaryError(f"{spec!r}: expected FILE, FILE:FIRST-LAST (lines) or FILE:pFIRST-LAST (pages)")
        pages = lines = None
        if match["page_a"]:
            pages = (int(match["page_a"]), int(match["page_b"] or match["page_a"]))
        if match["line_a"]:
            lines = (int(match["line_a"]), int(match["line_b"] or match["line_a"]))
        for what, span in (("pages", pages), ("lines", lines)):
            if span and not 1 <= span[0] <= span[1]:
                raise SummaryError(f"{spec!r}: {what} must be FIRST-LAST with 1 <= FIRST <= LAST")
        return cls(match["path"], pages, lines)

    def covers(self, span: SourceSpan) -> bool:
        # A passage stored once for several identical files belongs to each of them (the line and
        # page numbers are those of the first file).
        if span.path != self.path and self.path not in span.also_in:
            return False
        if self.pages and (span.page is None or not self.pages[0] <= span.page <= self.pages[1]):
            return False
        if self.lines and (span.line_end < self.lines[0] or span.line_start > self.lines[1]):
            return False
        return True


def passages_in_scope(chunks, scope: Scope) -> list[Chunk]:
    """The passages of one file (or of its pages or lines), in reading order.

    A path given without its folders matches when it names exactly one file of the bundle."""
    found = [chunks[i] for i in range(len(chunks))]
    paths = {path for c in found for path in (c.source.path, *c.source.also_in)}
    if scope.path not in paths:
        tails = sorted(p for p in paths if p.endswith("/" + scope.path))
        if len(tails) != 1:
            hint = f"; did you mean one of: {', '.join(tails[:5])}" if tails else ""
            raise SummaryError(f"{scope.path}: no such document in this bundle{hint}")
        scope = Scope(tails[0], scope.pages, scope.lines)
    selected = [c for c in found if scope.covers(c.source)]
    if not selected:
        raise SummaryError(f"{scope.path}: no passage in the pages or lines asked for")
    return sorted(selected, key=lambda c: (c.source.page or 0, c.source.line_start, c.id))


def reading_order(hits: Sequence[Hit]) -> list[Chunk]:
    """Retrieved passages re-ordered by document and position, so the summary reads in order."""
    return sorted((h.chunk for h in hits), key=lambda c: (c.source.path, c.source.page or 0, c.source.line_start))


@dataclass
class SummarySentence:
    text: str
    sources: list[int]      # 1-based numbers into Summary.passages
    cited_by_model: bool    # the numbers were written by the model, not attributed afterwards


@dataclass
class SummaryStats:
    passages: int = 0
    batches: int = 0
    passes: int = 0
    prompt_tokens: int = 0          # over all passes
    new_tokens: int = 0             # over all passes
    first_token_s: float = 0.0      # of the streamed (last) pass, from the start
    total_s: float = 0.0
    finish_reason: str = ""
    loop_stopped: bool = False      # the repetition guard ended the last pass


@dataclass
class Summary:
    """Iterate to receive the final pass as it is generated; then read text, sentences and stats."""

    passages: list[Chunk]
    _deltas: Iterator[str] = field(default_factory=lambda: iter(()))
    text: str = ""
    stats: SummaryStats = field(default_factory=SummaryStats)

    def __iter__(self) -> Iterator[str]:
        for delta in self._deltas:
            self.text += delta
            yield delta

    def finish(self) -> "Summary":
        for _ in self:
            pass
        return self

    @property
    def sentences(self) -> list[SummarySentence]:
        return attribute_sentences(self.text, self.passages)

    @property
    def unsupported(self) -> list[SummarySentence]:
        return [s for s in self.sentences if not s.sources]


def attribute_sentences(text: str, passages: Sequence[Chunk]) -> list[SummarySentence]:
    """Each sentence with the passages it came from (see the module docstring)."""
    passage_terms = [set(terms(p.text)) for p in passages]
    sentences = []
    for start, end in sentence_spans(text):
        sentence = text[start:end].strip()
        if not sentence:
            continue
        written = [int(n) for n in _CITATION.findall(sentence) if 1 <= int(n) <= len(passages)]
        if written:
            sentences.append(SummarySentence(sentence, sorted(set(written)), True))
            continue
        words = set(terms(_CITATION.sub("", sentence)))
        overlaps = [len(words & t) for t in passage_terms]
        best = max(range(len(passages)), key=lambda i: (overlaps[i], -i), default=None)
        sources = [best + 1] if best is not None and overlaps[best] > 0 else []
        sentences.append(SummarySentence(sentence, sources, False))
    return sentences


def _numbered(number: int, chunk: Chunk) -> str:
    return f"[{number}] ({chunk.source.cite()})\n{chunk.text.strip()}"


class Summarizer:
    """Summaries with an assistant's tokenizer and decoder (see runtime.assistant.Assistant)."""

    def __init__(self, tokenizer, decoder):
        self.tokenizer = tokenizer
        self.decoder = decoder

    def summarize(self, passages: Sequence[Chunk], config: Optional[GenerationConfig] = None,
                  topic: Optional[str] = None, on_pass: Callable[[int, int], None] = lambda done, total: None,
                  wrap_up: float = DEFAULT_WRAP_UP) -> Summary:
        """Map passes run here (on_pass reports them); the last pass streams from the returned Summary.
        wrap_up: share of the tokens after which each pass ends with its next finished sentence (0: never)."""
        if not passages:
            raise SummaryError("nothing to summarise: no passages")
        config = config or GenerationConfig(max_new_tokens=DEFAULT_SUMMARY_TOKENS)
        # The output's room is what it asks for, but at most half the window (as for answers).
        room = min(config.max_new_tokens, self.decoder.max_length // 2)
        budget = self.decoder.max_length - room
        config = GenerationConfig(**{**vars(config), "max_new_tokens": room,
                                     "stop_token_ids": frozenset(config.stop_token_ids) | self.tokenizer.eos_token_ids})
        wrap_up_after = int(room * wrap_up) if wrap_up > 0 else 0
        started = time.perf_counter()
        summary = Summary(passages=list(passages))
        summary.stats.passages = len(passages)
        batches = self._batches(summary.passages, budget, topic)
        summary.stats.batches = len(batches)
        if len(batches) == 1:
            summary._deltas = self._stream(batches[0], config, summary.stats, started, wrap_up_after)
            return summary
        partials = []
        for done, messages in enumerate(batches, 1):
            partials.append("".join(self._stream(messages, config, summary.stats, started, wrap_up_after)).strip())
            on_pass(done, len(batches) + 1)
        summary._deltas = self._stream(self._reduce_messages(partials, budget, topic), config, summary.stats,
                                        started, wrap_up_after)
        return summary

    def _messages(self, system: str, body: str, topic: Optional[str]) -> list[dict]:
        ask = f"Summarise what these passages say about: {topic}" if topic else "Summarise these passages."
        return [{"role": "system", "content": system}, {"role": "user", "content": f"{body}\n\n{ask}"}]

    def _count(self, messages: list[dict]) -> int:
        return len(self.tokenizer.encode_chat(messages))

    def _batches(self, passages: list[Chunk], budget: int, topic: Optional[str]) -> list[list[dict]]:
        """Consecutive passages per batch, as many as fit; a passage alone too long is cut to fit."""
        batches, current = [], []
        for number, chunk in enumerate(passages, 1):
            text = _numbered(number, chunk)
            trial = current + [text]
            if self._count(self._messages(MAP_PROMPT, "\n\n".join(trial), topic)) <= budget:
                current = trial
                continue
            if current:
                batches.append(self._messages(MAP_PROMPT, "\n\n".join(current), topic))
            current = [self._cut_to_fit(text, budget, topic)]
        batches.append(self._messages(MAP_PROMPT, "\n\n".join(current), topic))
        return batches

    def _cut_to_fit(self, text: str, budget: int, topic: Optional[str]) -> str:
        if self._count(self._messages(MAP_PROMPT, text, topic)) <= budget:
            return text
        overhead = self._count(self._messages(MAP_PROMPT, "", topic))
        ids = self.tokenizer.encode(text)
        keep = max(MIN_PASSAGE_TOKENS, budget - overhead - 2)
        while keep >= MIN_PASSAGE_TOKENS:
            cut = self.tokenizer.decode(ids[:keep]) + " …"
            if self._count(self._messages(MAP_PROMPT, cut, topic)) <= budget:
                return cut
            keep -= 8
        raise SummaryError(f"the context window ({self.decoder.max_length} tokens) is too small to summarise anything")

    def _reduce_messages(self, partials: list[str], budget: int, topic: Optional[str]) -> list[dict]:
        """The partial summaries, the latest dropped first if they do not all fit (rare: they are short)."""
        kept = list(partials)
        while kept:
            body = "\n\n".join(f"Partial summary {i}:\n{p}" for i, p in enumerate(kept, 1))
            messages = self._messages(REDUCE_PROMPT, body, topic)
            if self._count(messages) <= budget:
                return messages
            kept.pop()
        raise SummaryError(f"the context window ({self.decoder.max_length} tokens) is too small to summarise anything")

    def _stream(self, messages: list[dict], config: GenerationConfig, stats: SummaryStats,
                started: float, wrap_up_after: int) -> Iterator[str]:
        ids = self.tokenizer.encode_chat(messages)
        stats.passes += 1
        stats.prompt_tokens += len(ids)
        return stream_text(self.decoder, self.tokenizer, ids, config, stats, started, wrap_up_after=wrap_up_after)
