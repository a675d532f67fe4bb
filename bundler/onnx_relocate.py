"""Point an ONNX model's external weights into the bundle file itself.

Every external tensor gets `location` = SELF_PLACEHOLDER and an absolute `offset` in the bundle;
the runtime swaps the placeholder for the executable's own (padded) name, and onnxruntime then
memory-maps the weights straight out of the executable.
"""
from __future__ import annotations

import posixpath
from pathlib import Path
from typing import Iterator

import onnx
from onnx import TensorProto

from bundler.errors import BuildError
from runtime.kquant_expand import DERIVED_PLACEHOLDER
from runtime.payload import SELF_PLACEHOLDER


def external_data_files(model_path: Path, staging: Path) -> set[str]:
    """Staging names of the files `model_path` keeps its weights in."""
    model = _load(model_path)
    folder = model_path.parent.relative_to(staging).as_posix()
    return {_staging_name(folder, _external(t)["location"], model_path) for t in _external_tensors(model)}


def relocate(model_path: Path, staging: Path, offsets: dict[str, int], sizes: dict[str, int]) -> bytes:
    """The model's bytes with every external tensor pointing at (placeholder, absolute offset)."""
    model = _load(model_path)
    folder = model_path.parent.relative_to(staging).as_posix()
    for tensor in _external_tensors(model):
        info = _external(tensor)
        name = _staging_name(folder, info["location"], model_path)
        if name not in offsets:
            raise BuildError(model_path, f"tensor {tensor.name!r}: external data file {name} is not in the staging folder")
        start = int(info.get("offset", 0))
        length = int(info["length"]) if "length" in info else sizes[name] - start
        if start + length > sizes[name]:
            raise BuildError(model_path, f"tensor {tensor.name!r}: external data runs past the end of {name}")
        del tensor.external_data[:]
        for key, value in (("location", SELF_PLACEHOLDER.decode()), ("offset", str(offsets[name] + start)),
                           ("length", str(length))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
    return model.SerializeToString()


def unrelocate(model_bytes: bytes, model_name: str, entries: dict[str, tuple[int, int]], where: str) -> bytes:
    """The inverse of `relocate` for a model stored in a bundle: every tensor at (placeholder,
    absolute offset) points again at the entry holding its bytes, relative to the model's folder.

    `entries`: each stored entry's (offset, size). Used by an update, which restages a bundle's model."""
    try:
        model = onnx.load_from_string(model_bytes)
    except Exception as exc:  # onnx raises DecodeError and others for a bad file
        raise BuildError(where, f"{model_name} is not a readable ONNX model ({exc})") from None
    folder = posixpath.dirname(model_name)
    spans = sorted((offset, offset + size, name) for name, (offset, size) in entries.items())
    for tensor in _external_tensors(model):
        info = _external(tensor)
        start, length = int(info.get("offset", 0)), int(info.get("length", 0))
        holder = next((s for s in spans if s[0] <= start and start + length <= s[1]), None)
        if info.get("location") != SELF_PLACEHOLDER.decode() or holder is None:
            raise BuildError(where, f"{model_name}: tensor {tensor.name!r} does not point into an entry of the bundle")
        del tensor.external_data[:]
        for key, value in (("location", posixpath.relpath(holder[2], folder or ".")), ("offset", str(start - holder[0])),
                           ("length", str(length))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
    return model.SerializeToString()


def _load(model_path: Path) -> onnx.ModelProto:
    try:
        return onnx.load(str(model_path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and others for a bad file
        raise BuildError(model_path, f"not a readable ONNX model ({exc})") from None


def _external(tensor: TensorProto) -> dict[str, str]:
    return {entry.key: entry.value for entry in tensor.external_data}


def _staging_name(folder: str, location: str, model_path: Path) -> str:
    name = posixpath.normpath(posixpath.join(folder, location))
    if name.startswith("../") or posixpath.isabs(location):
        raise BuildError(model_path, f"external data {location!r} lies outside the staging folder")
    return name


def _external_tensors(model: onnx.ModelProto) -> Iterator[TensorProto]:
    """Initializers and constant tensors of the graph and all subgraphs that keep data outside."""
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        tensors = list(graph.initializer)
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    tensors.append(attribute.t)
                tensors.extend(attribute.tensors)
                if attribute.HasField("g"):
                    graphs.append(attribute.g)
                graphs.extend(attribute.graphs)
        # the K-quant tensors the runtime computes have no bytes anywhere (runtime/kquant_expand.py)
        yield from (t for t in tensors if t.data_location == TensorProto.EXTERNAL and not _derived(t))


def _derived(tensor: TensorProto) -> bool:
    return _external(tensor).get("location") == DERIVED_PLACEHOLDER.decode()
