"""Opening a bundle: the runtime's one view of stored files, whatever holds them.

A bundle is either a folder of plain files (a staging folder as the builder writes it, or only
part of one: an index, an exported model) or a single file carrying an appended payload (see
runtime/payload.py). Callers never care which: they ask for entries by name.
"""
from __future__ import annotations

import abc
import ast
import functools
import hashlib
import mmap
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from runtime import layout
from runtime.entry_hashes import EntryHashes, EntryMismatch
from runtime.errors import UserError
from runtime.manifest import Entry, Manifest, ModelInfo, TargetInfo
from runtime.kquant_expand import DERIVED_PLACEHOLDER
from runtime.payload import ALIGNMENT, SELF_PLACEHOLDER, PayloadFormatError, PayloadLayout, padded_location, read_layout
from runtime.payload_coverage import CoverageError, check_uncovered_bytes
from runtime.signature import SignatureError, check_signature_by

MANIFEST_NAME = layout.MANIFEST
_FOLDER_OPTION = "session.model_external_initializers_file_folder_path"
# Absent from 1.19.2 (the newest for Python 3.9 on aarch64), present in 1.32.0: both are tested.
_ORT_HAS_FOLDER_OPTION = tuple(int(part) for part in ort.__version__.split(".")[:2]) >= (1, 20)


def _set_config_entry(options: ort.SessionOptions, key: str, value: str) -> None:
    """Set a session option once: options shared by several sessions would warn on every repeat."""
    try:
        if options.get_session_config_entry(key) == value:
            return
    except RuntimeError:
        pass
    options.add_session_config_entry(key, value)


class BundleError(UserError):
    """The bundle cannot be used; the message names the file and the problem."""


class Bundle(abc.ABC):
    """Base interface; see docs/ARCHITECTURE.md."""

    path: Path
    manifest: Manifest

    @property
    def model(self) -> ModelInfo:
        """The bundled model's description."""
        return self.manifest.model

    @property
    def target_profile(self) -> TargetInfo | None:
        """The profile the build was checked for (None: the runtime's defaults)."""
        return self.manifest.target_profile

    @staticmethod
    def open(path: str | Path) -> "Bundle":
        path = Path(path)
        if path.is_dir():
            return DirectoryBundle(path)
        if path.is_file():
            return FileBundle(path)
        raise BundleError(f"{path}: no such bundle file or folder")

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
    def onnx_session(self, name: str, options: ort.SessionOptions, derived: Path | None = None) -> ort.InferenceSession:
        """See docs/ARCHITECTURE.md; `derived`: the file runtime.kquant_expand.derived_tensors wrote."""

    @abc.abstractmethod
    def verify(self) -> None:
        """See docs/ARCHITECTURE.md."""


class DirectoryBundle(Bundle):
    """A folder read in place: a staging folder, or the part of one a step made (tests, the build).

    Entries are the folder's files. The manifest is read when asked for, so a folder holding only an
    index opens as it is; a folder holding only an exported model describes it in layout.MODEL_INFO.
    """

    def __init__(self, root: Path):
        self.path = root

    @functools.cached_property
    def manifest(self) -> Manifest:
        manifest_path = self.path / MANIFEST_NAME
        try:
            return Manifest.from_json(manifest_path.read_bytes())
        except FileNotFoundError:
            raise BundleError(f"{manifest_path}: missing manifest") from None
        except ValueError as exc:
            raise BundleError(f"{manifest_path}: {exc}") from None

    @functools.cached_property
    def model(self) -> ModelInfo:
        info_path = self.path / layout.MODEL_INFO
        if (self.path / MANIFEST_NAME).is_file() or not info_path.is_file():
            return self.manifest.model
        try:
            return ModelInfo.from_json(info_path.read_bytes())
        except ValueError as exc:
            raise BundleError(f"{info_path}: {exc}") from None

    @property
    def target_profile(self) -> TargetInfo | None:
        return self.manifest.target_profile if (self.path / MANIFEST_NAME).is_file() else None

    def _file(self, name: str) -> Path:
        target = (self.path / name).resolve()
        if self.path.resolve() not in target.parents or not target.is_file():
            raise BundleError(f"{self.path}: no entry {name!r}")
        return target

    def names(self) -> list[str]:
        return sorted(
            p.relative_to(self.path).as_posix()
            for p in self.path.rglob("*")
            if p.is_file() and p.relative_to(self.path).as_posix() not in (MANIFEST_NAME, layout.MODEL_INFO)
        )

    def read(self, name: str) -> bytes:
        return self._file(name).read_bytes()

    def array(self, name: str) -> np.ndarray:
        return np.load(self._file(name), mmap_mode="r", allow_pickle=False)

    def onnx_session(self, name: str, options: ort.SessionOptions, derived: Path | None = None) -> ort.InferenceSession:
        path = self._file(name)
        if derived is None:
            return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        # the derived file lies in the model's folder (the weights' locations are relative to it)
        _set_config_entry(options, _FOLDER_OPTION, str(path.parent))
        try:
            location = padded_location(os.path.relpath(derived, path.parent))
        except PayloadFormatError as exc:
            raise BundleError(str(exc)) from None
        return ort.InferenceSession(path.read_bytes().replace(DERIVED_PLACEHOLDER, location), sess_options=options,
                                    providers=["CPUExecutionProvider"])

    def verify(self) -> None:
        for name in self.names():
            self._file(name)


