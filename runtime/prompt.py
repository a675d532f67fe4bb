"""Turning a question and retrieved passages into chat messages with numbered sources,
trimmed to the model's context window."""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Optional, Sequence

from runtime.errors import UserError
from runtime.retrieval import Hit
from runtime.text_terms import terms

# System prompts by name (--system-prompt); which one is the default is measured (docs/QUERY_APP.md).
SYSTEM_PROMPTS = {
    "cite": (
        "You answer questions using only the numbered sources the user gives you. "
        "Cite the sources you use with their numbers in square brackets, like [1]. "
        "If the sources do not contain the answer, say that you do not know."
    ),
    "brief": (
        "Answer the question in one or two short sentences, using only the numbered sources. "
        "Use the words of the source and cite it like [1]. "
        "If the sources do not contain the answer, reply: I don't know."
    ),
    "extract": (
        "Answer with the one sentence of the numbered sources that answers the question, copied word for "
        "word, and cite it like [1]. "
        "If the sources do not contain the answer, reply: I don't know."
    ),
    # `brief` with one worked exchange: a small model imitates an example better than it follows a rule.
    # The example is invented (no document of any bundle), so it cannot leak an answer.
    "example": (
        "Answer the question in one or two short sentences, using only the numbered sources. "
        "Use the words of the source and cite it like [1]. "
        "If the sources do not contain the answer, reply: I don't know.\n\n"
        "Example.\nSources:\n\n[1] (pump.md:3-5)\nBefore the first start, prime the pump by opening valve V12 "
        "until water runs from the vent. Running the pump dry damages the seal.\n\n"
        "Question: How do I prime the pump?\n"
        "Answer: Open valve V12 until water runs from the vent [1]."
    ),
}
# Which passages an answer is given (--passage-order): "relevance" the best-scoring ones, often two
# of one document; "documents" the search's order, each document's best passage before any second one.
PASSAGE_ORDERS = ("relevance", "documents")
# Appended to the question with --answer-first: a small model follows an instruction best
# when it is the last thing it reads.
ANSWER_FIRST = "Answer in one sentence first, then stop."

# A passage shortened to fit is worth keeping only if this many of its tokens remain.
MIN_PASSAGE_TOKENS = 32
SHORTENED_MARK = " …"

_CITATION = re.compile(r"\[(\d+)\]")
# A run of this many words of the answer found word for word in a passage (and not in the
# question) is a quote of it: the passage is a source whatever number the answer writes.
QUOTE_WORDS = 8
_WORD = re.compile(r"\w+")


class ContextOverflow(UserError):
    """Even the question alone does not fit the context window."""


@dataclass(frozen=True)
class GroundingOptions:
    """How passages are put before the model and how its answer is bounded (all flags of `ask`).

    Defaults are what scored best on bench/data/python_faq_qa.jsonl (docs/QUERY_APP.md).
    """

    passages: int = 2               # most passages given to the model, best ranked first
    trim_sentences: int = 0         # 0: whole passages; n: the n sentences around the question's terms
    system_prompt: str = "brief"    # a key of SYSTEM_PROMPTS
    answer_first: bool = False      # end the question with ANSWER_FIRST
    stop_after_paragraph: bool = False  # the answer ends at a blank line after a finished sentence
    stop_after_sentences: int = 3       # the answer ends with its n-th finished sentence (and its citation); 0 never
    stop_at_unknown_citation: bool = True  # the answer ends before citing a source number it was not given
    abstain_below: float = 0.5      # say "I don't know" without generating when no given passage
                                    # (heading included) holds this share of the question's terms
    answer_prefix: str = ""         # the answer's first words, written for the model (it continues them)
    passage_order: str = "relevance"  # a key of PASSAGE_ORDERS: which retrieved passages come first

    def __post_init__(self):
        if self.system_prompt not in SYSTEM_PROMPTS:
            raise ValueError(f"unknown system prompt {self.system_prompt!r}; "
                             f"choose from {', '.join(SYSTEM_PROMPTS)}")
        if self.passage_order not in PASSAGE_ORDERS:
            raise ValueError(f"unknown passage order {self.passage_order!r}; choose from {', '.join(PASSAGE_ORDERS)}")


_SENTENCE_END = re.compile(r"(?<=[.!?:])\s+|\n\s*\n")


@dataclass
class Prompt:
    messages: list[dict]
    sources: list[Hit]
    dropped_turns: int = 0          # history messages left out, oldest first
    dropped_sources: int = 0        # retrieved passages left out, lowest rank first
    tokens: int = 0


def format_source(number: int, hit: Hit) -> str:
    return f"[{number}] ({hit.chunk.source.cite()})\n{hit.chunk.text.strip()}"


