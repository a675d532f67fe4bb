"""Start-up and packaging figures for the one-file executable (issue 5).

Prints, for synthetic payloads of 100 MB, 300 MB and 1 GB (a Gather model whose weights are
external data, plus small index arrays):
- start-to-ready (`EXE verify --quick`: trailer, sizes, manifest hash, model session created),
  median of N warm and N cold runs; cold evicts the bundle file from the page cache
  (posix_fadvise DONTNEED) and, where permitted, drops all caches;
- the same start with the stub alone and no payload trailer search (reference, same run);
- RSS after load against the model size, split into file-backed and anonymous memory;
- executable, stub and payload sizes; what the stub unpacks at every start;
- stub build time cold (empty cache) and cached, bundle time with a cached stub against a plain
  copy of the same bytes (the time to write the payload).

Usage: python bench/bench_startup.py [--sizes 100,300,1000] [--runs 5] [--skip-cold-stub] [--work DIR]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
from bench_record import BenchRecord  # noqa: E402

from bundler.package import package  # noqa: E402
from bundler.pipeline import DEFAULT_CACHE  # noqa: E402
from bundler.stub import build_stub  # noqa: E402
from targets import host_target  # noqa: E402
from tests.fixtures_packaging import make_staging  # noqa: E402

MB = 1_000_000

RSS_PROBE = """
import sys, numpy as np, onnxruntime as ort
from runtime.bundle import Bundle
bundle = Bundle.open(sys.argv[1])
session = bundle.onnx_session("model/model.onnx", ort.SessionOptions())
rows = bundle.manifest.model.vocab_size
session.run(None, {"ids": np.arange(0, rows, max(1, rows // 64))})
fields = {}
for line in open("/proc/self/status"):
    key, _, value = line.partition(":")
    if key in ("VmRSS", "RssAnon", "RssFile"):
        fields[key] = int(value.split()[0]) * 1024
import os
file_size = os.path.getsize(sys.argv[1])
mapped = 0
for line in open("/proc/self/smaps"):
    if sys.argv[1] in line:
        start, end = (int(x, 16) for x in line.split()[0].split("-"))
        if end - start < file_size:  # onnxruntime's mapping of the weights, not Bundle's of the whole file
            mapped = max(mapped, end - start)
print(fields["VmRSS"], fields["RssAnon"], fields["RssFile"], mapped)
"""


def drop_caches() -> bool:
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def evict(path: Path) -> None:
    with open(path, "rb") as handle:
        os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def start_to_ready(exe: Path, cwd: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run([str(exe), "verify", "--quick"], cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{exe} failed: {done.stderr.strip()}")
    return elapsed


def stub_alone(stub: Path, cwd: Path) -> float:
    started = time.perf_counter()
    subprocess.run([str(stub), "--help"], cwd=cwd, capture_output=True)
    return time.perf_counter() - started


def unpacked_bytes(stub: Path) -> tuple[int, int]:
    from PyInstaller.archive.readers import CArchiveReader

    # onefile extracts every entry but scripts, modules inside the PYZ, options and the PYZ itself
    toc = CArchiveReader(str(stub)).toc.values()
    extracted = [entry for entry in toc if entry[4] not in "smMoz"]
    return sum(entry[2] for entry in extracted), len(extracted)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,300,1000", help="payload weights in MB, comma-separated")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--skip-cold-stub", action="store_true", help="do not time a stub build from an empty cache")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp folder)")
    args = parser.parse_args()
    target = host_target()
    stub_cache = DEFAULT_CACHE / "stubs"
    work = Path(tempfile.mkdtemp(prefix="bench-startup-", dir=args.work))
    try:
        with BenchRecord("startup", vars(args)) as record:
            measure(args, target, stub_cache, work, record)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(args, target, stub_cache: Path, work: Path, record: BenchRecord) -> None:
    print(f"host: {target.description}, {target.threads} cores, onnxruntime {target.onnxruntime}")
    if not args.skip_cold_stub:
        started = time.perf_counter()
        build_stub(target, work / "cold-stubs")
        print(f"stub build, empty cache: {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    stub = build_stub(target, stub_cache)
    print(f"stub build, cached: {time.perf_counter() - started:.3f} s")
    record.figures["sizes"] = []
    unpacked, files = unpacked_bytes(stub)
    print(f"stub: {stub.stat().st_size / MB:.1f} MB file, unpacks {unpacked / MB:.1f} MB in {files} files at every start")
    record.figures["stub"] = {"file_mb": stub.stat().st_size / MB, "unpacked_mb": unpacked / MB, "unpacked_files": files}
    reference = statistics.median(stub_alone(stub, work) for _ in range(args.runs))
    print(f"stub alone (--help, no payload), median of {args.runs}: {reference:.3f} s")
    can_drop = drop_caches()
    print("cold runs: " + ("drop_caches and " if can_drop else "drop_caches not permitted here; ")
          + "bundle file evicted with posix_fadvise(DONTNEED)")
    print()
    print("| payload MB | exe MB | exe/payload | bundle s (cached stub) | plain copy s | warm start s | x stub alone "
          "| cold start s | RSS MB | anon MB | file-backed MB | weights MB | weights mapped MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for size_mb in (int(s) for s in args.sizes.split(",")):
        staging = make_staging(work / f"staging-{size_mb}", weight_bytes=size_mb * MB)
        payload = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file())
        copy_started = time.perf_counter()
        with open(work / "copy", "wb") as out:
            for p in sorted(staging.rglob("*")):
                if p.is_file():
                    with open(p, "rb") as src:
                        shutil.copyfileobj(src, out, 4 << 20)
            out.flush()
            os.fsync(out.fileno())
        plain_copy = time.perf_counter() - copy_started
        os.unlink(work / "copy")
        started = time.perf_counter()
        exe = package(staging, target, work / f"station-{size_mb}", stub_cache)
        bundle_time = time.perf_counter() - started
        shutil.rmtree(staging)
        warm = [start_to_ready(exe, work) for _ in range(args.runs)]
        cold = []
        for _ in range(args.runs):
            if can_drop:
                drop_caches()
            evict(exe)
            cold.append(start_to_ready(exe, work))
        probe = subprocess.run([sys.executable, "-c", RSS_PROBE, str(exe)], cwd=REPO_ROOT,
                               capture_output=True, text=True, check=True)
        rss, anon, file_backed, mapped = (int(x) for x in probe.stdout.split())
        weights = size_mb * MB
        print(f"| {payload / MB:.0f} | {exe.stat().st_size / MB:.0f} | {exe.stat().st_size / payload:.3f} "
              f"| {bundle_time:.2f} | {plain_copy:.2f} | {statistics.median(warm):.3f} "
              f"| {statistics.median(warm) / reference:.2f} | {statistics.median(cold):.3f} "
              f"| {rss / MB:.0f} | {anon / MB:.0f} | {file_backed / MB:.0f} | {weights / MB:.0f} | {mapped / MB:.0f} |")
        record.figures["sizes"].append({
            "payload_mb": payload / MB, "exe_mb": exe.stat().st_size / MB, "bundle_s": bundle_time,
            "plain_copy_s": plain_copy, "warm_start_s": statistics.median(warm), "stub_alone_s": reference,
            "cold_start_s": statistics.median(cold), "rss_mb": rss / MB, "anon_mb": anon / MB,
            "file_backed_mb": file_backed / MB, "weights_mapped_mb": mapped / MB})
        exe.unlink()


if __name__ == "__main__":
    main()
