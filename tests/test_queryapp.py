"""The query app: OpenAI-compatible server, web page, chat REPL, sampling, stop strings, context budget.

The model is a tiny random Llama: its answers are gibberish, so these tests assert on protocol,
streaming, sources, stopping, reproducibility and errors, never on meaning.
"""
from __future__ import annotations

import http.client
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
import threading
import time
from pathlib import Path

import pytest

from tests.fixtures_queryapp import MODEL_ID, PUMP_QUESTION, SCREENSHOT, TEST_CTX, running_server

openai = pytest.importorskip("openai")


def client(server, key: str = "unused"):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=120)


def ask(server, **extra):
    return client(server).chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": PUMP_QUESTION}], **extra)


def stream_text(server, **extra) -> tuple[str, list]:
    chunks = list(client(server).chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": PUMP_QUESTION}], stream=True, **extra))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


def raw(server, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=120)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


# -- OpenAI-compatible API ----------------------------------------------------------------------


def test_openai_client_gets_an_answer_with_usage_and_cited_sources(query_server):
    response = ask(query_server, max_tokens=8)
    choice = response.choices[0]
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert 0 < response.usage.prompt_tokens and response.usage.completion_tokens <= 8
    assert response.model == MODEL_ID
    sources = response.model_extra["sources"]
    assert sources[0]["citation"].startswith("pumps/coolant-pump.md:")
    assert "bleed valve V12" in sources[0]["text"]
    assert sources[0]["source"]["line_start"] >= 1


def test_streamed_deltas_add_up_to_the_same_greedy_answer_and_end_with_sources(query_server):
    whole = ask(query_server, max_tokens=12, temperature=0).choices[0].message.content
    text, chunks = stream_text(query_server, max_tokens=12, temperature=0, stream_options={"include_usage": True})
    assert text == whole
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) > 1, "the answer must arrive in pieces, not at once"
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(final) == 1
    assert final[0].model_extra["sources"][0]["citation"].startswith("pumps/coolant-pump.md:")
    assert chunks[-1].usage.completion_tokens <= 12 and not chunks[-1].choices


def test_same_seed_reproduces_a_sampled_answer_and_another_seed_differs(query_server):
    sampled = [ask(query_server, max_tokens=16, temperature=1.0, seed=seed).choices[0].message.content
               for seed in (7, 7, 8)]
    assert sampled[0] == sampled[1]
    assert sampled[0] != sampled[2]


def test_stop_string_ends_the_answer_just_before_it(query_server):
    full = ask(query_server, max_tokens=16).choices[0].message.content
    assert len(full) > 6, full
    stop = full[3:6]
    cut = ask(query_server, max_tokens=16, stop=[stop])
    assert cut.choices[0].message.content == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed, _ = stream_text(query_server, max_tokens=16, stop=stop)
    assert streamed == full[: full.index(stop)]


def test_max_tokens_beyond_the_cap_is_capped(query_server):
    response = ask(query_server, max_tokens=100_000, extra_body={"k": 0})
    assert response.usage.completion_tokens <= query_server.config.max_tokens_cap


def test_models_health_and_search_endpoints(query_server):
    models = client(query_server).models.list()
    assert [m.id for m in models.data] == [MODEL_ID]
    status, _, body = raw(query_server, "GET", "/health")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, _, body = raw(query_server, "POST", "/v1/search",
                          json.dumps({"query": "solar panels deionised water", "k": 2}).encode(),
                          {"Content-Type": "application/json"})
    hits = json.loads(body)["data"]
    assert status == 200 and len(hits) == 2
    assert hits[0]["citation"].startswith("power/solar-array.txt:")


@pytest.mark.parametrize("body, param", [
    (b"{not json", None),
    (json.dumps({"messages": []}).encode(), "messages"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}).encode(), "temperature"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "n": 3}).encode(), "n"),
])
def test_bad_requests_get_400_with_an_openai_error_body(query_server, body, param):
    status, headers, payload = raw(query_server, "POST", "/v1/chat/completions", body,
                                   {"Content-Type": "application/json"})
    assert status == 400
    error = json.loads(payload)["error"]
    assert error["type"] == "invalid_request_error" and error["message"] and error["param"] == param