def question_coverage(question: str, text: str) -> float:
    """Share of the question's index terms (stemmed, no stopwords) that occur in `text`."""
    wanted = set(terms(question))
    return len(wanted & set(terms(text))) / len(wanted) if wanted else 1.0


def trim_passage(text: str, question: str, sentences: int) -> str:
    """The `sentences` consecutive sentences of `text` holding most of the question's terms
    (the earliest such window), marked as shortened where text was cut."""
    parts = [p for p in _SENTENCE_END.split(text.strip()) if p.strip()]
    if sentences <= 0 or len(parts) <= sentences:
        return text
    wanted = set(terms(question))
    scores = [len(wanted & set(terms(part))) for part in parts]
    best = max(range(len(parts) - sentences + 1), key=lambda i: (sum(scores[i:i + sentences]), -i))
    kept = " ".join(p.strip() for p in parts[best:best + sentences])
    return ("… " if best > 0 else "") + kept + (SHORTENED_MARK if best + sentences < len(parts) else "")


def ground_hits(question: str, hits: Sequence[Hit], options: GroundingOptions) -> list[Hit]:
    """The passages the model is shown: the best `options.passages`, trimmed if asked."""
    hits = list(hits)[:max(0, options.passages)]
    if options.trim_sentences > 0:
        hits = [dataclasses.replace(hit, chunk=dataclasses.replace(
            hit.chunk, text=trim_passage(hit.chunk.text, question, options.trim_sentences))) for hit in hits]
    return hits


def build_prompt(question: str, hits: Sequence[Hit], history: Sequence[dict] = (),
                 instructions: Optional[str] = None, options: GroundingOptions = GroundingOptions()) -> Prompt:
    """Messages for one question with every passage and turn given."""
    base = SYSTEM_PROMPTS[options.system_prompt]
    system = base if not instructions else f"{base}\n\n{instructions}"
    if hits:
        sources = "\n\n".join(format_source(n, hit) for n, hit in enumerate(hits, 1))
        content = f"Sources:\n\n{sources}\n\nQuestion: {question}"
        if options.answer_first:
            content = f"{content}\n{ANSWER_FIRST}"
    else:
        content = question
    messages = [{"role": "system", "content": system}, *history, {"role": "user", "content": content}]
    return Prompt(messages=messages, sources=list(hits))


def fit_prompt(question: str, hits: Sequence[Hit], tokenizer, budget: int, history: Sequence[dict] = (),
               instructions: Optional[str] = None, options: GroundingOptions = GroundingOptions()) -> Prompt:
    """The fullest prompt whose rendered chat is at most `budget` tokens.

    Oldest history turns go first, then passages from the lowest rank; when not even the
    top passage fits whole, it is shortened at a token boundary. Counting is exact: the
    prompt returned is rendered through the model's own chat template and tokenized.
    The work is linear in the conversation's length: each turn is tokenized at most once,
    and text that cannot fit is never tokenized (a long history costs no more than a short one).
    """
    def count(prompt: Prompt) -> int:
        prompt.tokens = len(tokenizer.encode_chat(prompt.messages))
        return prompt.tokens

    too_long = f"only {budget} tokens are left in the context window after the room kept for the answer"
    chars = len(question) + len(instructions or "")
    if chars > budget * tokenizer.max_token_chars:
        raise ContextOverflow(f"the question and instructions are {chars} characters long but {too_long}")
    bare = build_prompt(question, [], (), instructions, options)
    if count(bare) > budget:
        raise ContextOverflow(f"the question needs {bare.tokens} tokens but {too_long}")
    history = list(history)
    hits = list(hits)
    wanted = len(hits)
    prompt = build_prompt(question, hits, (), instructions, options)
    kept: list[dict] = []
    if count(prompt) <= budget and history:
        def with_turns(turns: Sequence[dict]) -> Prompt:
            return build_prompt(question, hits, turns, instructions, options)

        kept = _newest_turns_that_fit(history, with_turns, tokenizer, budget, count, prompt.tokens)
        prompt = with_turns(kept)
        count(prompt)
    dropped_turns = len(history) - len(kept)
    history = kept
    top = hits[0] if hits else None
    while prompt.tokens > budget and hits:
        hits.pop()
        prompt = build_prompt(question, hits, history, instructions, options)
        count(prompt)
    if top is not None and not hits:
        prompt = _shortened_top(question, top, tokenizer, budget, history, instructions, count, options) or prompt
    prompt.dropped_turns = dropped_turns
    prompt.dropped_sources = wanted - len(prompt.sources)
    return prompt


