"""Opening a bundle: the runtime's one view of stored files, whatever holds them.

A bundle is either a staging folder (plain files plus manifest.json, as the builder
writes them) or a single file carrying an appended payload (see runtime/payload.py).
Callers never care which: they ask for entries by name.
"""
from __future__ import annotations

import abc
from pathlib import Path

import numpy as np
import onnxruntime as ort

from runtime.manifest import Manifest

MANIFEST_NAME = "manifest.json"


class BundleError(Exception):
    """The bundle cannot be used; the message names the file and the problem."""


class Bundle(abc.ABC):
    """Base interface; see docs/ARCHITECTURE.md."""

    path: Path
    manifest: Manifest

    @staticmethod
    def open(path: str | Path) -> "Bundle":
        path = Path(path)
        if path.is_dir():
            return DirectoryBundle(path)
        raise BundleError(f"{path}: not a bundle folder")

    @abc.abstractmethod
    def names(self) -> list[str]:
        """See docs/ARCHITECTURE.md."""

    @abc.abstractmethod
    def read(self, name: str) -> bytes | memoryview:
        """See docs/ARCHITECTURE.md."""

    @abc.abstractmethod
    def array(self, name: str) -> np.ndarray:
        """See docs/ARCHITECTURE.md."""

    @abc.abstractmethod
    def onnx_session(self, name: str, options: ort.SessionOptions) -> ort.InferenceSession:
        """See docs/ARCHITECTURE.md."""

    @abc.abstractmethod
    def verify(self) -> None:
        """See docs/ARCHITECTURE.md."""


class DirectoryBundle(Bundle):
    """A staging folder read in place (used by tests and during the build)."""

    def __init__(self, root: Path):
        self.path = root
        manifest_path = root / MANIFEST_NAME
        try:
            self.manifest = Manifest.from_json(manifest_path.read_bytes())
        except FileNotFoundError:
            raise BundleError(f"{manifest_path}: missing manifest") from None
        except ValueError as exc:
            raise BundleError(f"{manifest_path}: {exc}") from None

    def _file(self, name: str) -> Path:
        target = (self.path / name).resolve()
        if self.path.resolve() not in target.parents or not target.is_file():
            raise BundleError(f"{self.path}: no entry {name!r}")
        return target

    def names(self) -> list[str]:
        return sorted(
            p.relative_to(self.path).as_posix()
            for p in self.path.rglob("*")
            if p.is_file() and p.name != MANIFEST_NAME
        )

    def read(self, name: str) -> bytes:
        return self._file(name).read_bytes()

    def array(self, name: str) -> np.ndarray:
        return np.load(self._file(name), mmap_mode="r", allow_pickle=False)

    def onnx_session(self, name: str, options: ort.SessionOptions) -> ort.InferenceSession:
        return ort.InferenceSession(str(self._file(name)), sess_options=options, providers=["CPUExecutionProvider"])

    def verify(self) -> None:
        for name in self.names():
            self._file(name)


__all__ = ["Bundle", "BundleError", "DirectoryBundle", "MANIFEST_NAME"]
