"""The HTTP server's bounds: open connections, request deadlines, DNS rebinding, bad bodies, long histories.

Everything runs against in-process servers on 127.0.0.1 (tests.fixtures_queryapp.running_server).
"""
from __future__ import annotations

import http.client
import json
import os
import random
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures_queryapp import PUMP_QUESTION, running_server


def request(server, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
            timeout: float = 120) -> tuple[int, dict, bytes]:
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def raw_exchange(server, data: bytes) -> bytes:
    """Send bytes as they are and read until the server closes."""
    with socket.create_connection(server.server_address[:2], timeout=60) as sock:
        sock.sendall(data)
        return sock.makefile("rb").read()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- the connection gate on its own -------------------------------------------------------------


def test_gate_cuts_the_longest_waiting_connection_to_admit_a_new_one_and_refuses_when_all_work():
    from runtime.connection_gate import ConnectionGate

    gate = ConnectionGate(max_connections=2, request_deadline_s=3600)
    pairs = [socket.socketpair() for _ in range(4)]
    try:
        (a, a_peer), (b, b_peer), (c, c_peer), (d, d_peer) = pairs
        assert gate.admit(a) and gate.admit(b)
        assert gate.received(b), "b's request arrived: b is answering and cannot be cut"
        assert gate.admit(c)
        assert not gate.is_open(a) and not gate.received(a)
        a.settimeout(5)
        assert a.recv(1) == b"", "the cut connection's blocked read ends at once"
        assert gate.received(c)
        assert not gate.admit(d), "every slot is answering a request"
        gate.release(b)
        assert gate.admit(d) and gate.open == 2
    finally:
        gate.close()
        for pair in pairs:
            for sock in pair:
                sock.close()


def test_gate_cuts_a_connection_whose_request_misses_its_deadline_but_not_one_being_answered():
    from runtime.connection_gate import ConnectionGate

    gate = ConnectionGate(max_connections=4, request_deadline_s=0.2)
    (slow, slow_peer), (busy, busy_peer) = socket.socketpair(), socket.socketpair()
    try:
        assert gate.admit(slow) and gate.admit(busy) and gate.received(busy)
        slow.settimeout(30)
        assert slow.recv(1) == b""
        assert not gate.is_open(slow)
        time.sleep(0.3)
        assert gate.is_open(busy)
    finally:
        gate.close()
        for sock in (slow, slow_peer, busy, busy_peer):
            sock.close()


# -- slow clients -------------------------------------------------------------------------------


def test_200_slow_clients_against_32_connections_leave_health_answering_within_a_second(query_assistant):
    with running_server(query_assistant, max_connections=32, request_timeout_s=60) as server:
        host, port = server.server_address[:2]
        partial = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % port   # the blank line never comes
        slow = []
        try:
            for _ in range(200):
                sock = socket.create_connection((host, port), timeout=30)
                sock.sendall(partial)
                slow.append(sock)
            waits = []
            for _ in range(5):
                started = time.monotonic()
                status, _, body = request(server, "GET", "/health", timeout=30)
                waits.append(time.monotonic() - started)
                assert status == 200 and json.loads(body)["status"] == "ok"
            assert max(waits) < 1.0, waits
            assert server.gate.open <= 32
            # The first slow clients were cut to make room, with a 408 they can read.
            slow[0].settimeout(30)
            assert slow[0].makefile("rb").read().startswith(b"HTTP/1.1 408")
        finally:
            for sock in slow:
                sock.close()


def test_request_that_does_not_arrive_whole_within_the_deadline_gets_408(query_assistant):
    with running_server(query_assistant, request_timeout_s=0.5) as server:
        port = server.server_address[1]
        headers_only = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % port
        short_body = (b"POST /v1/search HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100\r\n\r\n{\"query\": " % port)
        for data in (headers_only, short_body):
            reply = raw_exchange(server, data)
            assert reply.startswith(b"HTTP/1.1 408"), reply[:100]
            assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"
        assert request(server, "GET", "/health")[0] == 200


# -- bad bodies and internal errors -------------------------------------------------------------


def chat_body(**fields) -> bytes:
    return json.dumps({"messages": [{"role": "user", "content": "hi"}], **fields}).encode()


HUGE_INTEGER = b"1" + b"0" * 5000   # past Python's int-string conversion limit (4300 digits)


