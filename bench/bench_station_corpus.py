"""A real station corpus: Debian's own documentation packages, indexed as a new user would.

    python bench/bench_station_corpus.py [--cache .cache/station-corpus] [--dense]

Downloads the packages with `apt-get download` into the cache folder (once), unpacks them with
`dpkg -x`, builds the index with bundler.index.build_index (BM25 only unless --dense: no model
is needed either way) and prints documents, passages, identical passages indexed once, skipped
files by kind with the build's one-line summary, build time (wall and CPU) and throughput.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench_record import BenchRecord  # noqa: E402

from bundler.build_report import summarise_skips  # noqa: E402
from bundler.index import build_index  # noqa: E402

PACKAGES = ("sqlite3-doc", "debian-reference-en", "manpages-dev")


def download(packages: list[str], folder: Path) -> list[Path]:
    """The packages' .deb files, fetched with apt-get into folder unless already there."""
    folder.mkdir(parents=True, exist_ok=True)
    debs = []
    for package in packages:
        found = sorted(folder.glob(f"{package}_*.deb"))
        if not found:
            subprocess.run(["apt-get", "download", package], cwd=folder, check=True, capture_output=True)
            found = sorted(folder.glob(f"{package}_*.deb"))
        debs.append(found[-1])
    return debs


def unpack(debs: list[Path], tree: Path) -> None:
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(parents=True)
    for deb in debs:
        subprocess.run(["dpkg", "-x", str(deb), str(tree)], check=True)


def children_cpu_s() -> float:
    """CPU seconds of finished child processes (the per-file parse runs in forked children)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "station-corpus", help="downloaded packages")
    parser.add_argument("--packages", nargs="+", default=list(PACKAGES), help="Debian packages to index")
    parser.add_argument("--dense", action="store_true", help="embed the passages too (slow: the embedder is the whole cost)")
    args = parser.parse_args()
    debs = download(args.packages, args.cache / "debs")
    with BenchRecord("station_corpus", vars(args)) as record, tempfile.TemporaryDirectory() as temp:
        work = Path(temp)
        tree = work / "docs"
        unpack(debs, tree)
        files = [p for p in tree.rglob("*") if p.is_file() or p.is_symlink()]
        input_bytes = sum(p.stat().st_size for p in files if p.is_file() and not p.is_symlink())
        cache = work / "build-cache"
        if args.dense:  # reuse the exported embedder of the builder cache
            from bundler.embedder_export import export_embedder

            embedder = export_embedder(ROOT / ".cache" / "build" / "index")
            (cache / "embedder").mkdir(parents=True)
            (cache / "embedder" / embedder.key).symlink_to(embedder.folder.resolve())
        modes = ("bm25", "dense") if args.dense else ("bm25",)
        load_start = os.getloadavg()[0]
        start, cpu, child_cpu = time.perf_counter(), time.process_time(), children_cpu_s()
        result = build_index(tree, work / "staging", cache, modes=modes)
        wall = time.perf_counter() - start
        cpu = time.process_time() - cpu + children_cpu_s() - child_cpu
        kinds = Counter(s.kind for s in result.skipped)
        suffixes = Counter(Path(f.name.removesuffix(".gz")).suffix or "(none)" for f in files)
        lines = [
            f"packages: {', '.join(d.name for d in debs)}",
            f"{len(files)} files, {input_bytes / 1e6:.1f} MB (most common suffixes: "
            + ", ".join(f"{s} {n}" for s, n in suffixes.most_common(8)) + ")",
            f"{result.info.documents} documents, {result.info.chunks} passages "
            f"({result.duplicate_passages} identical passages indexed once), modes {'+'.join(modes)}",
            summarise_skips(result.skipped, "the build report") if result.skipped else "nothing skipped",
            f"build: {wall:.1f} s wall, {cpu:.1f} s CPU (with the parse children), "
            f"{result.info.documents / wall:.1f} documents/s, {result.info.chunks / wall:.0f} passages/s, "
            f"{input_bytes / 1e6 / wall:.2f} MB/s; load average {load_start:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores",
        ]
        for line in lines:
            print(line, flush=True)
        record.figures.update({
            "files": len(files), "input_bytes": input_bytes, "documents": result.info.documents,
            "passages": result.info.chunks, "duplicate_passages": result.duplicate_passages,
            "skipped_by_kind": dict(kinds), "skipped": len(result.skipped), "wall_s": wall, "cpu_s": cpu,
            "documents_per_s": result.info.documents / wall, "passages_per_s": result.info.chunks / wall,
            "warnings": len(result.warnings), "report": lines,
        })


if __name__ == "__main__":
    main()
