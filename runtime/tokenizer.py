"""Tokenizer and chat template for the bundled model, with Hugging Face semantics.

Two `tokenizers.Tokenizer` instances share one tokenizer.json: one reads control strings such as
`<|im_start|>` as plain text (documents and user messages may contain them), the other turns them
into their special ids (only for what the chat template itself writes).
"""
from __future__ import annotations

import functools
import json
import re
from datetime import datetime
from pathlib import Path
from typing import Optional

import jinja2
import jinja2.ext
import jinja2.sandbox
import numpy as np
from tokenizers import Tokenizer

from runtime.layout import GENERATION_CONFIG_FILE, MODEL_FOLDER, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE
from runtime.repetition import SPACING

# Unicode private-use characters stand in for control strings inside message content while the
# template renders, so that the template's own control tokens can be told apart afterwards.
_PRIVATE_USE_START = 0xF0000


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    # Jinja's own tojson escapes HTML characters; Hugging Face overrides it the same way
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def compile_chat_template(template: str) -> jinja2.Template:
    """The template compiled in the environment transformers' apply_chat_template uses."""
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(template)


# A vocabulary entry spelling a number: ASCII digits, after the space marker of byte-level BPE
# ("Ġ") or SentencePiece ("▁") if any.
_NUMBER_ENTRY = re.compile("[\u0120\u2581 ]?[0-9]+")
_DIGITS = frozenset("0123456789")
# How vocabulary entries spell leading whitespace: byte-level BPE's space, line feed, tab and
# carriage return (U+0120, U+010A, U+0109, U+010D), SentencePiece's U+2581, or plain.
_LEADING_SPACE = " \t\n\r\u0120\u010a\u0109\u010d\u2581"


