"""Where the runtime's memory goes: weight-file pages dropped after the session has read them, the
prompt prefilled in chunks with one row of logits, and the decoder's output unchanged by either."""
from __future__ import annotations

import mmap
import os
import sys

import numpy as np
import pytest

from bundler.fused_graph import QuantizationPlan
from runtime.fused_decoder import PREFILL_CHUNK, FusedDecoder, cache_buffer
from runtime.generation import prefill
from runtime.page_release import PAGEOUT_INTERVAL_S, paging_out, prefetch_file_pages, release_file_pages
from tests.test_fused import PROMPT, fused_models  # noqa: F401  (the session fixture)

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")


def resident_kb(path) -> int:
    """Resident kB of this process's mappings of `path`."""
    total, inside = 0, False
    with open("/proc/self/smaps") as handle:
        for line in handle:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5 and ":" in fields[3]:
                inside = len(fields) == 6 and fields[5] == str(path)
            elif inside and fields[0] == "Rss:":
                total += int(fields[1])
    return total


def mapped_random_file(folder, seed: int):
    """8 MB of random bytes written to `folder`/weights.bin and mapped read-only (unmapped with the view):
    (path, bytes, mapped view)."""
    data = np.random.default_rng(seed).integers(0, 256, 8 << 20, dtype=np.uint8)
    path = folder / "weights.bin"
    data.tofile(path)
    with open(path, "rb") as handle:
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    return path, data, np.frombuffer(mapped, dtype=np.uint8)


@linux_only
def test_released_file_pages_leave_the_resident_set_and_read_back_the_same(tmp_path):
    path, data, view = mapped_random_file(tmp_path, 0)
    assert int(view.sum(dtype=np.int64)) == int(data.sum(dtype=np.int64))  # every page touched
    assert resident_kb(path.resolve()) >= 8 * 1024
    assert release_file_pages(tmp_path) >= 8 << 20
    assert resident_kb(path.resolve()) == 0
    assert np.array_equal(view, data)  # faulted back in from the file


def on_tmpfs(path) -> bool:
    """Pages of a tmpfs file are memory, not a file on disk: without swap the kernel cannot page them out."""
    best, kind = "", ""
    with open("/proc/self/mounts") as handle:
        for line in handle:
            mount, fs = line.split()[1:3]
            if str(path).startswith(mount) and len(mount) > len(best):
                best, kind = mount, fs
    return kind == "tmpfs"


@linux_only
def test_pages_read_while_a_session_is_made_are_paged_out_and_read_back_the_same(tmp_path):
    import time

    if on_tmpfs(tmp_path.resolve()):
        pytest.skip("the temporary folder is a tmpfs")
    path, data, view = mapped_random_file(tmp_path, 1)
    with paging_out(tmp_path):
        assert int(view.sum(dtype=np.int64)) == int(data.sum(dtype=np.int64))  # read, as a session packs it
        deadline = time.monotonic() + 40 * PAGEOUT_INTERVAL_S
        while resident_kb(path.resolve()) > 1024 and time.monotonic() < deadline:
            time.sleep(PAGEOUT_INTERVAL_S)
        assert resident_kb(path.resolve()) <= 1024
    assert np.array_equal(view, data)


def cached_fraction(view: np.ndarray) -> float:
    """The share of a page-aligned mapping's pages that are in the page cache (mincore)."""
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    pages = -(-view.nbytes // mmap.PAGESIZE)
    flags = np.zeros(pages, dtype=np.uint8)
    assert libc.mincore(view.ctypes.data, view.nbytes, flags.ctypes.data) == 0, ctypes.get_errno()
    return float((flags & 1).mean())


@linux_only
def test_paged_out_tensor_pages_are_read_back_into_the_page_cache_without_growing_the_resident_set(tmp_path):
    import time

    if on_tmpfs(tmp_path.resolve()):
        pytest.skip("the temporary folder is a tmpfs")
    path, data, whole = mapped_random_file(tmp_path, 2)
    with open(path, "rb") as handle:  # a tensor's mapping: the file's second half, as onnxruntime maps one
        half = np.frombuffer(mmap.mmap(handle.fileno(), 4 << 20, access=mmap.ACCESS_READ, offset=4 << 20), dtype=np.uint8)
        os.fsync(handle.fileno())  # written back, then out of the page cache: the file as on a station's disk
        os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    with paging_out(tmp_path):
        assert int(half.sum(dtype=np.int64)) == int(data[4 << 20:].sum(dtype=np.int64))
        deadline = time.monotonic() + 40 * PAGEOUT_INTERVAL_S
        while cached_fraction(half) > 0.1 and time.monotonic() < deadline:
            time.sleep(PAGEOUT_INTERVAL_S)
    assert cached_fraction(half) <= 0.1

    assert prefetch_file_pages(tmp_path) == 4 << 20  # the part only; the whole-file view is a reader's
    deadline = time.monotonic() + 10
    while cached_fraction(half) < 0.9 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cached_fraction(half) >= 0.9
    assert resident_kb(path.resolve()) <= 1024
    assert np.array_equal(half, data[4 << 20:])


@linux_only
def test_a_page_written_in_a_private_mapping_is_never_dropped(tmp_path):
    path = tmp_path / "weights.bin"
    np.zeros(1 << 20, dtype=np.uint8).tofile(path)
    with open(path, "r+b") as handle:
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
    mapped[0:5] = b"hello"  # a private copy of the page, nowhere in the file
    assert release_file_pages(path) == 0
    assert mapped[0:5] == b"hello"
    mapped.close()


def anonymous_kb() -> int:
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("RssAnon:"))


