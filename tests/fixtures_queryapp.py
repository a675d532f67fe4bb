"""Fixtures of the query app tests: a staged tiny-model bundle, its assistant, a running server."""
from __future__ import annotations

import dataclasses
import shutil
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from bundler.pipeline import DEFAULT_CACHE, REPO_ROOT
from tests.sample_documents import write_docs

PUMP_QUESTION = "How is the coolant pump P-7 primed?"
TEST_CTX = 1024
MODEL_ID = "tiny-llama"
# Kept after the run, so a person can look at the page the browser test saw.
SCREENSHOT = REPO_ROOT / ".cache" / "screenshots" / "web-page.png"


@pytest.fixture(scope="session")
def query_staging(tiny_model_staging, tmp_path_factory) -> Path:
    """A staging folder (tiny random Llama, int4, + an index of three documents), opened by the runtime."""
    from bundler.index import build_index
    from bundler.pipeline import write_manifest
    from runtime.bundle import Bundle

    docs = write_docs(tmp_path_factory.mktemp("query-docs"))
    staging = tmp_path_factory.mktemp("query") / "staging"
    model = tiny_model_staging("int4")
    shutil.copytree(model / "model", staging / "model")
    index = build_index(docs, staging, DEFAULT_CACHE / "index")
    write_manifest(staging, dataclasses.replace(Bundle.open(model).model, name=MODEL_ID), "host", index.info)
    return staging


@pytest.fixture(scope="session")
def query_assistant(query_staging):
    from runtime.assistant import Assistant
    from runtime.bundle import Bundle

    return Assistant.from_bundle(Bundle.open(query_staging), threads=1, ctx=TEST_CTX)


@contextmanager
def running_server(assistant, **settings) -> Iterator:
    """A real server on a free loopback port, serving from a background thread."""
    from runtime.assistant import AskOptions
    from runtime.generation import GenerationConfig
    from runtime.server import ServerConfig, make_server

    server = make_server(assistant, ServerConfig(port=0, **settings), MODEL_ID,
                         AskOptions(generation=GenerationConfig(max_new_tokens=16)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(scope="session")
def query_server(query_assistant):
    with running_server(query_assistant, max_tokens_cap=24, max_body_bytes=64 * 1024) as server:
        yield server
