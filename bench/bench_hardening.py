"""Hardening figures: bad inputs per kind and outcome, tamper detection rate, server load.

    python bench/bench_hardening.py --bundle dist/station [--requests 1000] [--concurrency 16] [--flips 1000]

--bundle is a built executable (or bare payload file) for the tamper figures, and its model and
index serve the load figures. Prints markdown tables; figures are from this run only.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_record import BenchRecord  # noqa: E402
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def corpus_table(work: Path) -> dict:
    from bundler.index import build_index
    from bundler.isolated_parse import ParseLimits
    from tests.hostile_corpus import generate

    kinds = generate(work / "docs")
    started = time.perf_counter()
    result = build_index(work / "docs", work / "staging", work / "cache", modes=("bm25",),
                         limits=ParseLimits(time_s=30.0, memory_bytes=1 << 30))
    seconds = time.perf_counter() - started
    skipped = {s.path for s in result.skipped}
    outcome = Counter((kind, "skipped with reason" if path in skipped else "indexed (warning at most)")
                      for path, kind in kinds.items())
    print(f"\n## Hostile documents: {len(kinds)} files, build completed in {seconds:.1f} s "
          f"({result.info.documents} documents indexed, {len(result.skipped)} skipped)\n")
    print("| kind | files | skipped with reason | indexed (warning at most) |\n|---|---|---|---|")
    for kind in sorted({k for k, _ in outcome}):
        print(f"| {kind} | {outcome[(kind, 'skipped with reason')] + outcome[(kind, 'indexed (warning at most)')]} "
              f"| {outcome[(kind, 'skipped with reason')]} | {outcome[(kind, 'indexed (warning at most)')]} |")
    return {"files": len(kinds), "seconds": seconds, "indexed": result.info.documents, "skipped": len(result.skipped),
            "by_kind": {f"{kind}: {how}": count for (kind, how), count in sorted(outcome.items())}}


def tamper_table(bundle: Path, flips: int, work: Path) -> dict:
    from runtime.bundle import Bundle, BundleError

    subject = Path(shutil.copy2(bundle, work / bundle.name))
    opened = Bundle.open(subject)
    start, size = opened.layout.trailer.payload_start, opened.layout.file_size
    rng = random.Random(1)
    detected = 0
    with open(subject, "r+b") as handle:
        for _ in range(flips):
            offset = rng.randrange(start, size)
            handle.seek(offset)
            original = handle.read(1)[0]
            handle.seek(offset)
            handle.write(bytes([original ^ rng.randrange(1, 256)]))
            handle.flush()
            try:
                Bundle.open(subject).verify()
            except BundleError:
                detected += 1
            handle.seek(offset)
            handle.write(bytes([original]))
            handle.flush()
    truncations = 0
    refused = 0
    data = subject.read_bytes()
    cut = work / "cut"
    for point in sorted(rng.randrange(0, size) for _ in range(100)):
        cut.write_bytes(data[:point])
        truncations += 1
        try:
            Bundle.open(cut).verify()
        except BundleError:
            refused += 1
    print(f"\n## Tampering ({bundle.name}, {size / 1e6:.1f} MB, payload and manifest {(size - start) / 1e6:.1f} MB)\n")
    print("| test | tried | detected | rate |\n|---|---|---|---|")
    print(f"| random byte flips in payload + manifest + trailer | {flips} | {detected} | {detected / flips:.1%} |")
    print(f"| truncations at random points | {truncations} | {refused} | {refused / truncations:.1%} |")
    return {"flips": flips, "flips_detected": detected, "truncations": truncations, "truncations_refused": refused}


def _chat(port: int, content: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": content}], "max_tokens": 1})
    connection.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    status = connection.getresponse().status
    connection.close()
    return status


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def load_table(bundle: Path, requests: int, concurrency: int) -> dict:
    from runtime.assistant import Assistant
    from runtime.bundle import Bundle
    from runtime.generation import GenerationConfig
    from runtime.server import ServerConfig, make_server

    assistant = Assistant.from_bundle(Bundle.open(bundle), threads=2, ctx=1024)
    server = make_server(assistant, ServerConfig(port=0, queue_size=concurrency, max_tokens_cap=1), "m",
                         GenerationConfig(max_new_tokens=1))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    errors = 0
    started = time.perf_counter()
    rss_100 = None
    for number in range(1, requests + 1):
        errors += _chat(port, f"Question {number}: how is the pump primed?") != 200
        if number == min(100, requests):
            rss_100 = _rss()
    sequential_s = time.perf_counter() - started
    rss_end = _rss()
    statuses: Counter = Counter()
    lock = threading.Lock()

    def client() -> None:
        for _ in range(4):
            status = _chat(port, "How is the pump primed?")
            with lock:
                statuses[status] += 1

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    concurrent_s = time.perf_counter() - started
    server.shutdown()
    print(f"\n## Server load (loopback, max_tokens 1, {bundle.name})\n")
    print("| run | requests | concurrency | errors | seconds | RSS |\n|---|---|---|---|---|---|")
    print(f"| sequential | {requests} | 1 | {errors} | {sequential_s:.1f} | {rss_100 / 2**20:.1f} MB at #100 -> "
          f"{rss_end / 2**20:.1f} MB at #{requests} ({(rss_end / rss_100 - 1):+.1%}) |")
    print(f"| concurrent | {sum(statuses.values())} | {concurrency} | {sum(v for k, v in statuses.items() if k != 200)} "
          f"| {concurrent_s:.1f} | statuses {dict(statuses)} |")
    return {"sequential_requests": requests, "sequential_errors": errors, "sequential_s": sequential_s,
            "rss_at_100": rss_100, "rss_at_end": rss_end, "concurrency": concurrency, "concurrent_s": concurrent_s,
            "concurrent_statuses": dict(statuses)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, required=True, help="a built executable or payload file")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--flips", type=int, default=1000)
    args = parser.parse_args()
    with BenchRecord("hardening", vars(args)) as record, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        record.figures["hostile_corpus"] = corpus_table(work / "corpus")
        record.figures["tampering"] = tamper_table(args.bundle, args.flips, work)
        record.figures["server_load"] = load_table(args.bundle, args.requests, args.concurrency)


if __name__ == "__main__":
    main()