def test_oversize_body_gets_413_without_being_read(query_server):
    body = json.dumps({"messages": [{"role": "user", "content": "x" * (query_server.config.max_body_bytes + 1)}]})
    status, _, payload = raw(query_server, "POST", "/v1/chat/completions", body.encode(),
                             {"Content-Type": "application/json"})
    assert status == 413 and "exceeds" in json.loads(payload)["error"]["message"]


def test_api_key_is_required_when_set_and_wrong_key_gets_401(query_assistant):
    with running_server(query_assistant, api_key="s3cret") as server:
        with pytest.raises(openai.AuthenticationError):
            ask(server, max_tokens=2)
        status, _, payload = raw(server, "GET", "/v1/models", headers={"Authorization": "Bearer wrong"})
        assert status == 401 and json.loads(payload)["error"]["code"] == "invalid_api_key"
        good = client(server, key="s3cret").chat.completions.create(
            model=MODEL_ID, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        assert good.choices[0].finish_reason in ("stop", "length")
        assert raw(server, "GET", "/health")[0] == 200, "health stays open for monitoring"


def test_binding_beyond_loopback_without_a_key_is_refused(query_assistant):
    from runtime.server import ServerRefused, exposure_error

    assert exposure_error("127.0.0.1", None) is None
    assert exposure_error("::1", None) is None
    assert exposure_error("localhost", None) is None
    assert exposure_error("0.0.0.0", "key") is None
    assert "--api-key" in exposure_error("0.0.0.0", None)
    assert "--api-key" in exposure_error("192.168.1.7", "")
    with pytest.raises(ServerRefused, match="0.0.0.0"):
        with running_server(query_assistant, host="0.0.0.0"):
            pass


# -- one shared model under concurrent clients --------------------------------------------------


def test_concurrent_streaming_clients_each_get_the_answer_they_would_get_alone(query_server):
    alone, _ = stream_text(query_server, max_tokens=12)
    results: list = [None] * 4

    def one(i: int) -> None:
        results[i] = stream_text(query_server, max_tokens=12)[0]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(results))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert results == [alone] * len(results)


def test_full_queue_answers_429_and_a_waiting_request_is_served_when_the_model_frees(query_assistant):
    with running_server(query_assistant, queue_size=1, queue_timeout_s=300) as server:
        body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).encode()
        waited: list = []
        with server.queue.turn():  # the model is busy with someone else's answer
            waiter = threading.Thread(target=lambda: waited.append(raw(server, "POST", "/v1/chat/completions", body)))
            waiter.start()
            deadline = time.monotonic() + 60
            while server.queue.waiting < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            status, headers, payload = raw(server, "POST", "/v1/chat/completions", body)
            assert status == 429 and headers.get("Retry-After")
            assert json.loads(payload)["error"]["type"] == "rate_limit_exceeded"
        waiter.join(timeout=300)
        assert waited[0][0] == 200 and json.loads(waited[0][2])["choices"]


def test_burst_of_clients_is_answered_or_refused_cleanly_never_reset(query_assistant):
    with running_server(query_assistant, queue_size=3, queue_timeout_s=300) as server:
        body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).encode()
        statuses: list = []
        barrier = threading.Barrier(16)

        def one() -> None:
            barrier.wait()
            try:
                statuses.append(raw(server, "POST", "/v1/chat/completions", body)[0])
            except OSError as exc:
                statuses.append(repr(exc))

        with server.queue.turn():
            threads = [threading.Thread(target=one) for _ in range(16)]
            for t in threads:
                t.start()
            deadline = time.monotonic() + 120
            while len(statuses) < 16 - 3 and time.monotonic() < deadline:
                time.sleep(0.01)
        for t in threads:
            t.join(timeout=300)
        assert sorted(statuses, key=str) == [200] * 3 + [429] * 13


