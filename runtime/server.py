"""An OpenAI-compatible HTTP server on the standard library, plus the offline web page.

Routes (documented in docs/QUERY_APP.md):
  GET  /                      the web page (one self-contained HTML file)
  GET  /health                liveness and queue state
  GET  /v1/models             the one bundled model
  POST /v1/chat/completions   OpenAI chat completions, streaming (SSE) or not; `sources` extension
  POST /v1/search             retrieval only
  POST /v1/summarize          a summary of a document (or its lines or pages) or of a topic, with citations

No framework: the standard library's http.server, bounded by hand (runtime.connection_gate caps
open connections and gives each request a whole-request deadline). docs/QUERY_APP.md gives the
measurements that ruled out waitress and uvicorn.
"""
from __future__ import annotations

import hmac
import ipaddress
import json
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Optional

from runtime.assistant import AskOptions
from runtime.connection_gate import ConnectionGate
from runtime.errors import UserError
from runtime.generation import GenerationConfig
from runtime.openai_request import RequestError, parse_chat_request, parse_search_request, parse_summarize_request
from runtime.prompt import ContextOverflow
from runtime.request_queue import ModelQueue, QueueFull, QueueTimeout
from runtime.source_json import source_record, summary_record, support_record
from runtime.summarize import DEFAULT_WRAP_UP, Scope, Summarizer, SummaryError, passages_in_scope, reading_order


# What _read_json returns once it has answered an unreadable body (JSON null is a body, not an error).
UNREADABLE = object()

# Host names a loopback server answers to; any other Host header may be a DNS-rebinding page.
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: Optional[str] = None
    max_body_bytes: int = 1 << 20
    max_tokens_cap: int = 1024
    queue_size: int = 8              # requests allowed to wait while one generates
    queue_timeout_s: float = 120.0
    max_connections: int = 64        # open connections; the longest-waiting is cut to admit one more
    request_timeout_s: float = 30.0  # a request's headers and body must arrive within this
    k: int = 4
    mode: Optional[str] = None       # retrieval mode; None: the assistant's best


class ServerRefused(UserError):
    """The server configuration is unsafe or invalid; the message says why."""


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def exposure_error(host: str, api_key: Optional[str]) -> Optional[str]:
    """Why the server must not start: reachable from other machines without a key."""
    if api_key or is_loopback(host):
        return None
    return (f"binding {host} makes the model reachable from other machines: give an API key "
            "(--api-key KEY or $EDGEBUNDLE_API_KEY)")


def web_page() -> bytes:
    return resources.files("runtime").joinpath("web/index.html").read_bytes()


class _ClientGone(Exception):
    """The client closed the connection while we were writing to it."""


