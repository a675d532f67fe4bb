"""A generated corpus of malformed documents, each labelled with the kind of damage it carries.

Deterministic for a seed. Used by the hardening tests (built once per session) and by
bench/bench_hardening.py, which prints the outcome per kind.
"""
from __future__ import annotations

import gzip
import io
import os
import random
import zipfile
from pathlib import Path

GOOD_DOCS = {
    "good/coolant-pump.md": "# Coolant pump P-7\n\nPrime the coolant pump P-7 by opening bleed valve V12 for thirty seconds.\n",
    "good/solar.txt": "Solar array\n\nClean the solar array panels every ninety days with deionised water.\n",
    "good/antenna.html": "<html><body><h1>Antenna</h1><p>Point the antenna at azimuth 212 degrees.</p></body></html>",
}
# Kinds whose every file must be skipped (the rest may also be indexed with a warning, e.g. text
# with a few invalid UTF-8 bytes, or a PDF whose damage pypdf repairs).
MUST_SKIP = {"encrypted_pdf", "zip_bomb_docx", "nul_filled", "long_line_50mb", "symlink_loop", "fifo",
             "gzip_bomb", "empty"}
LONG_LINE_BYTES = 50 * 1024 * 1024


def text_pdf(pages: list[str]) -> bytes:
    """A minimal valid PDF with one line of Helvetica text per page."""
    objects: list[bytes] = []
    page_ids = [4 + 2 * i for i in range(len(pages))]
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{' '.join(f'{p} 0 R' for p in page_ids)}] /Count {len(pages)} >>".encode())
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    for page_id, text in zip(page_ids, pages):
        stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
                       f"/Contents {page_id + 1} 0 R >>".encode())
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))
    return out.getvalue()