class FileBundle(Bundle):
    """One file holding an appended payload: the executable itself or a bare payload file.

    The whole file is memory-mapped once; entries are views into that mapping, so nothing is
    copied or unpacked. Opening runs the fast checks (trailer, sizes, manifest hash).
    """

    def __init__(self, path: Path):
        self.path = path
        try:
            with open(path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                self.layout: PayloadLayout = read_layout(handle, size, str(path))
                self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except PayloadFormatError as exc:
            raise BundleError(str(exc)) from None
        except OSError as exc:
            raise BundleError(f"{path}: {exc.strerror}") from None
        try:
            self.manifest = Manifest.from_json(self.layout.manifest_bytes)
        except (ValueError, TypeError) as exc:
            raise BundleError(f"{path}: manifest: {exc}") from None
        self._entries = {entry.name: entry for entry in self.manifest.entries}
        self._check_entries()
        self._hashes: EntryHashes | None = None
        self.pinned_signature = False  # require_signature() has checked the signature

    def require_signature(self, public_key: bytes) -> None:
        """Refuse the bundle unless its manifest is signed by `public_key` and covers the runtime stub;
        from then on every entry must match its sha256 before it is used (docs/SECURITY.md)."""
        signature = self.layout.trailer.signature
        if signature is None:
            raise BundleError(f"{self.path}: not signed, but this executable runs only bundles signed by its pinned key")
        if self.layout.trailer.payload_start and not self.manifest.stub_sha256:
            raise BundleError(f"{self.path}: the signed manifest does not cover the runtime stub (no stub_sha256)")
        try:
            check_signature_by(self.layout.manifest_bytes, signature, public_key, str(self.path),
                               f"the key pinned in this executable ({public_key.hex()[:16]}…)")
        except SignatureError as exc:
            raise BundleError(str(exc)) from None
        self.pinned_signature = True
        self._hashes = EntryHashes(self._map, self.manifest.entries, str(self.path))
        self._hashes.start()

    def _checked(self, name: str | None) -> None:
        """With a required signature: `name` (None: every entry) has matched its sha256."""
        if self._hashes is None:
            return
        try:
            if name is None:
                self._hashes.check_all()
            else:
                self._hashes.check(name)
        except EntryMismatch as exc:
            raise BundleError(str(exc)) from None

    def _check_entries(self) -> None:
        start = self.layout.trailer.payload_start
        end = self.layout.trailer.manifest_offset
        previous_end = start
        for entry in sorted(self.manifest.entries, key=lambda e: e.offset):
            if entry.offset % ALIGNMENT or entry.offset < previous_end or entry.size < 0:
                raise BundleError(f"{self.path}: entry {entry.name!r} is misplaced (file altered)")
            previous_end = entry.offset + entry.size
        if previous_end > end:
            raise BundleError(f"{self.path}: entries run past the manifest (file truncated or altered)")

    def _entry(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise BundleError(f"{self.path}: no entry {name!r}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def read(self, name: str) -> memoryview:
        entry = self._entry(name)
        self._checked(name)
        return memoryview(self._map)[entry.offset:entry.offset + entry.size]

    def array(self, name: str) -> np.ndarray:
        entry = self._entry(name)
        view = self.read(name)
        where = f"{self.path}: {name}"
        dtype, shape, fortran, header_size = _npy_header(bytes(view[:min(len(view), _NPY_HEAD)]), where)
        count = 1
        for length in shape:  # Python integers: a product of huge dimensions cannot wrap around
            count *= length
        if header_size + count * dtype.itemsize != entry.size:
            raise BundleError(f"{where}: array header says {count * dtype.itemsize} bytes of data, "
                              f"the entry holds {entry.size - header_size}")
        flat = np.frombuffer(self._map, dtype=dtype, count=count, offset=entry.offset + header_size)
        return flat.reshape(shape, order="F" if fortran else "C")

    def onnx_session(self, name: str, options: ort.SessionOptions, derived: Path | None = None) -> ort.InferenceSession:
        # The stored model names its weights by SELF_PLACEHOLDER at absolute offsets; pointing
        # that at this very file (whatever it is called now) lets onnxruntime mmap them in place.
        proto = bytes(self.read(name))
        external = SELF_PLACEHOLDER in proto
        try:
            if _ORT_HAS_FOLDER_OPTION:
                # newer onnxruntime refuses absolute locations but resolves them in a given folder: the
                # file's own, or its root when the derived file (in the temporary folder) must be reached too
                own = self.path.resolve()
                folder = Path(own.anchor) if derived is not None else own.parent
                _set_config_entry(options, _FOLDER_OPTION, str(folder))
                location = padded_location(os.path.relpath(own, folder))
                derived_location = padded_location(os.path.relpath(derived.resolve(), folder)) if derived else b""
            else:
                # older ones resolve a location from bytes against the working folder, absolute paths allowed
                location = padded_location(str(self.path.resolve()))
                derived_location = padded_location(str(derived.resolve())) if derived else b""
        except PayloadFormatError as exc:
            raise BundleError(str(exc)) from None
        except ValueError:  # Windows: no relative path between two drives
            raise BundleError(f"{self.path}: the temporary folder {derived.parent} is on another drive "
                              "(set TMP to a folder on the bundle's drive)") from None
        proto = proto.replace(SELF_PLACEHOLDER, location)
        if derived is not None:
            proto = proto.replace(DERIVED_PLACEHOLDER, derived_location)
        session = ort.InferenceSession(proto, sess_options=options, providers=["CPUExecutionProvider"])
        if external:
            # the weights may lie in any entry; they were hashed while the session was made
            self._checked(None)
        return session

    def file_sha256(self) -> str:
        """sha256 of the whole file: what a rebuild from the same inputs reproduces."""
        digest = hashlib.sha256()
        view = memoryview(self._map)
        for start in range(0, len(view), 1 << 22):
            digest.update(view[start:start + (1 << 22)])
        return digest.hexdigest()

    def verify(self) -> None:
        try:
            (self._hashes or EntryHashes(self._map, self.manifest.entries, str(self.path))).check_all()
        except EntryMismatch as exc:
            raise BundleError(str(exc)) from None
        try:
            check_uncovered_bytes(self._map, self.layout, self.manifest, str(self.path))
        except CoverageError as exc:
            raise BundleError(str(exc)) from None


_NPY_HEAD = 4096  # NumPy pads headers to 64 bytes; ours are a few hundred


def _npy_header(head: bytes, where: str) -> tuple[np.dtype, tuple[int, ...], bool, int]:
    """Parse a .npy header without reading the data (np.load cannot mmap at an offset of a file)."""
    if not head.startswith(b"\x93NUMPY") or len(head) < 10 or head[6] not in (1, 2, 3):
        raise BundleError(f"{where}: not a .npy array")
    if head[6] == 1:
        length, start = int.from_bytes(head[8:10], "little"), 10
    else:
        length, start = int.from_bytes(head[8:12], "little"), 12
    if start + length > len(head):
        raise BundleError(f"{where}: .npy header runs past the entry or is longer than {_NPY_HEAD} bytes")
    try:
        header = ast.literal_eval(head[start:start + length].decode("latin1"))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise BundleError(f"{where}: unreadable .npy header") from None
    if not isinstance(header, dict) or set(header) != {"descr", "shape", "fortran_order"}:
        raise BundleError(f"{where}: .npy header is not a dict of descr, shape and fortran_order")
    shape, fortran = header["shape"], header["fortran_order"]
    if not isinstance(shape, tuple) or not all(type(n) is int and n >= 0 for n in shape):
        raise BundleError(f"{where}: .npy shape {shape!r} is not a tuple of non-negative integers")
    if not isinstance(fortran, bool):
        raise BundleError(f"{where}: .npy fortran_order is not true or false")
    try:
        dtype = np.dtype(header["descr"])
    except (ValueError, TypeError, SyntaxError):
        raise BundleError(f"{where}: .npy dtype {header['descr']!r} is not understood") from None
    if dtype.hasobject or dtype.itemsize == 0:
        raise BundleError(f"{where}: .npy dtype {dtype} is not allowed (objects or empty items)")
    return dtype, shape, fortran, start + length


__all__ = ["Bundle", "BundleError", "DirectoryBundle", "FileBundle", "MANIFEST_NAME"]