def test_request_waiting_past_the_queue_timeout_gets_503(query_assistant):
    with running_server(query_assistant, queue_size=4, queue_timeout_s=0.2) as server:
        body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).encode()
        with server.queue.turn():
            status, _, payload = raw(server, "POST", "/v1/chat/completions", body)
        assert status == 503 and json.loads(payload)["error"]["type"] == "server_error"


def test_client_leaving_mid_stream_frees_the_model(query_server):
    host, port = query_server.server_address[:2]
    body = json.dumps({"messages": [{"role": "user", "content": PUMP_QUESTION}], "stream": True,
                       "max_tokens": query_server.config.max_tokens_cap})
    with socket.create_connection((host, port), timeout=60) as sock:
        sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
        assert b"200 OK" in sock.recv(4096)
    after = ask(query_server, max_tokens=2)
    assert after.choices[0].finish_reason in ("stop", "length")
    # The handler frees the model just after its answer is sent: give a loaded machine a moment.
    deadline = time.monotonic() + 30
    while query_server.queue.busy and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not query_server.queue.busy


# -- the web page in a real browser -------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed (.ci/system-packages)")
def test_web_page_streams_an_answer_and_shows_its_sources_with_the_supporting_sentence_marked(query_server):
    sync_api = pytest.importorskip("playwright.sync_api")
    requests: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.on("request", lambda r: requests.append(r.url))
            page.goto(query_server.url + "/")
            # Count how many times the answer's text changes while it streams.
            page.evaluate("""() => {
                window.textUpdates = 0;
                new MutationObserver(() => window.textUpdates++).observe(
                    document.getElementById("log"), {subtree: true, characterData: true, childList: true});
            }""")
            page.fill("#max-tokens", "16")
            page.fill("#question", "How is the coolant pump P-7 primed?")
            page.click("#send")
            page.wait_for_selector(".turn.assistant[data-state=done]", timeout=120_000)
            answer = page.eval_on_selector(".turn.assistant .text", "e => e.textContent")
            summary = page.locator(".turn.assistant .sources summary").first
            assert "pumps/coolant-pump.md" in summary.inner_text()
            quote = page.locator(".turn.assistant .sources blockquote").first
            assert not quote.is_visible(), "quotes start folded"
            summary.click()
            assert "bleed valve V12" in quote.inner_text() and quote.is_visible()
            marked = quote.locator("mark").all_inner_texts()
            unsupported_lines = page.locator(".turn.assistant .unsupported").count()
            updates = page.evaluate("window.textUpdates")
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            browser.close()
    expected, chunks = stream_text(query_server, max_tokens=16, temperature=0)
    assert answer == expected
    final = next(c for c in chunks if c.choices and c.choices[0].finish_reason).model_extra
    assert marked == [q["text"] for q in final["quotes"] if q["source"] == 1] and marked, \
        "the supporting sentence is highlighted inside its passage"
    assert unsupported_lines == (0 if final["supported"] else 1)
    assert updates > 3, "the answer should be rendered as it streams"
    assert all(url.startswith(query_server.url) for url in requests), requests


# -- the chat REPL in a real terminal -----------------------------------------------------------


def spawn_chat(query_staging, *options: str):
    pexpect = pytest.importorskip("pexpect")
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(repo), "HF_HUB_OFFLINE": "1", "TERM": "dumb"}
    return pexpect.spawn(sys.executable, ["-m", "runtime", "--bundle", str(query_staging), "chat", "--threads", "1",
                                          "--ctx", str(TEST_CTX), *options],
                         cwd=str(repo), env=env, encoding="utf-8", timeout=120, dimensions=(40, 200))