def encrypted_pdf(seed: int) -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(text_pdf([f"secret page {seed}"]))))
    writer.encrypt(user_password=f"pw{seed}", owner_password="owner", algorithm="RC4-40" if seed % 2 else "RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def docx_bytes(document_xml: bytes, compression=zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression) as archive:
        archive.writestr("[Content_Types].xml",
                         '<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
                         '<Default Extension="xml" ContentType="application/xml"/>'
                         '<Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-officedocument.'
                         'wordprocessingml.document.main+xml"/></Types>')
        archive.writestr("_rels/.rels",
                         '<?xml version="1.0"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
                         '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/'
                         'officeDocument" Target="word/document.xml"/></Relationships>')
        archive.writestr("word/document.xml", document_xml)
    return out.getvalue()


def _body(paragraphs: str) -> bytes:
    return ('<?xml version="1.0"?><w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main">'
            f"<w:body>{paragraphs}</w:body></w:document>").encode()


def forged_size_bomb(size: int) -> bytes:
    """A docx whose document.xml inflates to `size` bytes while its headers claim 1 KiB."""
    data = bytearray(docx_bytes(_body("<w:p><w:r><w:t>" + " " * size + "</w:t></w:r></w:p>")))
    name = b"word/document.xml"
    for signature, size_at in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        start = 0
        while (start := data.find(signature, start)) >= 0:
            name_at = start + (30 if signature == b"PK\x03\x04" else 46)
            if data[name_at:name_at + len(name)] == name:
                data[start + size_at:start + size_at + 4] = (1024).to_bytes(4, "little")
            start += 4
    return bytes(data)


def generate(root: Path, seed: int = 7) -> dict[str, str]:
    """Write the corpus under root; returns {relative path: kind} for the hostile files."""
    rng = random.Random(seed)
    kinds: dict[str, str] = {}

    def put(kind: str, name: str, data: bytes) -> None:
        relative = f"{kind}/{name}"
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        kinds[relative] = kind

    for relative, text in GOOD_DOCS.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)

    pdf = text_pdf([f"Page {n}: the relief valve opens at {n * 10} kPa." for n in range(1, 6)])
    for n in range(30):
        put("truncated_pdf", f"cut{n}.pdf", pdf[:rng.randrange(1, len(pdf) - 1)])
    for n in range(20):
        damaged = bytearray(pdf)
        for _ in range(rng.randrange(1, 60)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        put("corrupt_pdf", f"flip{n}.pdf", bytes(damaged))
    for n in range(5):
        put("corrupt_pdf", f"noise{n}.pdf", b"%PDF-1.7\n" + rng.randbytes(rng.randrange(10, 5000)))
    for n in range(10):
        put("encrypted_pdf", f"locked{n}.pdf", encrypted_pdf(n))

    for n in range(8):
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("word/document.xml", _body("<w:p/>") + b" " * ((20 + n) << 20))
        put("zip_bomb_docx", f"bomb{n}.docx", out.getvalue())
    for n in range(4):
        put("zip_bomb_docx", f"forged{n}.docx", forged_size_bomb((8 + n) << 20))
    good_docx = docx_bytes(_body("<w:p><w:r><w:t>Check the pump seals weekly.</w:t></w:r></w:p>"))
    for n in range(6):
        put("corrupt_docx", f"cut{n}.docx", good_docx[:rng.randrange(1, len(good_docx) - 1)])
    for n in range(4):
        put("corrupt_docx", f"noise{n}.docx", rng.randbytes(rng.randrange(1, 4000)))
    put("corrupt_docx", "no-document.docx", docx_bytes(b"").replace(b"word/document.xml", b"word/elsewhere.xml"))
    put("corrupt_docx", "bad-xml.docx", docx_bytes(b"<w:document><w:body><w:p>unclosed"))
    put("corrupt_docx", "deep-xml.docx", docx_bytes(_body("<w:p>" * 200_000)))
    put("corrupt_docx", "entity-expansion.docx", docx_bytes(
        b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
        b'<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">'
        b'<!ENTITY e "&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;"><!ENTITY f "&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;">]>'
        b'<d>&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;</d>'))
    put("corrupt_docx", "external-entity.docx", docx_bytes(
        b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]><d>&x;</d>'))

    suffixes = [".txt", ".md", ".rst", ".1", ".8"]
    for n in range(25):
        sample = bytearray("Maintenance note: torque the flange bolts to 40 Nm.\n".encode() * rng.randrange(1, 20))
        for _ in range(rng.randrange(1, 400)):
            sample[rng.randrange(len(sample))] = rng.choice([0x80, 0xC0, 0xC1, 0xF5, 0xFF, 0xED, 0xE0])
        put("invalid_utf8", f"bad{n}{suffixes[n % len(suffixes)]}", bytes(sample))
    for n in range(15):
        size = rng.randrange(1, 200_000)
        data = bytes(size) if n % 2 == 0 else bytes(rng.choice([0, 0, 0, 65]) for _ in range(min(size, 5000)))
        put("nul_filled", f"nul{n}{suffixes[n % len(suffixes)]}", data)
    for n, suffix in enumerate((".txt", ".md")):
        put("long_line_50mb", f"line{n}{suffix}", b"a" * (LONG_LINE_BYTES - 1) + b"\n")
    for n in range(15):
        depth = rng.randrange(10_000, 200_000)
        tag = rng.choice(["div", "span", "table", "ul", "b", "p"])
        body = f"<{tag}>" * depth + "deep text" + (f"</{tag}>" * depth if n % 3 == 0 else "")
        put("nested_html", f"deep{n}.html", f"<html><body>{body}</body></html>".encode())
    for n in range(25):
        suffix = [".html", ".md", ".txt", ".pdf", ".docx", ".rst", ".3", ".htm"][n % 8]
        put("random_bytes", f"noise{n}{suffix}", rng.randbytes(rng.randrange(1, 20_000)))
    for n in range(3):
        put("gzip_bomb", f"bomb{n}.txt.gz", gzip.compress(b"a" * (60 << 20), compresslevel=6))
    for n in range(2):
        put("gzip_bomb", f"broken{n}.md.gz", gzip.compress(b"# heading\n" * 100)[:-rng.randrange(5, 40)])
    for n in range(10):
        put("empty", f"empty{n}{suffixes[n % len(suffixes)]}", b"" if n % 2 == 0 else b" \n\t\n" * n)

    loops = root / "symlink_loop"
    loops.mkdir()
    for n in range(4):
        os.symlink(f"self{n}.md", loops / f"self{n}.md")
        kinds[f"symlink_loop/self{n}.md"] = "symlink_loop"
    for n in range(3):
        os.symlink(f"b{n}.txt", loops / f"a{n}.txt")
        os.symlink(f"a{n}.txt", loops / f"b{n}.txt")
        kinds[f"symlink_loop/a{n}.txt"] = kinds[f"symlink_loop/b{n}.txt"] = "symlink_loop"
    os.symlink("..", loops / "up")
    for n in range(2):
        os.mkfifo(root / f"fifo{n}.txt")
        kinds[f"fifo{n}.txt"] = "fifo"
    return kinds
