"""Keeping a build's temporary files inside the build's own folder.

Libraries the builder calls put scratch files in the system's temporary folder: Python's
tempfile probes it with a file, torch creates `torchinductor_<user>` there and leaves it behind.
A build must leave no trace outside the paths the user named, so for its duration every such
file goes into a folder the build removes.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

# Read by tempfile in child processes, and by torch when it first needs its compile cache.
SCRATCH_VARIABLES = ("TMPDIR", "TORCHINDUCTOR_CACHE_DIR")


@contextmanager
def scratch_folder(folder: Path) -> Iterator[Path]:
    """Route this process's (and its children's) temporary files into `folder`, which must exist."""
    saved_env = {name: os.environ.get(name) for name in SCRATCH_VARIABLES}
    saved_tempdir = tempfile.tempdir
    os.environ["TMPDIR"] = tempfile.tempdir = str(folder)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder / "torchinductor")
    try:
        yield folder
    finally:
        tempfile.tempdir = saved_tempdir
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
