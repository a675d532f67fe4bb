"""Retrieval fixtures: sample documents written by real libraries, and the cached embedder."""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# The same builder cache the pipeline uses, so the embedder is exported once for all sessions.
SHARED_CACHE = REPO / ".cache" / "build" / "index"


def write_pdf(path: Path, pages: list[list[str]], password: str | None = None) -> Path:
    from fpdf import FPDF
    from pypdf import PdfReader, PdfWriter

    pdf = FPDF()
    pdf.set_font("Helvetica", size=11)
    for lines in pages:
        pdf.add_page()
        for line in lines:
            pdf.cell(text=line, new_x="LMARGIN", new_y="NEXT")
    pdf.output(str(path))
    if password:
        writer = PdfWriter(clone_from=PdfReader(str(path)))
        writer.encrypt(user_password=password, owner_password=password)
        with open(path, "wb") as out:
            writer.write(out)
    return path


def write_docx(path: Path, items: list[tuple[str, str]]) -> Path:
    """items: (style, text); style "h1".."h3" for headings, "p" for body paragraphs."""
    import docx

    document = docx.Document()
    for style, text in items:
        if style.startswith("h"):
            document.add_heading(text, level=int(style[1:]))
        else:
            document.add_paragraph(text)
    document.save(str(path))
    return path


MAN_PAGE = """.\\" a comment
.TH PUMPCTL 8 "2024" "station tools"
.SH NAME
pumpctl \\- control the coolant pumps
.SH SYNOPSIS
.B pumpctl
[\\fB\\-p\\fR \\fIpump\\fR] \\fBprime\\fR
.SH DESCRIPTION
.B pumpctl
primes, starts and stops coolant pumps.
.PP
Priming opens the bleed valve for thirty seconds.
.SS Exit status
Zero on success.
"""


@pytest.fixture(scope="session")
def shared_embedder():
    os.environ["HF_HUB_OFFLINE"] = "1"
    from bundler.embedder_export import export_embedder

    return export_embedder(SHARED_CACHE)


@pytest.fixture
def index_cache(tmp_path, shared_embedder) -> Path:
    """A fresh document cache that reuses the session's exported embedder."""
    cache = tmp_path / "cache"
    (cache / "embedder").mkdir(parents=True)
    (cache / "embedder" / shared_embedder.key).symlink_to(shared_embedder.folder.resolve())
    return cache


@pytest.fixture
def sample_formats(tmp_path) -> Path:
    """One small document per supported format."""
    docs = tmp_path / "formats"
    (docs / "man").mkdir(parents=True)
    (docs / "notes.txt").write_text("Fuel log\n\nDiesel tank refilled on Monday.\nLevel at ninety percent.\n")
    (docs / "guide.md").write_text("# Guide\n\nIntro.\n\n## Antenna\n\nPoint the antenna at azimuth 212.\n")
    (docs / "manual.rst").write_text("Manual\n======\n\nTop text.\n\nBattery\n-------\n\nCharge the battery weekly.\n")
    (docs / "page.html").write_text(
        "<html><head><title>x</title><style>p{}</style></head><body>\n<h1>Radio</h1>\n"
        "<p>Tune the radio to\n<b>channel 16</b> for distress calls.</p>\n<script>var hidden=1;</script>\n</body></html>\n"
    )
    write_pdf(docs / "handbook.pdf", [["Handbook cover"], ["Water filter", "Replace the ceramic filter cartridge every month."]])
    write_docx(docs / "procedures.docx", [("h1", "Procedures"), ("p", "General rules."), ("h2", "Fire"),
                                          ("p", "Use the foam extinguisher on fuel fires.")])
    (docs / "man" / "pumpctl.8").write_text(MAN_PAGE)
    (docs / "man" / "pumpctl-copy.8.gz").write_bytes(gzip.compress(MAN_PAGE.encode()))
    return docs
