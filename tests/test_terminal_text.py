"""Terminal safety: what ask, chat, search and info print never carries a raw control character or
escape sequence from a document, a file name or the manifest; --json output keeps the text as it is."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.terminal_text import visible

REPO = Path(__file__).resolve().parent.parent
# Retitle the terminal, clear the screen, an 8-bit CSI, a right-to-left override.
HOSTILE = "\x1b]0;pwned\x07\x1b[2J\x9b31m\u202e"
SHOWN = "\\x1b]0;pwned\\x07\\x1b[2J\\x9b31m\\u202e"
HOSTILE_NAME = "pumps/\x1b[31mred.md"
SHOWN_NAME = "pumps/\\x1b[31mred.md"
RAW_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def test_visible_writes_out_controls_and_keeps_text_newlines_and_tabs():
    assert visible(f"a{HOSTILE}b\tc\nd é 日本 \x00\r\x7f") == f"a{SHOWN}b\tc\nd é 日本 \\x00\\x0d\\x7f"
    assert visible("plain text: no change.\n") == "plain text: no change.\n"


@pytest.fixture(scope="module")
def hostile_staging(tiny_model_staging, tmp_path_factory) -> Path:
    """The tiny model over a document whose name and text carry escape sequences, and a model name
    and licence that carry them too."""
    from bundler.index import build_index
    from bundler.pipeline import DEFAULT_CACHE, write_manifest
    from runtime.bundle import Bundle

    docs = tmp_path_factory.mktemp("hostile-docs")
    (docs / "pumps").mkdir()
    (docs / HOSTILE_NAME).write_text(f"# Coolant pump\n\nPrime the coolant pump by opening valve V12. {HOSTILE}\n")
    (docs / "solar.txt").write_text("Clean the solar panels every ninety days.\n")
    staging = tmp_path_factory.mktemp("hostile") / "staging"
    model = tiny_model_staging("int4")
    shutil.copytree(model / "model", staging / "model")
    index = build_index(docs, staging, DEFAULT_CACHE / "index", modes=("bm25",))
    info = dataclasses.replace(Bundle.open(model).model, name=f"tiny{HOSTILE}", license=f"MIT{HOSTILE}")
    write_manifest(staging, info, "host", index.info)
    return staging


def run_cli(staging: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "runtime", "--bundle", str(staging), *args], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, shown", [
    (("search", "coolant pump"), [SHOWN, SHOWN_NAME]),
    (("ask", "How is the coolant pump primed?", "--max-tokens", "8", "--threads", "1"), [SHOWN_NAME]),
    (("info",), [f"tiny{SHOWN}"]),
    (("info", "--licenses"), [f"tiny{SHOWN}", f"MIT{SHOWN}"]),
])
def test_text_output_shows_escape_sequences_instead_of_sending_them(hostile_staging, args, shown):
    done = run_cli(hostile_staging, *args)
    assert done.returncode == 0, done.stderr
    assert RAW_CONTROL.findall(done.stdout) == []
    for text in shown:
        assert text in done.stdout


def test_json_output_carries_the_document_text_and_names_unchanged(hostile_staging):
    found = json.loads(run_cli(hostile_staging, "search", "coolant pump", "--json").stdout)
    top = found["hits"][0]
    assert top["source"]["path"] == HOSTILE_NAME and HOSTILE in top["text"]
    assert json.loads(run_cli(hostile_staging, "info", "--json").stdout)["model"]["name"] == f"tiny{HOSTILE}"


def test_chat_quotes_hostile_sources_visibly_in_a_real_terminal(hostile_staging):
    pexpect = pytest.importorskip("pexpect")
    env = {**os.environ, "PYTHONPATH": str(REPO), "TERM": "dumb"}
    chat = pexpect.spawn(sys.executable, ["-m", "runtime", "--bundle", str(hostile_staging), "chat", "--threads", "1",
                                          "--max-tokens", "4"],
                         cwd=str(REPO), env=env, encoding="utf-8", timeout=120, dimensions=(40, 200))
    try:
        chat.expect("> ")
        chat.sendline("How is the coolant pump primed?")
        chat.expect(r"sources: \[\d\] ")
        chat.expect("> ")
        said = chat.before
        chat.sendline("/sources")
        chat.expect("> ")
        quoted = chat.before
        chat.sendline("/exit")
        chat.expect(pexpect.EOF)
    finally:
        chat.close()
    assert SHOWN_NAME in said + quoted and SHOWN in quoted
    for sequence in ("\x1b]0;", "\x1b[2J", "\x1b[31m", "\x9b", "\u202e"):
        assert sequence not in said + quoted
