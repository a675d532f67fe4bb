"""A Hugging Face tokenizer built from a GGUF file's own vocabulary, merges and settings.

transformers' GGUF tokenizer conversion swaps bos/eos, ignores add_bos_token and loses the
pre-tokenizer (docs/MEASUREMENTS.md#gguf-tokenizer), so the tokenizer is assembled here from the GGUF metadata:
`tokenizer.ggml.tokens/merges/token_type`, the bos/eos ids, `add_bos_token`, `tokenizer.ggml.pre`
and `tokenizer.chat_template`. `ReferenceBpe` re-implements llama.cpp's byte-level BPE directly on
the same tokens and merges, independent of the `tokenizers` library, to check the result.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

import regex
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from bundler.errors import BuildError
from runtime.layout import GENERATION_CONFIG_FILE, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE

TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4
SPM_SPACE = "\u2581"  # SentencePiece's visible space

_GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3_PATTERN = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass(frozen=True)
class PreTokenizerRule:
    """How llama.cpp splits text before BPE for one `tokenizer.ggml.pre` value."""

    patterns: tuple[str, ...]  # applied in order, as llama.cpp's unicode_regex_split does
    ignore_merges: bool  # a whole piece that is itself a token skips the merges (Llama 3)

    def hf_pre_tokenizer(self) -> pre_tokenizers.PreTokenizer:
        if self.patterns == (r"\p{N}", _GPT2_PATTERN):
            return pre_tokenizers.Sequence(
                [
                    pre_tokenizers.Digits(individual_digits=True),
                    pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
                ]
            )
        splits = [pre_tokenizers.Split(Regex(p), behavior="isolated", invert=False) for p in self.patterns]
        return pre_tokenizers.Sequence(splits + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


PRE_TOKENIZER_RULES = {
    "gpt-2": PreTokenizerRule((_GPT2_PATTERN,), ignore_merges=False),
    "smollm": PreTokenizerRule((r"\p{N}", _GPT2_PATTERN), ignore_merges=False),
    "llama-bpe": PreTokenizerRule((_LLAMA3_PATTERN,), ignore_merges=True),
    "llama3": PreTokenizerRule((_LLAMA3_PATTERN,), ignore_merges=True),
}


@dataclass
class GgufVocabulary:
    model: str  # "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    tokens: list[str]
    token_types: list[int]
    scores: list[float]
    merges: list[str]
    pre: str
    bos_id: Optional[int]
    eos_id: int
    stop_ids: list[int]  # eos plus end-of-turn tokens the GGUF names
    unk_id: Optional[int]
    pad_id: Optional[int]
    add_bos: bool
    chat_template: Optional[str]
    context_length: int
    add_space_prefix: bool = True

    @property
    def rule(self) -> PreTokenizerRule:
        return PRE_TOKENIZER_RULES[self.pre]


def _field(reader, key: str, default=None):
    field = reader.get_field(key)
    return default if field is None else field.contents()


def read_vocabulary(path: Path, reader) -> GgufVocabulary:
    model = _field(reader, "tokenizer.ggml.model")
    if model not in ("gpt2", "llama"):
        raise BuildError(path, f"tokenizer model {model!r} is not supported ('gpt2' byte-level BPE or 'llama' SentencePiece)")
    pre = _field(reader, "tokenizer.ggml.pre", "gpt-2" if model == "gpt2" else "default")
    if model == "gpt2" and pre not in PRE_TOKENIZER_RULES:
        raise BuildError(path, f"pre-tokenizer {pre!r} is not supported (supported: {', '.join(sorted(PRE_TOKENIZER_RULES))})")
    tokens = list(_field(reader, "tokenizer.ggml.tokens"))
    eos_id = _field(reader, "tokenizer.ggml.eos_token_id")
    if eos_id is None:
        raise BuildError(path, "GGUF names no tokenizer.ggml.eos_token_id")
    stop_ids = [int(eos_id)]
    for key in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"):
        extra = _field(reader, key)
        if extra is not None and int(extra) not in stop_ids:
            stop_ids.append(int(extra))
    architecture = _field(reader, "general.architecture")
    bos_id = _field(reader, "tokenizer.ggml.bos_token_id")
    unk_id = _field(reader, "tokenizer.ggml.unknown_token_id")
    pad_id = _field(reader, "tokenizer.ggml.padding_token_id")
    return GgufVocabulary(
        model=model,
        tokens=tokens,
        token_types=[int(t) for t in _field(reader, "tokenizer.ggml.token_type", [1] * len(tokens))],
        scores=[float(x) for x in _field(reader, "tokenizer.ggml.scores", [0.0] * len(tokens))],
        merges=list(_field(reader, "tokenizer.ggml.merges", [])),
        pre=pre,
        bos_id=None if bos_id is None else int(bos_id),
        eos_id=int(eos_id),
        stop_ids=stop_ids,
        unk_id=None if unk_id is None else int(unk_id),
        pad_id=None if pad_id is None else int(pad_id),
        # llama.cpp's defaults: BOS for SentencePiece vocabularies, none for BPE, unless the file says
        add_bos=bool(_field(reader, "tokenizer.ggml.add_bos_token", model == "llama")),
        add_space_prefix=bool(_field(reader, "tokenizer.ggml.add_space_prefix", model == "llama")),
        chat_template=_field(reader, "tokenizer.chat_template"),
        context_length=int(_field(reader, f"{architecture}.context_length", 2048)),
    )


def _bpe_tokenizer(vocab: GgufVocabulary) -> Tokenizer:
    bpe = models.BPE(
        vocab={token: i for i, token in enumerate(vocab.tokens)},
        merges=[tuple(m.split(" ", 1)) for m in vocab.merges],
        ignore_merges=vocab.rule.ignore_merges,
    )
    tokenizer = Tokenizer(bpe)
    tokenizer.pre_tokenizer = vocab.rule.hf_pre_tokenizer()
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def spm_merges(vocab: GgufVocabulary) -> list[tuple[str, str]]:
    """SentencePiece scores as BPE merges: every split of a token into two tokens, best-scored token first.

    A merge sequence ordered by the merged token's score reproduces SentencePiece's
    highest-score-bigram-first segmentation (the same derivation transformers uses).
    """
    ids = {token: i for i, token in enumerate(vocab.tokens)}
    merges = []
    for token, score in zip(vocab.tokens, vocab.scores):
        local = [(token[:k], token[k:]) for k in range(1, len(token)) if token[:k] in ids and token[k:] in ids]
        local.sort(key=lambda pair: (ids[pair[0]], ids[pair[1]]))
        merges.extend((score, left, right) for left, right in local)
    merges.sort(key=lambda merge: -merge[0])
    return [(left, right) for _, left, right in merges]


def _spm_tokenizer(vocab: GgufVocabulary) -> Tokenizer:
    unk = vocab.tokens[vocab.unk_id] if vocab.unk_id is not None else None
    bpe = models.BPE(
        vocab={token: i for i, token in enumerate(vocab.tokens)},
        merges=spm_merges(vocab),
        unk_token=unk,
        fuse_unk=True,
        byte_fallback=True,
    )
    tokenizer = Tokenizer(bpe)
    steps = [normalizers.Replace(" ", SPM_SPACE)]
    decode_steps = [decoders.Replace(SPM_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if vocab.add_space_prefix:
        steps.insert(0, normalizers.Prepend(SPM_SPACE))
        decode_steps.append(decoders.Strip(content=" ", left=1, right=0))
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.decoder = decoders.Sequence(decode_steps)
    return tokenizer


def build_tokenizer(vocab: GgufVocabulary) -> Tokenizer:
    tokenizer = _bpe_tokenizer(vocab) if vocab.model == "gpt2" else _spm_tokenizer(vocab)
    added = []
    for token, kind in zip(vocab.tokens, vocab.token_types):
        if kind in (TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED):
            added.append(AddedToken(token, special=kind == TOKEN_TYPE_CONTROL, normalized=False))
    tokenizer.add_special_tokens([t for t in added if t.special])
    tokenizer.add_tokens([t for t in added if not t.special])
    if vocab.add_bos and vocab.bos_id is not None:
        bos = vocab.tokens[vocab.bos_id]
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab.bos_id)]
        )
    return tokenizer


def write_tokenizer_files(vocab: GgufVocabulary, out_dir: Path) -> None:
    """tokenizer.json, tokenizer_config.json and generation_config.json in Hugging Face layout."""
    tokenizer = build_tokenizer(vocab)

    def name(token_id: Optional[int]) -> Optional[str]:
        return None if token_id is None else vocab.tokens[token_id]

    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": name(vocab.bos_id),
        "eos_token": name(vocab.eos_id),
        "unk_token": name(vocab.unk_id),
        "pad_token": name(vocab.pad_id),
        "add_bos_token": vocab.add_bos,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": vocab.context_length,
    }
    if vocab.chat_template is not None:
        config["chat_template"] = vocab.chat_template
    generation = {"eos_token_id": vocab.stop_ids, "bos_token_id": vocab.bos_id, "pad_token_id": vocab.pad_id}
    tokenizer.save(str(out_dir / TOKENIZER_FILE))
    (out_dir / TOKENIZER_CONFIG_FILE).write_text(json.dumps(config, indent=1), encoding="utf-8")
    (out_dir / GENERATION_CONFIG_FILE).write_text(json.dumps(generation, indent=1), encoding="utf-8")


@lru_cache(maxsize=1)
def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-ins for the 256 byte values."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, codes)}


class ReferenceBpe:
    """llama.cpp's byte-level BPE over the GGUF's tokens and merges, in plain Python (slow, for checks)."""

    def __init__(self, vocab: GgufVocabulary):
        self.ids = {token: i for i, token in enumerate(vocab.tokens)}
        self.ranks = {tuple(m.split(" ", 1)): rank for rank, m in enumerate(vocab.merges)}
        self.rule = vocab.rule
        self.patterns = [regex.compile(p) for p in vocab.rule.patterns]

    def _pieces(self, text: str) -> list[str]:
        pieces = [text]
        for pattern in self.patterns:
            split = []
            for piece in pieces:
                start = 0
                for match in pattern.finditer(piece):
                    if match.start() > start:
                        split.append(piece[start : match.start()])
                    split.append(match.group())
                    start = match.end()
                if start < len(piece):
                    split.append(piece[start:])
            pieces = split
        return pieces

    def _merge(self, word: str) -> list[str]:
        if self.rule.ignore_merges and word in self.ids:
            return [word]
        symbols = list(word)
        while len(symbols) > 1:
            pairs = [(self.ranks.get((a, b)), i) for i, (a, b) in enumerate(zip(symbols, symbols[1:]))]
            best = min((p for p in pairs if p[0] is not None), default=None)
            if best is None:
                break
            i = best[1]
            symbols[i : i + 2] = [symbols[i] + symbols[i + 1]]
        return symbols

    def encode(self, text: str) -> list[int]:
        table = _byte_to_unicode()
        ids = []
        for piece in self._pieces(text):
            word = "".join(table[b] for b in piece.encode("utf-8"))
            ids.extend(self.ids[symbol] for symbol in self._merge(word))
        return ids


class ReferenceSpm:
    """llama.cpp's SentencePiece tokenizer over the GGUF's tokens and scores, in plain Python (slow, for checks).

    Adjacent symbols whose concatenation is a token merge, highest score first (leftmost on ties);
    characters that are no token fall back to their <0xXX> byte tokens.
    """

    def __init__(self, vocab: GgufVocabulary):
        self.ids = {token: i for i, token in enumerate(vocab.tokens)}
        self.scores = vocab.scores
        self.add_space_prefix = vocab.add_space_prefix

    def encode(self, text: str) -> list[int]:
        if not text:
            return []
        text = (" " + text if self.add_space_prefix else text).replace(" ", SPM_SPACE)
        symbols = list(text)
        while len(symbols) > 1:
            best = None
            for i in range(len(symbols) - 1):
                merged = self.ids.get(symbols[i] + symbols[i + 1])
                if merged is not None and (best is None or self.scores[merged] > best[0]):
                    best = (self.scores[merged], i)
            if best is None:
                break
            i = best[1]
            symbols[i : i + 2] = [symbols[i] + symbols[i + 1]]
        ids = []
        for symbol in symbols:
            if symbol in self.ids:
                ids.append(self.ids[symbol])
            else:
                ids.extend(self.ids[f"<0x{byte:02X}>"] for byte in symbol.encode("utf-8"))
        return ids


def reference_tokenizer(vocab: GgufVocabulary):
    """The independent check implementation for this vocabulary's tokenizer model."""
    return ReferenceBpe(vocab) if vocab.model == "gpt2" else ReferenceSpm(vocab)
