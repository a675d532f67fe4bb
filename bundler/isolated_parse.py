"""Running one document's parse in a forked child with a time and memory limit.

A malformed file can send a parser library into a near-endless loop or make it allocate without
bound (a zip bomb with forged sizes); C code cannot be interrupted from Python. A forked child
can always be killed, and its address-space limit turns a runaway allocation into a MemoryError
there instead of swapping the builder. Where fork is unavailable the parse runs in-process.
"""
from __future__ import annotations

import os
import pickle
import select
import signal
import time
from dataclasses import dataclass
from typing import Any, Callable

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True)
class ParseLimits:
    time_s: float = 60.0                 # per file, wall clock
    memory_bytes: int = 2 << 30          # address space the parse may add to the builder's


class ParseLimitExceeded(Exception):
    """The parse ran out of time or memory, or its process died; the message says which."""


def run_isolated(function: Callable[..., Any], args: tuple, limits: ParseLimits) -> Any:
    """function(*args) in a child process; its (picklable) return value, or ParseLimitExceeded."""
    if not hasattr(os, "fork"):
        return function(*args)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        _child(function, args, limits, write_end)
    os.close(write_end)
    try:
        data = _read_until(read_end, time.monotonic() + limits.time_s)
    finally:
        os.close(read_end)
    if data is None:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise ParseLimitExceeded(f"parsing took longer than the {limits.time_s:g} s limit")
    _, status = os.waitpid(pid, 0)
    if not data:
        raise ParseLimitExceeded(f"the parser process died ({_status_text(status)})")
    ok, value = pickle.loads(data)
    if not ok:
        raise ParseLimitExceeded(value)
    return value


def _child(function, args, limits: ParseLimits, write_end: int) -> None:
    """Never returns: runs the parse, writes (ok, value) to the pipe, exits without cleanup."""
    code = 0
    try:
        _limit_memory(limits.memory_bytes)
        try:
            message = (True, function(*args))
        except MemoryError:
            message = (False, f"parsing needed more than the {limits.memory_bytes >> 20} MiB memory limit")
        except Exception as exc:
            message = (False, f"cannot be parsed ({type(exc).__name__}: {exc})")
        payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        with os.fdopen(write_end, "wb") as pipe:
            pipe.write(payload)
    except BaseException:
        code = 1
    finally:
        # os._exit: the parent's atexit handlers, buffers and thread pools are not the child's to run
        os._exit(code)


def _limit_memory(extra: int) -> None:
    try:
        import resource

        with open("/proc/self/statm") as statm:
            current = int(statm.read().split()[0]) * _PAGE
    except (ImportError, OSError):
        return
    resource.setrlimit(resource.RLIMIT_AS, (current + extra, current + extra))


def _read_until(fd: int, deadline: float) -> bytes | None:
    """Everything the child writes until it closes the pipe; None if the deadline passes first."""
    chunks = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            return None
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _status_text(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit status {os.WEXITSTATUS(status)}"