def test_chat_repl_answers_shows_sources_resets_and_exits(query_staging):
    chat = spawn_chat(query_staging, "--max-tokens", "8")
    try:
        chat.expect("> ")
        chat.sendline(PUMP_QUESTION)
        chat.expect(r"sources: \[\d\] \S+")
        chat.expect("> ")
        chat.sendline("/sources")
        chat.expect(r"\[1\] pumps/coolant-pump.md:\d+")
        chat.expect("bleed valve V12")
        chat.expect("> ")
        chat.sendline("/reset")
        chat.expect("conversation cleared")
        chat.expect("> ")
        chat.sendline("/exit")
        chat.expect(pexpect_eof())
    finally:
        chat.close()
    assert chat.exitstatus == 0


def test_ctrl_c_stops_the_answer_but_not_the_chat(query_staging):
    # --no-docs and a long answer: the model is still writing when Ctrl-C arrives.
    chat = spawn_chat(query_staging, "--no-docs", "--max-tokens", str(TEST_CTX - 64), "--repeat-penalty", "1.3")
    try:
        chat.expect("> ")
        chat.sendline("Tell me a long story.")
        chat.expect(r"story\.\r\n[\s\S]")   # past the echo of the question: the answer has begun
        chat.sendintr()
        chat.expect(r"\(stopped\)")
        chat.expect("> ")
        chat.sendline("/sources")
        chat.expect("no sources")
        chat.sendeof()
        chat.expect(pexpect_eof())
    finally:
        chat.close()
    assert chat.exitstatus == 0


def pexpect_eof():
    import pexpect

    return pexpect.EOF


# -- context budgeting --------------------------------------------------------------------------


def long_hit(rank: int, text: str):
    from runtime.retrieval import Chunk, Hit, SourceSpan

    return Hit(rank=rank, score=1.0 / rank, chunk=Chunk(id=rank, text=text, source=SourceSpan(
        path=f"doc{rank}.md", line_start=1, line_end=9, page=None, heading="", char_start=0, char_end=len(text))))


def test_context_budget_drops_oldest_turns_first_then_lowest_ranked_passages(query_assistant):
    from runtime.prompt import build_prompt, fit_prompt

    tokenizer = query_assistant.tokenizer
    history = []
    for turn in range(6):
        history += [{"role": "user", "content": f"question {turn} " + "word " * 40},
                    {"role": "assistant", "content": f"answer {turn} " + "word " * 40}]
    hits = [long_hit(rank, f"passage {rank} " + "fact " * 60) for rank in (1, 2, 3)]
    full = fit_prompt("What now?", hits, tokenizer, 100_000, history)
    assert full.dropped_turns == 0 and full.dropped_sources == 0
    budget = full.tokens - 150
    fitted = fit_prompt("What now?", hits, tokenizer, budget, history)
    assert fitted.tokens <= budget == full.tokens - 150
    assert fitted.dropped_turns >= 2 and fitted.dropped_sources == 0
    kept = fitted.messages[1:-1]
    assert kept == history[fitted.dropped_turns:] and kept[0]["role"] == "user"

    two_passages = len(tokenizer.encode_chat(build_prompt("What now?", hits[:2]).messages))
    tight = fit_prompt("What now?", hits, tokenizer, two_passages, history)
    assert tight.messages[1:-1] == [] and tight.dropped_turns == len(history)
    assert [h.rank for h in tight.sources] == [1, 2] and tight.dropped_sources == 1
    assert tight.tokens == two_passages


def test_passage_too_long_for_the_window_is_shortened_at_a_token_boundary(query_assistant):
    from runtime.prompt import SHORTENED_MARK, build_prompt, fit_prompt

    tokenizer = query_assistant.tokenizer
    text = " ".join(f"valve{n} opens slowly." for n in range(200))
    bare = len(tokenizer.encode_chat(build_prompt("Which valve?", []).messages))
    budget = bare + 120
    prompt = fit_prompt("Which valve?", [long_hit(1, text)], tokenizer, budget)
    assert prompt.tokens <= budget
    (kept,) = prompt.sources
    shortened = kept.chunk.text
    assert shortened.endswith(SHORTENED_MARK)
    body = shortened[: -len(SHORTENED_MARK)]
    ids = tokenizer.encode(text)
    assert any(tokenizer.decode(ids[:n]) == body for n in range(1, len(ids))), "cut inside a token"


