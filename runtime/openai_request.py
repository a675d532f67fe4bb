"""Reading an OpenAI chat-completions request body into what the assistant needs.

Only what this server can honour is accepted; anything it would have to silently
ignore in a way that changes the answer (n > 1, tools) is refused with the parameter
named, as OpenAI does.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

MAX_STOP_STRINGS = 16
# More turns than any context window holds: the budget keeps only the newest few anyway.
MAX_MESSAGES = 256


class RequestError(Exception):
    """The request is malformed; `param` names the offending field when there is one."""

    def __init__(self, message: str, param: Optional[str] = None):
        super().__init__(message)
        self.param = param


@dataclass
class ChatRequest:
    question: str
    history: list[dict]                 # earlier user/assistant turns, oldest first
    system: Optional[str]
    stream: bool
    include_usage: bool
    k: int
    mode: str
    generation: Any                     # runtime.generation.GenerationConfig
    stop: list[str] = field(default_factory=list)


def _text_of(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise RequestError("only text content parts are supported", where)
            parts.append(part["text"])
        return "".join(parts)
    raise RequestError("content must be a string or a list of text parts", where)


def _number(body: dict, name: str, kind: type, low: float, high: float) -> Any:
    value = body[name]
    # Integral floats (2.0) count as integers; inf and nan are not integral and fail the range.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            kind is int and isinstance(value, float) and not value.is_integer()):
        raise RequestError(f"{name} must be {'an integer' if kind is int else 'a number'}", name)
    # Compared before converting: float() of a huge integer overflows.
    if not low <= value <= high:
        raise RequestError(f"{name} must be between {low:g} and {high:g}", name)
    return kind(value)


def parse_chat_request(body: Any, defaults, default_k: int, default_mode: str, modes: list[str],
                       max_tokens_cap: int) -> ChatRequest:
    """defaults: the server's GenerationConfig, used for every field the request leaves out."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty list", "messages")
    if len(messages) > MAX_MESSAGES:
        raise RequestError(f"at most {MAX_MESSAGES} messages are accepted; send the newest ones", "messages")
    for name in ("tools", "functions"):
        if body.get(name):
            raise RequestError(f"{name} are not supported", name)
    if body.get("n", 1) != 1:
        raise RequestError("only n = 1 is supported", "n")

    system: Optional[str] = None
    turns: list[dict] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise RequestError("each message must be an object", where)
        role = message.get("role")
        text = _text_of(message.get("content"), f"{where}.content")
        if role in ("system", "developer"):
            system = text if system is None else f"{system}\n{text}"
        elif role in ("user", "assistant"):
            turns.append({"role": role, "content": text})
        else:
            raise RequestError(f"unsupported role {role!r}", f"{where}.role")
    if not turns or turns[-1]["role"] != "user":
        raise RequestError("the last message must come from the user", "messages")

    changes: dict[str, Any] = {}
    for name in ("max_completion_tokens", "max_tokens"):
        if body.get(name) is not None:
            changes["max_new_tokens"] = min(_number(body, name, int, 1, 1 << 30), max_tokens_cap)
            break
    else:
        changes["max_new_tokens"] = min(defaults.max_new_tokens, max_tokens_cap)
    limits = {"temperature": (float, 0, 2), "top_p": (float, 0, 1), "top_k": (int, 0, 1 << 20),
              "repeat_penalty": (float, 0.5, 2), "seed": (int, -(1 << 63), (1 << 64) - 1)}
    for name, (kind, low, high) in limits.items():
        if body.get(name) is not None:
            changes[name] = _number(body, name, kind, low, high)
    if "top_p" in changes and changes["top_p"] == 0:
        raise RequestError("top_p must be greater than 0", "top_p")

    stop = body.get("stop")
    stops = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops) or len(stops) > MAX_STOP_STRINGS:
        raise RequestError(f"stop must be a string or a list of at most {MAX_STOP_STRINGS} strings", "stop")

    k = _number(body, "k", int, 0, 64) if body.get("k") is not None else default_k
    mode = body.get("search_mode", default_mode)
    if mode not in modes:
        raise RequestError(f"search_mode must be one of {', '.join(modes)}", "search_mode")

    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError("stream must be true or false", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise RequestError("stream_options must be an object", "stream_options")

    return ChatRequest(
        question=turns[-1]["content"],
        history=turns[:-1],
        system=system,
        stream=stream,
        include_usage=bool(options.get("include_usage", False)),
        k=k,
        mode=mode,
        generation=dataclasses.replace(defaults, **changes),
        stop=[s for s in stops if s],
    )


@dataclass
class SearchRequest:
    query: str
    k: int
    mode: str


@dataclass
class SummarizeRequest:
    document: Optional[str]     # FILE, FILE:FIRST-LAST or FILE:pFIRST-LAST
    query: Optional[str]
    k: int
    mode: str
    max_tokens: int
    wrap_up: float              # runtime.summarize.Summarizer.summarize's wrap_up


def parse_summarize_request(body: Any, default_k: int, default_mode: str, modes: list[str],
                            max_tokens_cap: int, default_wrap_up: float) -> SummarizeRequest:
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    document, query = body.get("document"), body.get("query")
    if (document is None) == (query is None):
        raise RequestError("give either document (FILE, FILE:FIRST-LAST or FILE:pFIRST-LAST) or query")
    for name, value in (("document", document), ("query", query)):
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise RequestError(f"{name} must be a non-empty string", name)
    k = _number(body, "k", int, 1, 100) if body.get("k") is not None else max(default_k, 8)
    mode = body.get("mode", default_mode)
    if mode not in modes:
        raise RequestError(f"mode must be one of {', '.join(modes)}", "mode")
    max_tokens = _number(body, "max_tokens", int, 1, max_tokens_cap) if body.get("max_tokens") is not None else 200
    wrap_up = _number(body, "wrap_up", float, 0, 1) if body.get("wrap_up") is not None else default_wrap_up
    return SummarizeRequest(document=document, query=query, k=k, mode=mode, max_tokens=min(max_tokens, max_tokens_cap),
                            wrap_up=wrap_up)


def parse_search_request(body: Any, default_k: int, default_mode: str, modes: list[str]) -> SearchRequest:
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    query = body.get("query")
    if not isinstance(query, str) or not query.strip():
        raise RequestError("query must be a non-empty string", "query")
    k = _number(body, "k", int, 1, 100) if body.get("k") is not None else default_k
    mode = body.get("mode", default_mode)
    if mode not in modes:
        raise RequestError(f"mode must be one of {', '.join(modes)}", "mode")
    return SearchRequest(query=query, k=k, mode=mode)
