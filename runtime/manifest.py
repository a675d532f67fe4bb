"""The bundle manifest: one typed description of everything inside a bundle.

The builder fills it, the runtime reads it, `info` and `verify` print from it.
Serialised as JSON; unknown keys are rejected so that a manifest written by a
newer builder fails loudly instead of being half understood.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

FORMAT_VERSION = 1


@dataclass
class Entry:
    """One stored file of the payload (offsets are absolute in the bundle file)."""

    name: str
    offset: int
    size: int
    sha256: str


@dataclass
class QualityReport:
    """Perplexity of the bundled model against its source model on one text."""

    text: str
    tokens: int
    source_ppl: float
    bundle_ppl: float
    ratio: float
    max_ratio: float


@dataclass
class ModelInfo:
    name: str
    source: str
    architecture: str
    graph: str
    quantization: str
    parameters: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    context_length: int
    license: str = "unknown"
    source_sha256: str = ""
    quality: Optional[QualityReport] = None
    weights: str = ""  # how the source's tensor types were carried, e.g. "exact GGUF blocks: Q4_K x97, ..."

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> "ModelInfo":
        """Raises ValueError naming the first field that is missing, unknown or of the wrong type."""
        return from_plain(cls, json.loads(text, object_pairs_hook=_object_without_repeated_keys), "model info")


@dataclass
class IndexInfo:
    documents: int
    chunks: int
    modes: list[str] = field(default_factory=list)
    embedding_model: Optional[str] = None
    skipped: list[str] = field(default_factory=list)


@dataclass
class BuildInfo:
    created: str
    builder_version: str
    host: str
    python: str


@dataclass
class PackageLicense:
    name: str
    version: str
    license: str


@dataclass
class TargetInfo:
    """The target profile the bundle was built and budget-checked for."""

    name: str
    arch: str
    glibc_floor: str
    onnxruntime: str
    python: str
    ram_mb: int
    threads: int
    context: int  # the context the budget was checked at: min(model, profile); the runtime never exceeds it
    memory_mb: int = 0  # the build's estimate of resident memory at that context (runtime.memory)


@dataclass
class Manifest:
    model: ModelInfo
    index: IndexInfo
    build: BuildInfo
    target: str
    licenses: list[PackageLicense] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)
    target_profile: Optional[TargetInfo] = None
    stub_sha256: str = ""
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> "Manifest":
        """Raises ValueError naming the first field that is missing, unknown or of the wrong type."""
        data = json.loads(text, object_pairs_hook=_object_without_repeated_keys)
        if not isinstance(data, dict):
            raise ValueError("manifest is not a JSON object")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"manifest format {version!r} is not supported (expected {FORMAT_VERSION})")
        manifest = from_plain(cls, data)
        seen: set[str] = set()
        for entry in manifest.entries:
            if entry.name in seen:
                raise ValueError(f"entry {entry.name!r} is listed twice")
            seen.add(entry.name)
        return manifest

    def entry(self, name: str) -> Entry:
        for entry in self.entries:
            if entry.name == name:
                return entry
        raise KeyError(name)


def _object_without_repeated_keys(pairs: list[tuple[str, Any]]) -> dict:
    """A JSON object; a key given twice is refused, not silently the last one."""
    result: dict = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"key {key!r} appears twice in one object")
        result[key] = value
    return result


# JSON types each annotation accepts (bool is an int in Python, never in a manifest)
_SCALARS = {int: (int,), float: (int, float), str: (str,), bool: (bool,)}


def from_plain(kind: Any, value: Any, where: str = "manifest") -> Any:
    """Rebuild a (nested) dataclass of this module from plain JSON values, checking keys and types."""
    origin = typing.get_origin(kind)
    if origin is typing.Union:
        if value is None:
            return None
        inner = [a for a in typing.get_args(kind) if a is not type(None)]
        return from_plain(inner[0], value, where)
    if origin is list:
        (item,) = typing.get_args(kind)
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected a list, got {_json_type(value)}")
        return [from_plain(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected an object, got {_json_type(value)}")
        hints = typing.get_type_hints(kind, vars(sys.modules[kind.__module__]))
        fields = dataclasses.fields(kind)
        unknown = set(value) - {f.name for f in fields}
        if unknown:
            raise ValueError(f"{kind.__name__}: unknown keys {sorted(unknown)}")
        required = [f.name for f in fields
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [name for name in required if name not in value]
        if missing:
            raise ValueError(f"{where}: missing {', '.join(missing)}")
        return kind(**{k: from_plain(hints[k], v, f"{where}.{k}") for k, v in value.items()})
    accepted = _SCALARS.get(kind)
    if accepted is not None and (not isinstance(value, accepted) or (isinstance(value, bool) and kind is not bool)):
        raise ValueError(f"{where}: expected {kind.__name__}, got {_json_type(value)}")
    return value


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "true/false", int: "an integer",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)