def _token_text(value) -> Optional[str]:
    """A special token as tokenizer_config.json stores it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content")
    return value


class ChatTokenizer:
    def __init__(self, tokenizer_json: str, config: dict, generation: Optional[dict] = None):
        self._plain = Tokenizer.from_str(tokenizer_json)
        self._plain.encode_special_tokens = True
        self._special = Tokenizer.from_str(tokenizer_json)
        self.config = config
        self.special_tokens = {
            t.content: i for i, t in self._special.get_added_tokens_decoder().items() if t.special
        }
        self.bos_token = _token_text(config.get("bos_token"))
        self.eos_token = _token_text(config.get("eos_token"))
        self.template_variables = {
            key: _token_text(config.get(key)) for key in ("bos_token", "eos_token", "unk_token", "pad_token")
        }
        template = config.get("chat_template")
        if isinstance(template, list):  # several named templates: the default one is used
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        self._template = compile_chat_template(template) if template else None
        stop = set()
        eos_from_generation = (generation or {}).get("eos_token_id")
        if isinstance(eos_from_generation, int):
            stop.add(eos_from_generation)
        elif eos_from_generation:
            stop.update(int(i) for i in eos_from_generation)
        if self.eos_token is not None and self._special.token_to_id(self.eos_token) is not None:
            stop.add(self._special.token_to_id(self.eos_token))
        self.eos_token_ids: frozenset[int] = frozenset(stop)

    @classmethod
    def from_folder(cls, folder: str | Path) -> "ChatTokenizer":
        folder = Path(folder)
        generation_path = folder / GENERATION_CONFIG_FILE
        return cls(
            (folder / TOKENIZER_FILE).read_text(encoding="utf-8"),
            json.loads((folder / TOKENIZER_CONFIG_FILE).read_text(encoding="utf-8")),
            json.loads(generation_path.read_text(encoding="utf-8")) if generation_path.is_file() else None,
        )

    @classmethod
    def from_bundle(cls, bundle) -> "ChatTokenizer":
        def text(name: str) -> str:
            return bytes(bundle.read(f"{MODEL_FOLDER}/{name}")).decode("utf-8")

        generation = None
        if f"{MODEL_FOLDER}/{GENERATION_CONFIG_FILE}" in bundle.names():
            generation = json.loads(text(GENERATION_CONFIG_FILE))
        return cls(text(TOKENIZER_FILE), json.loads(text(TOKENIZER_CONFIG_FILE)), generation)

    @property
    def vocab_size(self) -> int:
        return self._plain.get_vocab_size(with_added_tokens=True)

    @functools.cached_property
    def max_token_chars(self) -> int:
        """The most characters of text one token can stand for.

        A vocabulary entry is spelled with at least as many characters as the text it decodes to
        (byte-level entries use one character per byte), so a text of n characters needs at least
        n / max_token_chars tokens: longer texts are known not to fit without tokenizing them.
        """
        return max(len(entry) for entry in self._vocabulary)

    @functools.cached_property
    def _vocabulary(self) -> dict:
        """entry -> id; read once (a Python dict of the whole vocabulary is costly to build)."""
        return self._plain.get_vocab(with_added_tokens=True)

    @functools.cached_property
    def number_token_ids(self) -> frozenset:
        """Ids of the tokens that spell only digits (with or without a leading space), for the
        repetition guard's counting stop (runtime/repetition.py)."""
        return frozenset(i for entry, i in self._vocabulary.items()
                         if entry[-1:] in _DIGITS and _NUMBER_ENTRY.fullmatch(entry))

    @functools.cached_property
    def word_ids(self) -> np.ndarray:
        """token id -> the id of its word, for the repetition guard's loop stop: entries that spell
        the same text but for leading whitespace and case share one (the lowest id), and entries of
        whitespace alone get runtime.repetition.SPACING."""
        first: dict[str, int] = {}
        spelled = [(entry.lstrip(_LEADING_SPACE).lower(), i) for entry, i in self._vocabulary.items()]
        for word, i in spelled:
            if i < first.get(word, i + 1):
                first[word] = i
        words = np.arange(max(i for _, i in spelled) + 1, dtype=np.int64)
        for word, i in spelled:
            words[i] = first[word] if word else SPACING
        return words

    def token_id(self, token: str) -> Optional[int]:
        return self._special.token_to_id(token)

    def encode(self, text: str) -> list[int]:
        return self._plain.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self._plain.decode(list(ids), skip_special_tokens=False)

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        if self._template is None:
            raise ValueError("the tokenizer has no chat template")
        return self._template.render(
            messages=messages,
            tools=None,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **self.template_variables,
        )

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        """Ids of the rendered chat: the template's control tokens special, message content plain text."""
        controls = sorted(self.special_tokens, key=len, reverse=True)
        contents = "".join(str(m.get("content", "")) for m in messages)
        stand_ins: dict[str, str] = {}
        code = _PRIVATE_USE_START
        for control in controls:
            while chr(code) in contents:
                code += 1
            stand_ins[control] = chr(code)
            code += 1
        restore = {v: k for k, v in stand_ins.items()}

        def hide(text: str) -> str:
            for control, stand_in in stand_ins.items():
                text = text.replace(control, stand_in)
            return text

        hidden = [{**m, "content": hide(m["content"])} if isinstance(m.get("content"), str) else m for m in messages]
        rendered = self.render_chat(hidden, add_generation_prompt)
        ids: list[int] = []
        for piece, is_control in self._split_controls(rendered, controls):
            if is_control:
                ids.append(self.special_tokens[piece])
            else:
                for stand_in, control in restore.items():
                    piece = piece.replace(stand_in, control)
                ids.extend(self.encode(piece))
        return ids

    @staticmethod
    def _split_controls(text: str, controls: list[str]) -> list[tuple[str, bool]]:
        if not controls:
            return [(text, False)]
        # a capturing group keeps the separators: odd positions are control tokens
        parts = re.split("(" + "|".join(re.escape(c) for c in controls) + ")", text)
        return [(part, i % 2 == 1) for i, part in enumerate(parts) if part]

    def stream(self) -> "ChatTokenizer.StreamDecoder":
        return ChatTokenizer.StreamDecoder(self)

    class StreamDecoder:
        """Turns generated ids into text deltas; holds back bytes until they form whole characters."""

        def __init__(self, tokenizer: "ChatTokenizer"):
            self._tokenizer = tokenizer
            self._ids: list[int] = []
            self._prefix = 0  # ids before this only give context to the decoder
            self._read = 0  # text of ids before this has been returned

        def push(self, token_id: int) -> str:
            self._ids.append(int(token_id))
            shown = self._tokenizer.decode(self._ids[self._prefix : self._read])
            text = self._tokenizer.decode(self._ids[self._prefix :])
            if len(text) > len(shown) and not text.endswith("\ufffd"):
                self._prefix = self._read
                self._read = len(self._ids)
                return text[len(shown) :]
            return ""

        def flush(self) -> str:
            """Whatever is held back (an incomplete character shows as U+FFFD)."""
            shown = self._tokenizer.decode(self._ids[self._prefix : self._read])
            text = self._tokenizer.decode(self._ids[self._prefix :])
            self._prefix = self._read = len(self._ids)
            return text[len(shown) :]
