"""Cutting parsed documents into retrieval chunks: by structure first, then to a token budget.

A chunk never crosses a section (heading) or page boundary, so its source span names one
heading and one page. A heading always shares its chunk with the section's first paragraph, even
over the budget; a section holding only its heading makes no chunk. Paragraphs are packed whole
while they fit; consecutive chunks of one section share trailing paragraphs up to the overlap; a
paragraph longer than the budget is cut into overlapping word windows.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import groupby

from bundler.formats import Block
from runtime.retrieval import SourceSpan

_TOKEN = re.compile(r"\w+|[^\w\s]")
_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class ChunkingConfig:
    max_tokens: int = 200   # all-MiniLM-L6-v2 reads 256 word pieces; words run ~1.2 pieces
    overlap_tokens: int = 40


@dataclass
class ChunkDraft:
    text: str
    span: SourceSpan


def token_cost(text: str) -> int:
    """Approximate word-piece count; long unbroken strings count by length."""
    return max(len(_TOKEN.findall(text)), len(text) // 10)


def chunk_blocks(relative: str, blocks: list[Block], config: ChunkingConfig = ChunkingConfig()) -> list[ChunkDraft]:
    drafts: list[ChunkDraft] = []
    sections = [list(section) for _, section in groupby(blocks, key=lambda b: (b.page, b.heading))]
    has_body = any(not b.is_heading for b in blocks)
    for section in sections:
        # A title straight above its first subsection (whose heading path carries it) or with
        # nothing under it: a chunk of it would be retrieved and cited with nothing in it.
        if has_body and all(b.is_heading for b in section):
            continue
        pieces = [p for block in section for p in _fit(block, config)]
        for group in _pack(pieces, config):
            drafts.append(_draft(relative, group))
    return drafts


def _fit(block: Block, config: ChunkingConfig) -> list[Block]:
    """The block itself if within budget, else overlapping word windows of it."""
    if token_cost(block.text) <= config.max_tokens:
        return [block]
    words = list(_WORD.finditer(block.text))
    costs = [token_cost(w.group()) for w in words]
    windows: list[Block] = []
    start = 0
    while start < len(words):
        end, used = start, 0
        while end < len(words) and (end == start or used + costs[end] <= config.max_tokens):
            used += costs[end]
            end += 1
        windows.append(_slice(block, words[start].start(), words[end - 1].end()))
        if end == len(words):
            break
        back, kept = end, 0
        while back - 1 > start and kept + costs[back - 1] <= config.overlap_tokens:
            back -= 1
            kept += costs[back]
        start = back
    return windows


def _slice(block: Block, start: int, end: int) -> Block:
    first_line = block.line_start + block.text.count("\n", 0, start)
    last_line = block.line_start + block.text.count("\n", 0, end)
    return Block(
        text=block.text[start:end],
        line_start=min(first_line, block.line_end),
        line_end=min(last_line, block.line_end),
        char_start=min(block.char_start + start, block.char_end),
        char_end=min(block.char_start + end, block.char_end),
        heading=block.heading,
        page=block.page,
        is_heading=block.is_heading,
    )


def _pack(pieces: list[Block], config: ChunkingConfig) -> list[list[Block]]:
    groups: list[list[Block]] = []
    current: list[Block] = []
    used = 0
    for piece in pieces:
        cost = token_cost(piece.text)
        # A heading never ends a chunk: alone it holds nothing to retrieve or to cite.
        if current and used + cost > config.max_tokens and not all(b.is_heading for b in current):
            groups.append(current)
            carried: list[Block] = []
            kept = 0
            for previous in reversed(current[1:]):
                previous_cost = token_cost(previous.text)
                if kept + previous_cost + cost > config.max_tokens or kept + previous_cost > config.overlap_tokens:
                    break
                carried.insert(0, previous)
                kept += previous_cost
            current, used = carried, kept
        current.append(piece)
        used += cost
    if current:
        groups.append(current)
    return groups


def _draft(relative: str, group: list[Block]) -> ChunkDraft:
    first = group[0]
    span = SourceSpan(
        path=relative,
        line_start=min(b.line_start for b in group),
        line_end=max(b.line_end for b in group),
        page=first.page,
        heading=first.heading,
        char_start=min(b.char_start for b in group),
        char_end=max(b.char_end for b in group),
    )
    return ChunkDraft("\n\n".join(b.text for b in group), span)
