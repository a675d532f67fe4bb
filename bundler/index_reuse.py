"""What an earlier bundle's index gives an update: each unchanged document's passages and vectors,
the embedder and the index settings, read from the bundle alone (no model file, no cache).

A document is taken over when its content key (the same key that names its parse in the builder
cache: bytes, parser code, chunking) matches the bundle's record (`layout.DOCUMENTS`) and every
one of its passages is stored under its own path. A document whose passages were indexed under
another file (listed in that passage's `also_in`) is parsed and embedded again: its own spans and
the vectors of its own embedding batch are not in the bundle.

Vectors are quantized per row, so a document's stored int8 rows and scales are exactly what a
full build would store for it again.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bundler.chunking import ChunkingConfig
from bundler.embedder_export import Embedder
from bundler.errors import BuildError
from bundler.index_bm25 import Bm25Config
from runtime import layout
from runtime.bundle import BundleError, FileBundle
from runtime.payload import SELF_PLACEHOLDER
from runtime.text_terms import ANALYZER


@dataclass
class IndexReuse:
    """Parse entries and int8 vectors by document key, as bundler.index.build_index takes them."""

    entries: dict[str, dict] = field(default_factory=dict)
    vectors: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    embedder: Embedder | None = None
    paths: set[str] = field(default_factory=set)  # every file the earlier index recorded


@dataclass
class IndexSettings:
    """The earlier index's settings an update keeps."""

    modes: tuple[str, ...]
    chunking: ChunkingConfig
    bm25: Bm25Config


def read_reuse(bundle: FileBundle, folder: Path) -> tuple[IndexReuse, IndexSettings]:
    """What `bundle`'s index holds; the embedder's files are written to `folder`."""
    settings = _json(bundle, layout.SETTINGS)
    if settings.get("format") != layout.FORMAT or settings.get("analyzer") != ANALYZER:
        raise BuildError(bundle.path, f"its index (format {settings.get('format')}, analyzer {settings.get('analyzer')}) "
                                      f"is not what this builder writes (format {layout.FORMAT}, analyzer {ANALYZER}): "
                                      "build it in full")
    if layout.DOCUMENTS not in bundle.names():
        raise BuildError(bundle.path, "has no record of its documents' contents (built before updates existed): "
                                      "build it in full once")
    try:
        modes = tuple(settings["modes"])
        index_settings = IndexSettings(modes, ChunkingConfig(**settings["chunking"]),
                                       Bm25Config(**{k: settings["bm25"][k] for k in ("k1", "b")})
                                       if "bm25" in settings else Bm25Config())
        files = _json(bundle, layout.DOCUMENTS)["files"]
        chunks = [json.loads(line) for line in bytes(bundle.read(layout.CHUNKS)).splitlines()]
    except (KeyError, TypeError, ValueError) as exc:
        raise BuildError(bundle.path, f"unreadable index settings or records ({exc})") from None
    reuse = IndexReuse()
    if "dense" in modes:
        reuse.embedder = _embedder(bundle, settings["dense"], folder)
        vectors, scales = bundle.array(layout.DENSE_VECTORS), bundle.array(layout.DENSE_SCALES)
    stored_elsewhere = {path for chunk in chunks for path in chunk.get("also_in", [])}
    by_path: dict[str, list[int]] = {}
    for chunk in chunks:
        by_path.setdefault(chunk["path"], []).append(chunk["id"])
    for record in files:
        key, path = record["key"], record["path"]
        reuse.paths.add(path)
        if "skip" in record:
            reuse.entries[key] = {k: v for k, v in record.items() if k not in ("path", "key")}
            continue
        if path in stored_elsewhere or path not in by_path:
            continue
        ids = by_path[path]
        reuse.entries[key] = {"chunks": [{k: v for k, v in chunks[i].items() if k not in ("id", "path", "also_in")}
                                         for i in ids], "warnings": record["warnings"]}
        if "dense" in modes:
            reuse.vectors[key] = (vectors[ids], scales[ids])
    return reuse, index_settings


def _json(bundle: FileBundle, name: str) -> dict:
    try:
        value = json.loads(bytes(bundle.read(name)))
    except BundleError:
        raise
    except ValueError as exc:
        raise BuildError(bundle.path, f"{name} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise BuildError(bundle.path, f"{name} is not a JSON object")
    return value


def _embedder(bundle: FileBundle, dense: dict, folder: Path) -> Embedder:
    """The bundle's own embedder, written out so an update embeds changed documents with it."""
    folder.mkdir(parents=True, exist_ok=True)
    embedder = Embedder(folder=folder, key=dense["key"], name=dense["model"], max_length=dense["max_length"])
    model = bytes(bundle.read(layout.DENSE_MODEL))
    if SELF_PLACEHOLDER in model:
        raise BuildError(bundle.path, f"{layout.DENSE_MODEL} keeps its weights outside the model; cannot update")
    embedder.model.write_bytes(model)
    embedder.tokenizer.write_bytes(bytes(bundle.read(layout.DENSE_TOKENIZER)))
    return embedder