class QueryServer(ThreadingHTTPServer):
    """Serves one Assistant; generations are serialised through a bounded ModelQueue."""

    daemon_threads = True
    # listen() backlog: the default 5 resets connections when a burst of clients arrives at once;
    # they should get an answer or a clean 429 instead.
    request_queue_size = 128

    def __init__(self, assistant, config: ServerConfig, model_id: str, defaults: AskOptions):
        refusal = exposure_error(config.host, config.api_key)
        if refusal:
            raise ServerRefused(refusal)
        if config.max_connections < 1 or config.request_timeout_s <= 0:
            raise ServerRefused("max_connections must be at least 1 and the request timeout positive")
        self.assistant = assistant
        self.config = config
        self.model_id = model_id
        self.defaults = defaults  # what a request leaves out; its k and mode come from config
        self.queue = ModelQueue(config.queue_size, config.queue_timeout_s)
        # Retrieval is fast and has its own lock, so searches never wait behind a generation.
        self.search_lock = threading.Lock()
        self.created = int(time.time())
        self.mode = config.mode or assistant.default_mode
        self.page = web_page()
        super().__init__((config.host, config.port), _Handler)
        self.gate = ConnectionGate(config.max_connections, config.request_timeout_s)
        port = self.server_address[1]
        # None: any Host (a key guards the server instead); else the names a browser uses for it.
        self.allowed_hosts = ({f"{name}:{port}" for name in LOOPBACK_NAMES}
                              | (set(LOOPBACK_NAMES) if port == 80 else set())) if is_loopback(config.host) else None

    def process_request(self, request, client_address) -> None:
        if self.gate.admit(request):
            super().process_request(request, client_address)
            return
        # Every slot is answering a request: say so at once rather than leave the client hanging.
        body = json.dumps({"error": {"message": "server busy: too many open connections",
                                     "type": "server_error", "param": None, "code": None}}).encode()
        try:
            request.settimeout(1)
            request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                            b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
                            % (len(body), body))
        except OSError:
            pass
        self.shutdown_request(request)

    def shutdown_request(self, request) -> None:
        self.gate.release(request)
        super().shutdown_request(request)

    def handle_error(self, request, client_address) -> None:
        """Quiet: a connection's failure is answered on the connection, and library code never prints."""

    def server_close(self) -> None:
        super().server_close()
        self.gate.close()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: QueryServer
    _streaming = False          # headers of an event stream are out: errors must go in-band
    # Socket timeout of each read and write: a client that never reads its answer frees its thread.
    # (Receiving the request has its own, shorter, whole-request deadline: ConnectionGate.)
    timeout = 60

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: library code never prints."""

    # -- plumbing -------------------------------------------------------------------------

    def handle_one_request(self) -> None:
        self.server.gate.waiting(self.connection)
        super().handle_one_request()

    def send_error(self, code: int, message: Optional[str] = None, explain: Optional[str] = None) -> None:
        """http.server's own errors (bad request line, headers too long) as OpenAI JSON errors."""
        self.close_connection = True
        # An unreadable request line leaves http.server at HTTP/0.9, which has no status line.
        self.request_version = self.protocol_version
        if not self.server.gate.received(self.connection):
            code, message = 408, self._late_message()
        self._send_error(code, message or self.responses.get(code, ("error",))[0], "invalid_request_error")

    def _late_message(self) -> str:
        return f"the request did not arrive whole within {self.server.config.request_timeout_s:g} s"

    def _arrived(self, whole: bool) -> bool:
        """False (after a 408) if the connection was cut before its request arrived.

        whole: the request has been read to its end, so its deadline no longer applies.
        """
        gate = self.server.gate
        if gate.received(self.connection) if whole else gate.is_open(self.connection):
            return True
        self.close_connection = True
        self._send_error(408, self._late_message(), "invalid_request_error", code="request_timeout")
        return False

    def _addressed_here(self) -> bool:
        """False (after a 421 or 403) for a Host or Origin that is not this server (DNS rebinding)."""
        allowed = self.server.allowed_hosts
        host = self.headers.get("Host", "")
        if allowed is not None and host.lower() not in allowed:
            self.close_connection = True
            self._send_error(421, f"this server answers only to {' or '.join(sorted(allowed))} "
                             "(Host header)", "invalid_request_error", code="host_not_allowed")
            return False
        origin = self.headers.get("Origin")
        # Browsers send Origin on cross-site requests; the web page itself is same-origin.
        if origin is not None and origin.lower() != f"http://{host.lower()}":
            self.close_connection = True
            self._send_error(403, "cross-origin requests are not allowed (Origin header)",
                             "invalid_request_error", code="origin_not_allowed")
            return False
        return True

    def _send_json(self, status: int, payload: Any, headers: Optional[dict] = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _send_error(self, status: int, message: str, kind: str, param: Optional[str] = None,
                    code: Optional[str] = None, headers: Optional[dict] = None) -> None:
        error = {"message": message, "type": kind, "param": param, "code": code}
        self._send_json(status, {"error": error}, headers)

    def _authorised(self) -> bool:
        key = self.server.config.api_key
        if not key:
            return True
        given = self.headers.get("Authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode()):
            return True
        self._send_error(401, "invalid or missing API key (Authorization: Bearer ...)",
                         "invalid_request_error", code="invalid_api_key")
        return False

    def _read_json(self) -> Any:
        """The request body as JSON, or UNREADABLE after an error response has been sent."""
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding") or length is None:
            self.close_connection = True
            self._send_error(411, "a Content-Length header is required", "invalid_request_error")
            return UNREADABLE
        try:
            size = int(length)
        except ValueError:
            size = -1
        if size < 0:
            self.close_connection = True
            self._send_error(400, "bad Content-Length", "invalid_request_error")
            return UNREADABLE
        if size > self.server.config.max_body_bytes:
            # The body stays unread, so this connection cannot carry another request.
            self.close_connection = True
            self._send_error(413, f"request body of {size} bytes exceeds the limit of "
                             f"{self.server.config.max_body_bytes} bytes", "invalid_request_error")
            return UNREADABLE
        raw = self.rfile.read(size)
        if not self._arrived(whole=True):
            return UNREADABLE
        if len(raw) < size:  # the client closed its side early: there is nobody to answer
            self.close_connection = True
            return UNREADABLE
        try:
            return json.loads(raw)
        except ValueError as exc:  # also integers too long to convert (sys.get_int_max_str_digits)
            self._send_error(400, f"the request body is not valid JSON: {exc}", "invalid_request_error")
            return UNREADABLE
        except RecursionError:
            self._send_error(400, "the request body nests JSON too deeply", "invalid_request_error")
            return UNREADABLE

    # -- routes ---------------------------------------------------------------------------

    def do_GET(self) -> None:
        if not (self._arrived(whole=True) and self._addressed_here()):
            return
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            page = self.server.page
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            # The page may talk only to this server: a stray link must not reach out.
            self.send_header("Content-Security-Policy",
                             "default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'")
            self.end_headers()
            self.wfile.write(page)
        elif path == "/health":
            queue = self.server.queue
            self._send_json(200, {"status": "ok", "model": self.server.model_id,
                                  "busy": queue.busy, "waiting": queue.waiting})
        elif path == "/v1/models":
            if self._authorised():
                self._send_json(200, {"object": "list", "data": [self._model_card()]})
        elif path == f"/v1/models/{self.server.model_id}":
            if self._authorised():
                self._send_json(200, self._model_card())
        else:
            self._send_error(404, f"no route GET {path}", "invalid_request_error", code="not_found")

    def do_POST(self) -> None:
        if not (self._arrived(whole=False) and self._addressed_here()):
            return
        path = self.path.split("?", 1)[0]
        if path not in ("/v1/chat/completions", "/v1/search", "/v1/summarize"):
            self.close_connection = True
            self._send_error(404, f"no route POST {path}", "invalid_request_error", code="not_found")
            return
        if not self._authorised():
            self.close_connection = True
            return
        body = self._read_json()
        if body is UNREADABLE:
            return
        try:
            if path == "/v1/search":
                self._search(body)
            elif path == "/v1/summarize":
                self._summarize(body)
            else:
                self._chat(body)
        except RequestError as exc:
            self._send_error(400, str(exc), "invalid_request_error", param=exc.param)
        except SummaryError as exc:
            self._send_error(400, str(exc), "invalid_request_error", param="document")
        except _ClientGone:
            self.close_connection = True
        except Exception:  # a bug or a broken model file: answer, don't drop the connection
            self.close_connection = True
            if not self._streaming:
                # No exception text: it can carry paths and internals of the machine.
                self._send_error(500, "internal error", "server_error")

    def _model_card(self) -> dict:
        return {"id": self.server.model_id, "object": "model", "created": self.server.created,
                "owned_by": "edgebundle"}

    def _search(self, body: Any) -> None:
        server = self.server
        request = parse_search_request(body, server.config.k, server.mode, server.assistant.retriever.modes)
        with server.search_lock:
            hits = server.assistant.search(request.query, k=request.k, mode=request.mode)
        self._send_json(200, {"object": "list", "query": request.query, "mode": request.mode,
                              "data": [source_record(h) for h in hits]})

    def _summarize(self, body: Any) -> None:
        server = self.server
        request = parse_summarize_request(body, server.config.k, server.mode, server.assistant.retriever.modes,
                                          server.config.max_tokens_cap, DEFAULT_WRAP_UP)
        assistant = server.assistant
        try:
            with server.queue.turn():
                with server.search_lock:
                    if request.document is not None:
                        passages = passages_in_scope(assistant.retriever.chunks, Scope.parse(request.document))
                    else:
                        passages = reading_order(assistant.search(request.query, k=request.k, mode=request.mode))
                config = GenerationConfig(**{**vars(server.defaults.generation), "max_new_tokens": request.max_tokens})
                summary = Summarizer(assistant.tokenizer, assistant.decoder).summarize(
                    passages, config, topic=request.query, wrap_up=request.wrap_up).finish()
        except QueueFull as exc:
            self._send_error(429, f"server busy: {exc}", "rate_limit_exceeded", headers={"Retry-After": "1"})
            return
        except QueueTimeout as exc:
            self._send_error(503, f"server busy: {exc}", "server_error", headers={"Retry-After": "5"})
            return
        self._send_json(200, {"object": "summary", "model": server.model_id, **summary_record(summary)})

    def _chat(self, body: Any) -> None:
        server = self.server
        request = parse_chat_request(body, server.defaults.generation, server.config.k, server.mode,
                                     server.assistant.retriever.modes, server.config.max_tokens_cap)
        try:
            with server.queue.turn():
                # ask() retrieves at once (under the retriever's lock) and generates lazily.
                with server.search_lock:
                    options = AskOptions(k=request.k, mode=request.mode, use_documents=request.k > 0,
                                         generation=request.generation, grounding=server.defaults.grounding,
                                         stop=tuple(request.stop), instructions=request.system)
                    answer = server.assistant.ask(request.question, options, history=request.history)
                try:
                    if request.stream:
                        self._stream(request, answer)
                    else:
                        self._complete(answer)
                finally:
                    answer.close()
        except ContextOverflow as exc:
            self._send_error(400, str(exc), "invalid_request_error", param="messages",
                             code="context_length_exceeded")
        except QueueFull as exc:
            self._send_error(429, f"server busy: {exc}", "rate_limit_exceeded", headers={"Retry-After": "1"})
        except QueueTimeout as exc:
            self._send_error(503, f"server busy: {exc}", "server_error", headers={"Retry-After": "5"})

    def _envelope(self, completion_id: str, kind: str) -> dict:
        return {"id": completion_id, "object": kind, "created": int(time.time()), "model": self.server.model_id}

    def _complete(self, answer) -> None:
        for _ in answer:
            pass
        payload = self._envelope(f"chatcmpl-{uuid.uuid4().hex}", "chat.completion")
        payload["choices"] = [{"index": 0, "message": {"role": "assistant", "content": answer.text},
                               "finish_reason": answer.stats.finish_reason}]
        payload["usage"] = _usage(answer)
        payload["sources"] = [source_record(h) for h in answer.sources]
        payload.update(support_record(answer.support))
        self._send_json(200, payload)

    def _stream(self, request, answer) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self._streaming = True
        base = self._envelope(f"chatcmpl-{uuid.uuid4().hex}", "chat.completion.chunk")

        def chunk(delta: dict, finish: Optional[str] = None, **extra: Any) -> dict:
            return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}

        self._event(chunk({"role": "assistant", "content": ""}))
        try:
            for delta in answer:
                if delta:
                    self._event(chunk({"content": delta}))
        except _ClientGone:
            raise
        except Exception:
            self._event({"error": {"message": "generation failed",
                                   "type": "server_error", "param": None, "code": None}})
            self._write_chunk(b"data: [DONE]\n\n")
            self._write_chunk(b"")
            return
        self._event(chunk({}, answer.stats.finish_reason, sources=[source_record(h) for h in answer.sources],
                          **support_record(answer.support)))
        if request.include_usage:
            self._event({**base, "choices": [], "usage": _usage(answer)})
        self._write_chunk(b"data: [DONE]\n\n")
        self._write_chunk(b"")

    def _event(self, payload: dict) -> None:
        self._write_chunk(b"data: " + json.dumps(payload).encode() + b"\n\n")

    def _write_chunk(self, data: bytes) -> None:
        try:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
        except OSError as exc:  # reset, broken pipe, or a client that stopped reading (timeout)
            raise _ClientGone() from exc


def _usage(answer) -> dict:
    stats = answer.stats
    return {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.new_tokens,
            "total_tokens": stats.prompt_tokens + stats.new_tokens}


def make_server(assistant, config: ServerConfig, model_id: str, defaults: Optional[AskOptions] = None) -> QueryServer:
    """Bind (port 0 picks a free port) without serving yet; call serve_forever() on the result."""
    return QueryServer(assistant, config, model_id, defaults or AskOptions())
