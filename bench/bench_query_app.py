"""Query app benchmark: time to first token and decode speed through the CLI and the server,
and the server under concurrent clients.

    python bench/bench_query_app.py [--bundle PATH] [--threads 2] [--max-tokens 128] [--runs 3]

Without --bundle, stages the default model (SmolLM2-135M, int4) with the default documents
(exports and index are cached under .cache/build). Everything runs on this machine, back to back:
  CLI     `python -m runtime ask --json` per question: the answer's own stats (time from the
          question to the first token, decode tokens/s), plus the process's wall time.
  server  `python -m runtime serve` in a subprocess; a streaming HTTP client measures time from
          sending the request to the first content event, and decode tokens/s between first and last.
  load    C clients at once (C = 1, 2, 4, 8), queue big enough for all: throughput, latency
          p50/p95, time to first token p50/p95; then 16 clients against --queue 4: answered vs 429.
Ratios are server / CLI, measured in the same run.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench_record import BenchRecord  # noqa: E402
os.environ["HF_HUB_OFFLINE"] = "1"

QUESTIONS = [
    "How do I create a virtual environment?",
    "How do I read a file line by line?",
    "What does the break statement do in a loop?",
    "How are exceptions handled with try and except?",
]


def staged_default_bundle(work: Path) -> Path:
    from bundler.pipeline import BuildConfig, stage

    staging = work / "staging"
    staging.mkdir()
    stage(BuildConfig(), staging)
    return staging


def runtime_command(bundle: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "runtime", "--bundle", str(bundle), *args]


def cli_run(bundle: Path, question: str, threads: int, max_tokens: int) -> dict:
    started = time.perf_counter()
    done = subprocess.run(runtime_command(bundle, "ask", question, "--json", "--threads", str(threads),
                                          "--max-tokens", str(max_tokens)),
                          cwd=ROOT, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - started
    stats = json.loads(done.stdout)["stats"]
    return {"ttft": stats["first_token_s"], "tps": stats["decode_tokens_per_s"], "tokens": stats["new_tokens"],
            "wall": wall}


class Server:
    def __init__(self, bundle: Path, threads: int, queue: int, queue_timeout: float):
        self.process = subprocess.Popen(
            runtime_command(bundle, "serve", "--port", "0", "--threads", str(threads), "--queue", str(queue),
                            "--queue-timeout", str(queue_timeout), "--max-tokens-cap", "4096"),
            cwd=ROOT, stderr=subprocess.PIPE, text=True)
        for line in self.process.stderr:
            found = re.search(r"serving http://([\d.]+):(\d+)/", line)
            if found:
                self.host, self.port = found.group(1), int(found.group(2))
                break
        else:
            raise RuntimeError("the server did not start")
        # Keep draining stderr so the server never blocks on a full pipe.
        threading.Thread(target=self.process.stderr.read, daemon=True).start()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)

    def stream(self, question: str, max_tokens: int) -> dict:
        """One streamed chat completion: status, time to first content, decode tokens/s."""
        body = json.dumps({"messages": [{"role": "user", "content": question}], "stream": True,
                           "max_tokens": max_tokens, "temperature": 0,
                           "stream_options": {"include_usage": True}})
        conn = http.client.HTTPConnection(self.host, self.port, timeout=600)
        started = time.perf_counter()
        conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        if response.status != 200:
            response.read()
            conn.close()
            return {"status": response.status, "total": time.perf_counter() - started}
        first = last = None
        tokens = 0
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            if event.get("choices") and event["choices"][0]["delta"].get("content"):
                last = time.perf_counter()
                first = first or last
        conn.close()
        total = time.perf_counter() - started
        decode = (tokens - 1) / (last - first) if first and last and last > first and tokens > 1 else 0.0
        return {"status": 200, "ttft": (first or started) - started, "tps": decode, "tokens": tokens,
                "total": total}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def load_round(server: Server, clients: int, max_tokens: int) -> list[dict]:
    results: list = [None] * clients
    barrier = threading.Barrier(clients)

    def one(i: int) -> None:
        barrier.wait()
        started = time.perf_counter()
        try:
            results[i] = server.stream(QUESTIONS[i % len(QUESTIONS)], max_tokens)
        except OSError as exc:
            results[i] = {"status": type(exc).__name__, "total": time.perf_counter() - started}

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    for r in results:
        r["round_s"] = elapsed
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, help="staging folder or bundle executable payload (default: stage the default model)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3, help="passes over the questions for CLI and server")
    parser.add_argument("--load-tokens", type=int, default=32, help="new tokens per request in the load rounds")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)

    with BenchRecord("query_app", vars(args)) as record, \
            tempfile.TemporaryDirectory(prefix="bench-query-", dir=ROOT / ".cache") as tmp:
        bundle = args.bundle or staged_default_bundle(Path(tmp))
        print(f"bundle: {bundle}  threads {args.threads}  max tokens {args.max_tokens}  "
              f"{len(QUESTIONS)} questions x {args.runs} runs, greedy")

        server = Server(bundle, args.threads, queue=32, queue_timeout=3600)
        try:
            server.stream(QUESTIONS[0], 8)  # warm-up: first-call costs are not what is compared
            cli, served = [], []
            for _ in range(args.runs):
                for question in QUESTIONS:
                    cli.append(cli_run(bundle, question, args.threads, args.max_tokens))
                    served.append(server.stream(question, args.max_tokens))

            def med(rows, key):
                return statistics.median(r[key] for r in rows)

            print("\n| path | time to first token s (median) | decode tok/s (median) | new tokens (median) |")
            print("|---|---|---|---|")
            print(f"| CLI `ask` (in-process stats) | {med(cli, 'ttft'):.3f} | {med(cli, 'tps'):.1f} | {med(cli, 'tokens'):.0f} |")
            print(f"| server, streaming HTTP client | {med(served, 'ttft'):.3f} | {med(served, 'tps'):.1f} | {med(served, 'tokens'):.0f} |")
            print(f"ratios server/CLI: time to first token {med(served, 'ttft') / med(cli, 'ttft'):.2f}x, "
                  f"decode {med(served, 'tps') / med(cli, 'tps'):.2f}x")
            print(f"CLI process wall time per question (start, load, answer), median: {med(cli, 'wall'):.2f} s")
            record.figures["cli"] = {key: med(cli, key) for key in ("ttft", "tps", "tokens", "wall")}
            record.figures["server"] = {key: med(served, key) for key in ("ttft", "tps", "tokens")}
            record.figures["load"] = []

            print(f"\nload: C clients at once, {args.load_tokens} new tokens each, one shared model")
            print("| clients | answered | total s | throughput tok/s | latency p50 s | latency p95 s | TTFT p50 s | TTFT p95 s |")
            print("|---|---|---|---|---|---|---|---|")
            for clients in (1, 2, 4, 8):
                rows = load_round(server, clients, args.load_tokens)
                ok = [r for r in rows if r["status"] == 200]
                latency = [r["total"] for r in ok]
                ttft = [r["ttft"] for r in ok]
                record.figures["load"].append({"clients": clients, "answered": len(ok), "round_s": rows[0]["round_s"],
                                               "latency_p50": percentile(latency, 0.5),
                                               "ttft_p50": percentile(ttft, 0.5)})
                print(f"| {clients} | {len(ok)}/{clients} | {rows[0]['round_s']:.2f} | "
                      f"{sum(r['tokens'] for r in ok) / rows[0]['round_s']:.1f} | {percentile(latency, 0.5):.2f} | "
                      f"{percentile(latency, 0.95):.2f} | {percentile(ttft, 0.5):.2f} | {percentile(ttft, 0.95):.2f} |")
        finally:
            server.stop()

        small = Server(bundle, args.threads, queue=4, queue_timeout=3600)
        try:
            rows = load_round(small, 16, 32)
            statuses = [r["status"] for r in rows]
            refused = [r["total"] for r in rows if r["status"] != 200]
            record.figures["overload_statuses"] = statuses
            others = [s for s in statuses if s not in (200, 429, 503)]
            print(f"\noverload: 16 clients at once, --queue 4, 32 tokens each: "
                  f"{statuses.count(200)} answered, {statuses.count(429)} refused 429, "
                  f"{statuses.count(503)} refused 503, other outcomes {others}; "
                  f"refusals took at most {max(refused, default=0) * 1000:.0f} ms; all done in {rows[0]['round_s']:.2f} s")
        finally:
            small.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