def _newest_turns_that_fit(history: list[dict], with_turns, tokenizer, budget: int, count, base: int) -> list[dict]:
    """The longest tail of the history that fits beside the question and passages, starting with a user turn.

    Chosen from per-turn token counts (the newest turns first, so text older than the cut is never
    tokenized), then confirmed exactly on the rendered prompt. with_turns(turns): the prompt with
    those turns; base: its token count with none.
    """
    overhead = {}       # tokens the template adds around one message, per role

    def turn_tokens(turn: dict, room: int) -> int:
        text = turn.get("content") or ""
        if len(text) > room * tokenizer.max_token_chars:
            return room + 1     # more characters than `room` tokens can spell: over, without tokenizing
        role = turn.get("role")
        if role not in overhead:
            overhead[role] = count(with_turns([{"role": role, "content": ""}])) - base
        return overhead[role] + len(tokenizer.encode(text))

    start, used = len(history), base
    while start > 0:
        cost = turn_tokens(history[start - 1], budget - used)
        if used + cost > budget:
            break
        start, used = start - 1, used + cost

    def first_user(i: int) -> int:
        # A conversation cut short starts with the user speaking.
        while i < len(history) and history[i].get("role") != "user":
            i += 1
        return i

    if start > 0:
        start = first_user(start)

    # The per-turn sums are close but not exact (the template's text around a message can merge
    # with its first token): the rendered count decides, dropping or taking back whole turns.
    def fits(i: int) -> bool:
        return count(with_turns(history[i:])) <= budget

    while start < len(history) and not fits(start):
        start = first_user(start + 1)
    room = budget - base
    while start > 0:
        earlier = max((i for i in range(start) if history[i].get("role") == "user"), default=0)
        if sum(len(t.get("content") or "") for t in history[earlier:]) > room * tokenizer.max_token_chars \
                or not fits(earlier):
            break
        start = earlier
    return history[start:]


def _shortened_top(question, top: Hit, tokenizer, budget, history, instructions, count,
                   options: GroundingOptions) -> Optional[Prompt]:
    """The prompt with the top passage cut to the tokens that fit, or None if too few do."""
    def with_text(text: str) -> Prompt:
        hit = dataclasses.replace(top, chunk=dataclasses.replace(top.chunk, text=text))
        return build_prompt(question, [hit], history, instructions, options)

    ids = tokenizer.encode(top.chunk.text.strip())
    keep = budget - count(with_text(SHORTENED_MARK))
    while keep >= MIN_PASSAGE_TOKENS:
        # Decoding a prefix of whole tokens can still end inside a multi-byte character.
        text = tokenizer.decode(ids[:keep]).rstrip("\ufffd") + SHORTENED_MARK
        prompt = with_text(text)
        over = count(prompt) - budget
        if over <= 0:
            return prompt
        keep -= over
    return None


def unknown_citations(sources: int) -> list[str]:
    """Citation markers of sources not given ([0], and [n] past `sources` up to [99]): an answer
    that writes one has stopped reading its sources (it lists "[1] [2] [3] …" until the token limit)."""
    return ["[0]", *(f"[{n}]" for n in range(sources + 1, 100))]


def cited_sources(answer: str, sources: Sequence[Hit]) -> list[Hit]:
    """The sources an answer points at with [n] markers, in order of first mention."""
    seen: list[Hit] = []
    for match in _CITATION.finditer(answer):
        number = int(match.group(1))
        if 1 <= number <= len(sources) and sources[number - 1] not in seen:
            seen.append(sources[number - 1])
    return seen


def _word_runs(text: str, n: int) -> set[tuple[str, ...]]:
    words = [w.lower() for w in _WORD.findall(_CITATION.sub(" ", text))]
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def quoted_sources(answer: str, question: str, sources: Sequence[Hit], words: int = QUOTE_WORDS) -> list[Hit]:
    """The sources an answer copies a run of `words` words from, in the order given.

    A small model often quotes passage [1] and writes [2] after it; the quote, not the number,
    says where the text came from. Runs the question holds too are no quote (a passage's heading
    often repeats the question, and so does the answer)."""
    runs = _word_runs(answer, words) - _word_runs(question, words)
    return [hit for hit in sources if runs & _word_runs(hit.chunk.text, words)] if runs else []


def answer_sources(answer: str, question: str, sources: Sequence[Hit]) -> list[Hit]:
    """The sources an answer rests on: those it cites by number (in order of first mention), then
    those it quotes; all sources given when it cites no number (the model was told to answer from
    all of them, and a person should see all of them)."""
    named = cited_sources(answer, sources)
    if not named:
        return list(sources)
    return named + [hit for hit in quoted_sources(answer, question, sources) if hit not in named]
