"""A station's real documentation folder: man pages in suffixed sections, text files without an
extension, images and binaries to pass over with a short summary, and the same passage in
several files indexed once."""
from __future__ import annotations

import gzip
import json
import struct
import zlib

from bundler.build_report import summarise_skips, write_build_report
from bundler.index import build_index
from bundler.ingest import SkippedFile, find_documents
from runtime.source_json import source_record
from tests.fixtures_retrieval import MAN_PAGE
from tests.sample_documents import write_docs
from tests.test_retrieval import open_retriever

TYPE_PAGE = """.\\" Copyright, the authors of the Linux man-pages project
.TH timespec 3type 2024-05-02 "Linux man-pages 6.8"
.SH NAME
timespec \\- time in seconds and nanoseconds
.SH DESCRIPTION
Describes times in seconds and nanoseconds for the reactor clock.
"""


def png() -> bytes:
    """A real one-pixel PNG."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00")) + chunk(b"IEND", b""))


def station_folder(root):
    docs = write_docs(root, {
        "usr/share/doc/pumpctl/copyright": "Format: machine-readable copyright\n\nFiles: *\nCopyright: the coolant pump crew\nLicense: GPL-2\n",
        "usr/share/doc/pumpctl/README": "Pumpctl\n=======\n\nRun pumpctl prime before the first start of the season.\n",
        "usr/share/doc/pumpctl/style.css": "body { color: black }\n",
    })
    man3 = docs / "usr/share/man/man3"
    man3.mkdir(parents=True)
    (man3 / "timespec.3type.gz").write_bytes(gzip.compress(TYPE_PAGE.encode()))
    (man3 / "pumpctl.3head.gz").write_bytes(gzip.compress(MAN_PAGE.encode()))
    (docs / "usr/share/doc/pumpctl/changelog.Debian.gz").write_bytes(
        gzip.compress(b"pumpctl (1.2-1) stable; urgency=low\n\n  * Bleed valve timing fixed.\n"))
    (docs / "usr/share/doc/pumpctl/logo.png").write_bytes(png())
    (docs / "usr/share/doc/pumpctl/firmware").write_bytes(bytes(range(256)) * 8)  # no extension, binary
    (docs / "usr/share/doc/pumpctl/archive.7z").write_bytes(b"7z\xbc\xaf\x27\x1c" + bytes(200))  # looks like a man section
    return docs


def test_man_sections_with_suffixes_and_extensionless_text_are_recognised_by_content(tmp_path):
    scan = find_documents(station_folder(tmp_path / "docs"))
    found, skipped = scan.found, scan.skipped
    formats = {f.relative.rsplit("/", 1)[-1]: f.format for f in found}
    assert formats == {"timespec.3type.gz": "man", "pumpctl.3head.gz": "man", "copyright": "text",
                       "README": "text", "changelog.Debian.gz": "text"}
    kinds = {s.path.rsplit("/", 1)[-1]: s.kind for s in skipped}
    assert kinds == {"logo.png": "image", "firmware": "binary", "archive.7z": "binary",
                     "style.css": "unsupported type"}


def test_suffixed_man_page_and_extensionless_text_are_searchable(tmp_path, index_cache):
    docs = station_folder(tmp_path / "docs")
    (docs / "usr/share/man/man3/itimerspec.3type.gz").write_bytes(gzip.compress(b".so man3/timespec.3type\n"))
    result = build_index(docs, tmp_path / "staging", index_cache, modes=("bm25",))
    assert result.info.documents == 5
    alias = {s.path: (s.kind, s.reason) for s in result.skipped}["usr/share/man/man3/itimerspec.3type.gz"]
    assert alias == ("man page alias", "man page alias of man3/timespec.3type (.so)")
    retriever = open_retriever(tmp_path / "staging")
    hit = retriever.search("reactor clock nanoseconds", k=1, mode="bm25")[0]
    assert hit.chunk.source.path == "usr/share/man/man3/timespec.3type.gz"
    assert hit.chunk.source.heading.startswith("timespec(3type)")
    assert retriever.search("machine-readable copyright", k=1, mode="bm25")[0].chunk.source.path == "usr/share/doc/pumpctl/copyright"
    assert retriever.search("bleed valve timing", k=1, mode="bm25")[0].chunk.source.path.endswith("changelog.Debian.gz")


def test_skips_are_summarised_by_kind_in_one_short_line():
    skipped = ([SkippedFile(f"html/img{n}.png", "unsupported file type", "image") for n in range(250)]
               + [SkippedFile(f"html/fig{n}.svg", "unsupported file type", "image") for n in range(3)]
               + [SkippedFile(f"bin/blob{n}", "not text and not a man page", "binary") for n in range(40)]
               + [SkippedFile(f"big{n}.pdf", "larger than the limit", "too large") for n in range(11)])
    line = summarise_skips(skipped, "station.build-report.json")
    assert line == ("skipped 304 files: 253 images (.png, .svg), 40 binary, 11 too large; "
                    "full list in station.build-report.json")


def test_build_report_lists_every_skipped_file_and_leaves_no_temp_file(tmp_path):
    skipped = [SkippedFile("logo.png", "unsupported file type", "image"), SkippedFile("blob", "not text and not a man page", "binary")]
    report = tmp_path / "station.build-report.json"
    write_build_report(report, documents=3, passages=7, duplicate_passages=2, skipped=skipped, warnings=["a.txt: not valid UTF-8"])
    data = json.loads(report.read_text())
    assert data["skipped"] == [{"path": "logo.png", "kind": "image", "reason": "unsupported file type"},
                               {"path": "blob", "kind": "binary", "reason": "not text and not a man page"}]
    assert data["skipped_by_kind"] == {"binary": 1, "image": 1}
    assert (data["documents"], data["passages"], data["duplicate_passages"]) == (3, 7, 2)
    assert [p.name for p in tmp_path.iterdir()] == [report.name]


def test_identical_passages_are_indexed_once_and_cite_every_file(tmp_path, index_cache):
    page = MAN_PAGE.encode()
    docs = write_docs(tmp_path / "docs", {"radio/antenna.md": "# Antenna\n\nPoint the antenna at azimuth 212 degrees.\n"})
    (docs / "man2").mkdir()
    for name in ("open.2.gz", "openat.2.gz", "creat.2.gz"):
        (docs / "man2" / name).write_bytes(gzip.compress(page))
    result = build_index(docs, tmp_path / "staging", index_cache)
    single = build_index(docs / "radio", tmp_path / "single", index_cache, modes=("bm25",))
    alone = build_index(write_docs(tmp_path / "one", {"creat.2": MAN_PAGE}), tmp_path / "one-staging", index_cache, modes=("bm25",))
    assert result.info.chunks == single.info.chunks + alone.info.chunks
    assert result.duplicate_passages == 2 * alone.info.chunks
    retriever = open_retriever(tmp_path / "staging")
    for mode in ("bm25", "dense", "hybrid"):
        hits = retriever.search("bleed valve thirty seconds priming", k=4, mode=mode)
        texts = [h.chunk.text for h in hits]
        assert len(texts) == len(set(texts)), mode  # the passage fills one source, not three
    hit = retriever.search("bleed valve thirty seconds priming", k=1, mode="hybrid")[0]
    source = hit.chunk.source
    assert source.path == "man2/creat.2.gz"  # the first in path order
    assert source.also_in == ["man2/open.2.gz", "man2/openat.2.gz"]
    record = source_record(hit)
    assert record["citation"] == f"{source.cite()} (also in 2 other files)"
    assert record["source"]["also_in"] == ["man2/open.2.gz", "man2/openat.2.gz"]
    antenna = retriever.search("antenna azimuth", k=1, mode="hybrid")[0]
    assert antenna.chunk.source.also_in == [] and source_record(antenna)["citation"] == antenna.chunk.source.cite()


def test_build_writes_its_report_beside_the_executable(tiny_station_bundle):
    report = tiny_station_bundle.with_name(tiny_station_bundle.name + ".build-report.json")
    data = json.loads(report.read_text())
    assert (data["documents"], data["skipped"], data["skipped_by_kind"]) == (3, [], {})
    assert data["passages"] >= 3 and data["duplicate_passages"] == 0