def test_question_longer_than_the_window_is_refused_clearly(query_assistant):
    from runtime.prompt import ContextOverflow, fit_prompt

    with pytest.raises(ContextOverflow, match="tokens"):
        fit_prompt("why " * 2000, [], query_assistant.tokenizer, 512)


def test_server_answers_an_overlong_conversation_by_dropping_old_turns(query_server):
    history = []
    for turn in range(12):
        history += [{"role": "user", "content": "tell me about the pump " * 20},
                    {"role": "assistant", "content": "the pump is primed " * 20}]
    response = client(query_server).chat.completions.create(
        model=MODEL_ID, messages=[*history, {"role": "user", "content": PUMP_QUESTION}], max_tokens=4)
    assert response.usage.prompt_tokens + 4 <= TEST_CTX
    status, _, payload = raw(query_server, "POST", "/v1/chat/completions", json.dumps(
        {"messages": [{"role": "user", "content": "why " * 5000}], "max_tokens": 4}).encode())
    assert status == 400 and json.loads(payload)["error"]["code"] == "context_length_exceeded"


def test_stop_string_split_across_deltas_is_held_back_and_never_shown():
    from runtime.stop_strings import StopStringFilter

    stops = StopStringFilter(["END", "\n\n"])
    shown = [stops.push(d) for d in ["abc E", "N", "xy E", "ND tail"]]
    assert shown == ["abc ", "", "ENxy ", ""] and stops.stopped
    assert "".join(shown) + stops.flush() == "abc ENxy "
    open_ended = StopStringFilter(["END"])
    assert open_ended.push("the E") == "the " and open_ended.flush() == "E"


# -- the server inside the one-file executable --------------------------------------------------


@pytest.fixture(scope="session")
def query_executable(query_staging, tmp_path_factory) -> Path:
    from bundler.package import package
    from bundler.pipeline import DEFAULT_CACHE
    from targets import load_target

    return package(query_staging, load_target("host"), tmp_path_factory.mktemp("query-exe") / "station",
                   DEFAULT_CACHE / "stubs")


def test_executable_serves_the_web_page_and_the_api(query_executable, tmp_path):
    server = subprocess.Popen([str(query_executable), "serve", "--port", "0", "--threads", "1", "--ctx", "1024"],
                              cwd=tmp_path, stderr=subprocess.PIPE, text=True, env={"PATH": os.environ["PATH"]})
    try:
        lines = []
        while not lines or "serving" not in lines[-1]:
            lines.append(server.stderr.readline())
            assert lines[-1], "".join(lines)
        url = re.search(r"serving (http://127\.0\.0\.1:\d+)/", lines[-1])
        page = urllib.request.urlopen(url.group(1) + "/", timeout=60).read().decode()
        assert "<title>edgebundle</title>" in page and "text/event-stream" not in page
        api = openai.OpenAI(base_url=url.group(1) + "/v1", api_key="unused", max_retries=0, timeout=120)
        answer = api.chat.completions.create(model=MODEL_ID, max_tokens=4,
                                             messages=[{"role": "user", "content": PUMP_QUESTION}])
        assert answer.model_extra["sources"][0]["citation"].startswith("pumps/coolant-pump.md:")
    finally:
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=60) == 0
        server.stderr.close()


def test_builder_help_explains_every_option():
    repo = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, str(repo / "build.py"), "--help"], capture_output=True, text=True,
                          timeout=120, cwd=repo)
    assert done.returncode == 0
    spec = importlib.util.spec_from_file_location("build_cli", repo / "build.py")
    build_cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_cli)
    parser_help = {a.dest: a.help for a in build_cli.build_parser()._actions}
    assert all(parser_help.values()), [dest for dest, text in parser_help.items() if not text]
    for option in ("--model", "--docs", "--output", "--quantization", "--target", "--json", "--ask"):
        assert option in done.stdout