@linux_only
def test_a_cache_buffer_becomes_resident_only_where_tokens_are_written():
    # 8 heads of 8 MB, one token written at the start of each, as a first call writes them
    buffer = cache_buffer((1, 8, 32768, 64), np.float32)
    assert buffer.shape == (1, 8, 32768, 64) and not buffer.any()
    before = anonymous_kb()
    buffer[0, :, 0, :] = 1.0
    assert anonymous_kb() - before <= 1024  # 8 pages of 4 kB, not 8 huge pages of 2 MB
    assert float(buffer.sum()) == 8 * 64


def test_prefill_in_chunks_returns_one_row_equal_to_the_whole_prompt_fed_at_once(fused_models):
    folder = fused_models("gguf", QuantizationPlan("gguf-exact"))
    decoder = FusedDecoder.from_model_dir(folder, threads=2, max_length=64)
    assert PREFILL_CHUNK >= 256 and decoder.prefill_chunk == PREFILL_CHUNK
    whole = decoder.forward(PROMPT)
    assert whole.shape == (len(PROMPT), decoder.session.get_outputs()[0].shape[1])

    calls = []
    forward = decoder.forward
    decoder.forward = lambda ids, rows=None: calls.append((len(ids), rows)) or forward(ids, rows)
    decoder.prefill_chunk = 20  # 48 tokens: 20 + 20 + 8
    last = prefill(decoder, PROMPT)
    assert calls == [(20, 1), (20, 1), (8, 1)]
    assert last.shape == (whole.shape[1],)
    # rows do not depend on how many are fed (docs/MEASUREMENTS.md#one-vs-many-rows)
    assert np.abs(last - whole[-1]).max() <= 1e-4 * np.abs(whole).max()


def test_kv_cache_stays_float32_so_logits_do_not_depend_on_how_tokens_are_grouped(fused_models):
    """A float16 cache (bench/probe_kv_precision.py) moves these rows by ~0.07 and breaks speculation's
    identity with plain greedy; float32 keeps them bit for bit."""
    decoder = FusedDecoder.from_model_dir(fused_models("gguf", QuantizationPlan("gguf-exact")), threads=2,
                                          max_length=64)
    assert all(i.type == "tensor(float)" for i in decoder.session.get_inputs() if i.name.startswith("past_key"))
    whole = decoder.forward(PROMPT)
    decoder.reset()
    decoder.forward(PROMPT[:-8])
    assert np.array_equal(decoder.forward(PROMPT[-8:]), whole[-8:])


DECODER_PEAK = ("import sys\n"
                "import runtime\n"
                "from runtime.fused_decoder import FusedDecoder\n"
                "from runtime.generation import GenerationConfig, generate\n"
                "decoder = FusedDecoder.from_model_dir(sys.argv[1], threads=2, max_length=int(sys.argv[2]))\n"
                "prompt = [int(t) for t in sys.argv[3].split(',')]\n"
                "tokens = list(generate(decoder, prompt, GenerationConfig(max_new_tokens=8)))\n"
                "status = open('/proc/self/status').read().split('VmHWM:')[1].split()[0]\n"
                "print(len(tokens), int(status) * 1024)\n")


@linux_only
def test_peak_rss_of_a_decoder_process_stays_inside_the_formula_for_its_folder(fused_models, tiny_gguf):
    import subprocess
    from pathlib import Path

    from bundler.llama_weights import load_llama
    from runtime.kquant_expand import expansion_bytes
    from runtime.manifest import ModelInfo
    from runtime.memory import estimate_memory

    folder = fused_models("gguf", QuantizationPlan("gguf-exact"))
    spec = load_llama(tiny_gguf).spec
    info = ModelInfo("tiny", "tiny.gguf", "llama", "fused-gqa", "gguf-exact", 0, **spec.info_fields())
    context = 64
    # as bundler/budget.py counts a model folder: computed K-quant tensors instead of their heads
    stored = sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) + expansion_bytes(Path(folder))
    estimate = estimate_memory(info, stored, 0, context)
    done = subprocess.run([sys.executable, "-c", DECODER_PEAK, str(folder), str(context),
                           ",".join(map(str, PROMPT))], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    produced, peak = (int(x) for x in done.stdout.split())
    assert produced == 8
    assert 0 < peak <= estimate.total, (peak >> 20, estimate)


@linux_only
def test_a_payload_file_reads_the_same_entries_after_its_pages_are_released(bare_payload):
    from runtime.bundle import Bundle

    bundle = Bundle.open(bare_payload)
    bundle.verify()  # hashes every entry: all of the file's pages are resident in the bundle's own mapping
    before = {name: bytes(bundle.read(name)) for name in bundle.names()}
    assert resident_kb(bare_payload.resolve()) > 0
    assert release_file_pages(bare_payload) > 0
    assert resident_kb(bare_payload.resolve()) == 0
    assert {name: bytes(bundle.read(name)) for name in bundle.names()} == before
    assert np.array_equal(bundle.array("index/ids.npy"), np.arange(100))
