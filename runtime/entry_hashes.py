"""Each entry's sha256 checked once per process, before its bytes are used.

Small entries are hashed when first read. The model weights are never read through the bundle:
onnxruntime maps them from the file itself, so a background thread hashes every entry from the
start (largest first) while the program loads, and a model session is handed out only once
the entries it may map have matched.
"""
from __future__ import annotations

import hashlib
import threading

from runtime.manifest import Entry

BLOCK = 1 << 22


class EntryMismatch(Exception):
    """An entry's bytes differ from the sha256 the manifest gives; the message names it."""


class EntryHashes:
    def __init__(self, data, entries: list[Entry], where: str):
        self._data = memoryview(data)
        self._entries = {entry.name: entry for entry in entries}
        self._where = where
        self._lock = threading.Lock()
        self._done: dict[str, threading.Event] = {}
        self._bad: set[str] = set()

    def start(self) -> None:
        """Hash every entry in a background thread (it ends with the process if still running)."""
        names = sorted(self._entries, key=lambda name: -self._entries[name].size)
        threading.Thread(target=self._check_quietly, args=(names,), name="entry-hashes", daemon=True).start()

    def check(self, name: str) -> None:
        """Return once `name` matched its sha256 (hashing it here unless another thread already
        does); raise EntryMismatch if it does not."""
        with self._lock:
            event = self._done.get(name)
            mine = event is None
            if mine:
                event = self._done[name] = threading.Event()
        if mine:
            try:
                if self._sha256(self._entries[name]) != self._entries[name].sha256:
                    self._bad.add(name)
            finally:
                event.set()
        else:
            event.wait()
        if name in self._bad:
            raise EntryMismatch(f"{self._where}: entry {name!r} does not match its sha256 (file altered)")

    def check_all(self) -> None:
        for name in sorted(self._entries, key=lambda name: -self._entries[name].size):
            self.check(name)

    def _check_quietly(self, names: list[str]) -> None:
        for name in names:
            try:
                self.check(name)
            except EntryMismatch:
                pass  # raised again to whoever uses the entry

    def _sha256(self, entry: Entry) -> str:
        digest = hashlib.sha256()
        for start in range(entry.offset, entry.offset + entry.size, BLOCK):
            digest.update(self._data[start:min(start + BLOCK, entry.offset + entry.size)])
        return digest.hexdigest()