@pytest.mark.parametrize("body, param", [
    (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": ' + HUGE_INTEGER + b"}", None),
    (chat_body(max_tokens=10 ** 400), "max_tokens"),
    (chat_body(temperature=10 ** 400), "temperature"),
    (chat_body(seed=-(10 ** 400)), "seed"),
    (chat_body(k=10 ** 400), "k"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}] * 257}).encode(), "messages"),
])
def test_oversized_integers_and_too_many_messages_get_a_400_json_error(query_server, body, param):
    status, headers, payload = request(query_server, "POST", "/v1/chat/completions", body)
    assert status == 400 and headers["Content-Type"] == "application/json"
    error = json.loads(payload)["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]


@pytest.mark.parametrize("data, status", [
    (b"NONSENSE\r\n\r\n", 400),
    (b"GET /health HTTP/1.1\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n", 431),
    (b"GET /health HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % n for n in range(120)) + b"\r\n", 431),
    (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414),
])
def test_malformed_requests_get_a_json_error_and_a_closed_connection(query_server, data, status):
    reply = raw_exchange(query_server, data)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d" % status), head[:100]
    assert b"Content-Type: application/json" in head and json.loads(body)["error"]["message"]


def test_internal_error_gives_500_without_the_exception_text(query_assistant, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("secret detail /home/operator/models")

    monkeypatch.setattr(query_assistant, "ask", broken)
    with running_server(query_assistant) as server:
        status, _, payload = request(server, "POST", "/v1/chat/completions", chat_body(max_tokens=2))
    assert status == 500
    assert json.loads(payload)["error"] == {"message": "internal error", "type": "server_error",
                                            "param": None, "code": None}


# -- DNS rebinding and exposure -----------------------------------------------------------------


def test_loopback_server_refuses_foreign_host_and_cross_origin_requests(query_server):
    port = query_server.server_address[1]
    for host in ("localhost", "127.0.0.1", "[::1]"):
        assert request(query_server, "GET", "/health", headers={"Host": f"{host}:{port}"})[0] == 200
    status, _, payload = request(query_server, "GET", "/health", headers={"Host": f"attacker.example:{port}"})
    assert status == 421 and json.loads(payload)["error"]["code"] == "host_not_allowed"
    status, _, _ = request(query_server, "GET", "/", headers={"Host": f"127.0.0.1:{port + 1}"})
    assert status == 421
    search = json.dumps({"query": "pump", "k": 1}).encode()
    status, _, payload = request(query_server, "POST", "/v1/search", search,
                                 {"Origin": "http://attacker.example"})
    assert status == 403 and json.loads(payload)["error"]["code"] == "origin_not_allowed"
    status, _, _ = request(query_server, "POST", "/v1/search", search, {"Origin": f"http://127.0.0.1:{port}"})
    assert status == 200


def test_serve_beyond_loopback_without_a_key_exits_with_one_line(query_staging):
    repo = Path(__file__).resolve().parent.parent
    env = {key: value for key, value in os.environ.items() if key != "EDGEBUNDLE_API_KEY"}
    done = subprocess.run([sys.executable, "-m", "runtime", "--bundle", str(query_staging), "serve",
                           "--host", "0.0.0.0", "--port", "0"], cwd=repo, env={**env, "PYTHONPATH": str(repo)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "0.0.0.0" in done.stderr and "--api-key" in done.stderr


# -- long conversations -------------------------------------------------------------------------


def test_one_mebibyte_chat_history_is_budgeted_or_refused_in_under_a_second_of_cpu(query_assistant):
    turn = "tell me more about the coolant pump and its bleed valve " * 80     # ~4.5 KB
    history = [{"role": "user" if n % 2 == 0 else "assistant", "content": turn} for n in range(240)]
    long_history = json.dumps({"messages": [*history, {"role": "user", "content": PUMP_QUESTION}],
                               "max_tokens": 1, "k": 0}).encode()
    long_question = json.dumps({"messages": [{"role": "user", "content": "why " * (1 << 18)}],
                                "max_tokens": 1, "k": 0}).encode()
    assert len(long_history) > 1 << 20 and len(long_question) > 1 << 20
    with running_server(query_assistant, max_body_bytes=2 << 20) as server:
        request(server, "POST", "/v1/chat/completions", chat_body(max_tokens=1, k=0))  # warm: first call costs
        before = cpu_seconds()
        status, _, payload = request(server, "POST", "/v1/chat/completions", long_history)
        history_cpu = cpu_seconds() - before
        assert status == 200, payload
        assert json.loads(payload)["usage"]["prompt_tokens"] < 1024
        before = cpu_seconds()
        status, _, payload = request(server, "POST", "/v1/chat/completions", long_question)
        question_cpu = cpu_seconds() - before
        assert status == 400 and json.loads(payload)["error"]["code"] == "context_length_exceeded"
    assert history_cpu < 1.0 and question_cpu < 1.0, (history_cpu, question_cpu)


def test_linear_budget_keeps_the_same_turns_as_dropping_one_at_a_time(query_assistant):
    """The old quadratic rule (drop the oldest turn, re-render, re-count) is the reference."""
    from runtime.prompt import build_prompt, fit_prompt

    tokenizer = query_assistant.tokenizer

    def reference_dropped(history: list[dict], budget: int) -> int:
        dropped = 0
        while history and len(tokenizer.encode_chat(build_prompt("why?", [], history).messages)) > budget:
            history = history[1:]
            dropped += 1
            while history and history[0]["role"] != "user":
                history, dropped = history[1:], dropped + 1
        return dropped

    rng = random.Random(7)
    words = ["pump", "valve", "open", "the", "\n", "  ", "<|im_end|>", "12", "V12", "bleed"]
    for _ in range(60):
        history = [{"role": rng.choice(["user", "user", "assistant"]),
                    "content": " ".join(rng.choice(words) for _ in range(rng.randint(0, 50)))}
                   for _ in range(rng.randint(1, 12))]
        budget = rng.randint(60, 500)
        prompt = fit_prompt("why?", [], tokenizer, budget, history)
        assert prompt.tokens <= budget
        assert prompt.dropped_turns == reference_dropped(history, budget), (budget, history)
