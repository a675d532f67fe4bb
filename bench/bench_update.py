"""Updating a bundle without its model: `build.py update`, `build.py patch` and `apply-patch` timed
on a synthetic corpus of 5,000 documents, 1% of which change (modified, added, removed).

    python bench/bench_update.py [--documents 5000] [--changed 0.01] [--model PATH] [--work DIR]

OLD is a full build of the corpus (its document parse and vectors cached in a bench-only cache
beside the shared model export and stub); the update then runs from OLD alone with an empty cache,
as at a builder that no longer has the model file. Figures: update seconds, what it reused and
embedded, the patch's size against the changed entries, and apply seconds.
Default model: the tiny test model (its export is cached by the tests); --model for another.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import time
from pathlib import Path

from bench_record import BenchRecord  # noqa: I001  (first: turns onnxruntime's telemetry off)

from bundler.pipeline import DEFAULT_CACHE, BuildConfig, build

WORDS = ("pump valve coolant antenna azimuth battery solar panel bus radio beacon filter pressure gauge relay "
         "circuit breaker fuse cable harness sensor thermal loop heater radiator bearing shaft seal gasket "
         "bolt torque wrench manifold intake exhaust nozzle injector tank hatch airlock suit glove visor "
         "oxygen nitrogen scrubber canister logbook checklist inspection interval calibration drift offset").split()


def write_document(path: Path, rng: random.Random, number: int) -> None:
    """A short manual page: a heading and one paragraph of about 60 words (one passage)."""
    words = " ".join(rng.choice(WORDS) for _ in range(60))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# Procedure {number}\n\n{words.capitalize()}.\n", encoding="utf-8")


def write_corpus(root: Path, documents: int, seed: int = 0) -> list[Path]:
    rng = random.Random(seed)
    paths = [root / f"section-{n // 100:02d}" / f"procedure-{n:05d}.md" for n in range(documents)]
    for number, path in enumerate(paths):
        write_document(path, rng, number)
    return paths


def change_corpus(paths: list[Path], share: float, seed: int = 1) -> dict[str, int]:
    """share of the corpus changed: 60% of it modified, 20% added, 20% removed."""
    rng = random.Random(seed)
    count = max(3, round(len(paths) * share))
    chosen = rng.sample(paths, count)
    modified, removed = chosen[: count * 3 // 5], chosen[count * 3 // 5: count * 4 // 5]
    added = count - len(modified) - len(removed)
    for path in modified:
        write_document(path, rng, 100000 + paths.index(path))
    for path in removed:
        path.unlink()
    for n in range(added):
        write_document(paths[0].parent.parent / "added" / f"procedure-new-{n:03d}.md", rng, 200000 + n)
    return {"modified": len(modified), "added": added, "removed": len(removed)}


def bench_cache(work: Path) -> Path:
    """Shared model exports, stubs and embedder; the corpus's parses and vectors stay in the bench folder."""
    cache = work / "cache"
    (cache / "index").mkdir(parents=True, exist_ok=True)
    for link, target in ((cache / "models", DEFAULT_CACHE / "models"), (cache / "stubs", DEFAULT_CACHE / "stubs"),
                         (cache / "index" / "embedder", DEFAULT_CACHE / "index" / "embedder")):
        if not link.exists():
            target.mkdir(parents=True, exist_ok=True)
            link.symlink_to(target.resolve())
    return cache


def tiny_model() -> Path:
    from tests.fixtures_model import TINY_LLAMA, TINY_SEED, _digest, build_tiny_llama, cached_folder

    return cached_folder("tiny-llama", _digest(TINY_LLAMA, TINY_SEED), build_tiny_llama)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=5000)
    parser.add_argument("--changed", type=float, default=0.01, help="share of the documents changed (default 0.01)")
    parser.add_argument("--model", type=Path, default=None, help="model to build with (default: the tiny test model)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-update"))
    args = parser.parse_args()

    from bundler.patch_writer import write_patch
    from bundler.update import UpdateConfig, update
    from runtime.bundle import FileBundle
    from runtime.patch import rebuilt_file

    shutil.rmtree(args.work, ignore_errors=True)
    docs = args.work / "docs"
    with BenchRecord("update", {**vars(args), "model": str(args.model or "tiny test model")}) as record:
        paths = write_corpus(docs, args.documents)
        started = time.perf_counter()
        old = build(BuildConfig(model=args.model or tiny_model(), docs=docs, output=args.work / "old" / "station",
                                quantization=None if args.model else "int4", cache_dir=bench_cache(args.work)))
        record.figures["full_build_s"] = round(time.perf_counter() - started, 2)
        record.figures["passages"] = old.manifest.index.chunks
        record.figures["changes"] = change_corpus(paths, args.changed)

        cpu, started = os.times(), time.perf_counter()
        new = update(UpdateConfig(old=old.executable, docs=docs, output=args.work / "new" / "station",
                                  cache_dir=args.work / "empty-cache"))
        record.figures["update_s"] = round(time.perf_counter() - started, 2)
        record.figures["update_cpu_s"] = round(sum(os.times()[:4]) - sum(cpu[:4]), 2)
        record.figures.update(reused=new.reused, parsed=new.parsed, embedded=new.embedded, removed=new.removed)

        started = time.perf_counter()
        patch = write_patch(old.executable, new.executable, args.work / "station.patch")
        record.figures["patch_s"] = round(time.perf_counter() - started, 2)
        layout = FileBundle(new.executable).layout
        tail = layout.file_size - layout.trailer.manifest_offset
        record.figures.update(
            executable_bytes=layout.file_size, patch_bytes=patch.size, changed_entries=patch.changed,
            changed_entry_bytes=patch.changed_bytes, manifest_trailer_bytes=tail,
            patch_over_changed_entries=round(patch.size / patch.changed_bytes, 4),
            patch_over_changed_entries_and_manifest=round(patch.size / (patch.changed_bytes + tail), 4))

        started = time.perf_counter()
        with rebuilt_file(old.executable, patch.path, args.work / "station-v2") as (_, header):
            pass
        record.figures["apply_s"] = round(time.perf_counter() - started, 2)
        assert header.new_sha256.hex() == new.sha256
        record.figures["load_after"] = os.getloadavg()
    for name, value in record.figures.items():
        print(f"{name}: {value}")


if __name__ == "__main__":
    main()
