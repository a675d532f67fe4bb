"""Question answering over the bundle: retrieval, prompt, generation, citations."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

from runtime.bundle import Bundle
from runtime.decoder import Decoder, load_decoder
from runtime.generation import GenerationConfig, generate
from runtime.memory import bundle_threads
from runtime.prompt import Prompt, cited_sources, fit_prompt
from runtime.retrieval import Hit, Retriever
from runtime.stop_strings import StopStringFilter
from runtime.support_quote import Support, find_support
from runtime.tokenizer import ChatTokenizer

# Tokens kept free for the answer when the caller does not say how long it may be.
DEFAULT_ANSWER_TOKENS = 256


@dataclass
class AnswerStats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    retrieval_s: float = 0.0
    first_token_s: float = 0.0
    total_s: float = 0.0
    finish_reason: str = ""         # "stop" (end token or stop string) or "length" (max_new_tokens)

    @property
    def decode_tokens_per_s(self) -> float:
        decode_s = self.total_s - self.first_token_s
        return (self.new_tokens - 1) / decode_s if self.new_tokens > 1 and decode_s > 0 else 0.0


@dataclass
class Answer:
    """Iterate to receive the answer's text as it is generated; then read text, sources and stats."""

    prompt: Prompt
    _deltas: Iterator[str]
    text: str = ""
    stats: AnswerStats = field(default_factory=AnswerStats)
    question: str = ""

    @property
    def sources(self) -> list[Hit]:
        return self.prompt.sources

    @property
    def cited(self) -> list[Hit]:
        """Sources the answer cites; all sources given to the model when it cites none."""
        return cited_sources(self.text, self.sources) or list(self.sources)

    @property
    def support(self) -> Optional[Support]:
        """The sentences of the cited passages that best back the text so far; None without passages."""
        return find_support(self.question, self.text, self.sources)

    def __iter__(self) -> Iterator[str]:
        for delta in self._deltas:
            self.text += delta
            yield delta

    def finish(self) -> "Answer":
        for _ in self:
            pass
        return self

    def close(self) -> None:
        """Stop generating (an abandoned stream, Ctrl-C); the text so far stays."""
        close = getattr(self._deltas, "close", None)
        if close is not None:
            close()


class Assistant:
    def __init__(self, tokenizer: ChatTokenizer, decoder: Decoder, retriever: Retriever):
        self.tokenizer = tokenizer
        self.decoder = decoder
        self.retriever = retriever

    @classmethod
    def from_bundle(cls, bundle: Bundle, threads: Optional[int] = None, ctx: Optional[int] = None) -> "Assistant":
        threads = bundle_threads(bundle.manifest, threads)
        return cls(
            tokenizer=ChatTokenizer.from_bundle(bundle),
            decoder=load_decoder(bundle, threads=threads, max_length=ctx),
            retriever=Retriever.from_bundle(bundle),
        )

    @property
    def default_mode(self) -> str:
        modes = self.retriever.modes
        return "hybrid" if "hybrid" in modes else modes[0]

    def search(self, query: str, k: int = 4, mode: Optional[str] = None) -> list[Hit]:
        return self.retriever.search(query, k=k, mode=mode or self.default_mode)

    def ask(
        self,
        question: str,
        k: int = 4,
        mode: Optional[str] = None,
        config: Optional[GenerationConfig] = None,
        history: Sequence[dict] = (),
        use_documents: bool = True,
        instructions: Optional[str] = None,
        stop: Sequence[str] = (),
    ) -> Answer:
        """Raises runtime.prompt.ContextOverflow when the question cannot fit the context window.

        instructions: added to the system prompt (an API client's own system message).
        stop: strings that end the answer; they are not part of it.
        """
        config = config or GenerationConfig(max_new_tokens=DEFAULT_ANSWER_TOKENS)
        started = time.perf_counter()
        hits = self.search(question, k=k, mode=mode) if use_documents and k > 0 else []
        retrieval_s = time.perf_counter() - started
        # The answer's room is what it asks for, but at most half the window: a long --max-tokens
        # should not starve the passages; generation then simply stops at the window's end.
        budget = self.decoder.max_length - min(config.max_new_tokens, self.decoder.max_length // 2)
        prompt = fit_prompt(question, hits, self.tokenizer, budget, history, instructions)
        prompt_ids = self.tokenizer.encode_chat(prompt.messages)
        stop_ids = frozenset(config.stop_token_ids) | self.tokenizer.eos_token_ids
        config = GenerationConfig(**{**vars(config), "stop_token_ids": stop_ids})
        answer = Answer(prompt=prompt, _deltas=iter(()))
        answer.question = question
        answer.stats.prompt_tokens = len(prompt_ids)
        answer.stats.retrieval_s = retrieval_s
        answer._deltas = self._stream(prompt_ids, config, StopStringFilter(stop), answer.stats, started)
        return answer

    def _stream(self, prompt_ids: list[int], config: GenerationConfig, stops: StopStringFilter,
                stats: AnswerStats, started: float) -> Iterator[str]:
        self.decoder.reset()
        stream = self.tokenizer.StreamDecoder(self.tokenizer)
        stats.finish_reason = "length"
        try:
            for token in generate(self.decoder, prompt_ids, config):
                if token in config.stop_token_ids:
                    stats.finish_reason = "stop"
                    break
                stats.new_tokens += 1
                if stats.new_tokens == 1:
                    stats.first_token_s = time.perf_counter() - started
                text = stops.push(stream.push(token))
                if text:
                    yield text
                if stops.stopped:
                    stats.finish_reason = "stop"
                    break
            else:
                if stats.new_tokens < config.max_new_tokens:
                    stats.finish_reason = "stop"
            tail = stops.push(stream.flush()) + stops.flush()
            if tail:
                yield tail
        finally:
            stats.total_s = time.perf_counter() - started
