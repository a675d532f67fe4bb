"""Running a program as an air-gapped station would, and recording what it reaches for.

The program runs under `strace -f` inside a network namespace that has only loopback (and a UTS
namespace with a made-up hostname), with HOME, the XDG folders and TMPDIR pointed at empty folders. From the trace come two lists: every
connect/sendto/sendmsg aimed at anything but loopback (DNS included), and every path created,
written, renamed or removed outside the folders the caller allows.

`python -m tests.offline_trace EXECUTABLE [COMMAND...]` prints both for one of a bundle's commands
(the figures of issue 12 were measured with it).
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

NETWORK_CALLS = ("connect", "sendto", "sendmsg", "sendmmsg")
# open* count when they ask for write access; the rest change the file tree whenever they succeed.
OPEN_CALLS = ("open", "openat", "openat2", "creat")
TREE_CALLS = ("mkdir", "mkdirat", "rename", "renameat", "renameat2", "link", "linkat", "symlink", "symlinkat",
              "unlink", "unlinkat", "rmdir", "truncate")
WRITE_FLAGS = ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC")
# Terminals and the null device are not storage; POSIX semaphores (multiprocessing's locks) are
# shared-memory objects that are unlinked as soon as they are open.
DEVICE_PATHS = re.compile(r"^/dev/(null|tty|ptmx|pts/\d+|shm/sem\.[\w.-]+)$")
# Names no real machine or account has, so that a program that records them is caught.
ROOM_HOSTNAME = "offline-room-host"
ROOM_USER = "offline-room-user"
# PyInstaller's one-file bootloader unpacks the stub's Python runtime into $TMPDIR/_MEIxxxxxx.
EXTRACTION_FOLDER = re.compile(r"^_MEI\w+$")

TOOLS_MISSING = next((f"{tool} is not installed" for tool in ("strace", "unshare", "ip", "hostname")
                      if shutil.which(tool) is None), None) or (None if os.geteuid() == 0 else "network namespaces need root here")

_CALL = re.compile(r"^(\w+)\((.*)\)\s+= (-?\d+)(?:<(.*)>)?\s*$")
_DEVICE_NUMBER = re.compile(r"<(?:char|block) [\d:]+>$")
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')
_AT_PATH = re.compile(r'(?:AT_FDCWD|\d+)<([^>]*)>, "((?:[^"\\]|\\.)*)"')
_INET = re.compile(r'inet_addr\("([^"]+)"\)|inet_pton\(AF_INET6, "([^"]+)"')
_PEER = re.compile(r"<(?:TCP|UDP|TCPv6|UDPv6):\[[^\]]*->([^\]]+)\]>")


@dataclass
class Trace:
    returncode: Optional[int]
    stdout: str
    outbound: list[str] = field(default_factory=list)   # syscall lines addressing anything but loopback
    written: list[str] = field(default_factory=list)    # paths changed outside the allowed folders
    left_behind: list[str] = field(default_factory=list)  # what is under HOME, XDG and TMPDIR after the run


def _loopback(address: str) -> bool:
    return address.startswith("127.") or address in ("::1", "0.0.0.0", "::") or address.startswith("::ffff:127.")


def outbound_calls(line: str) -> bool:
    """A network syscall line that addresses (or sends over a socket connected to) a non-loopback host."""
    call = line.split("(", 1)[0]
    if call not in NETWORK_CALLS:
        return False
    addresses = [v4 or v6 for v4, v6 in _INET.findall(line)]
    addresses += [peer.rsplit(":", 1)[0].strip("[]") for peer in _PEER.findall(line)]
    return any(not _loopback(address) for address in addresses)


def changed_paths(line: str, cwd: Path) -> list[str]:
    """Paths a successful syscall line created, wrote, renamed or removed."""
    match = _CALL.match(line)
    if not match or int(match.group(3)) < 0:
        return []
    call, args, result_path = match.group(1), match.group(2), match.group(4)
    if call in OPEN_CALLS:
        flags = args.split(", ")[2 if call in ("openat", "openat2") else 1] if call != "creat" else "O_CREAT"
        if not any(flag in flags for flag in WRITE_FLAGS):
            return []
        return [_DEVICE_NUMBER.sub("", result_path)] if result_path else [str(cwd / _STRING.findall(args)[0])]
    if call not in TREE_CALLS:
        return []
    if call.endswith("at") or call == "renameat2":
        paths = [str(Path(folder) / name) for folder, name in _AT_PATH.findall(args)]
    else:
        paths = [str(cwd / name) for name in _STRING.findall(args)]
    # a link's target is only read; renaming changes both names
    return paths[-1:] if call in ("link", "linkat", "symlink", "symlinkat") else paths


class OfflineRoom:
    """Empty HOME, XDG and temporary folders under `root`, and the command line that runs a
    program inside a network namespace under strace, one trace file per thread."""

    def __init__(self, root: Path):
        self.root = root
        self.home = root / "home"
        self.xdg = {name: root / "xdg" / name.lower().removeprefix("xdg_") for name in
                    ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_RUNTIME_DIR")}
        self.tmp = root / "tmp"
        self.cwd = root / "cwd"
        self.traces = root / "strace"
        for folder in (self.home, self.tmp, self.cwd, self.traces, *self.xdg.values()):
            folder.mkdir(parents=True, exist_ok=True)

    def env(self, **extra: str) -> dict[str, str]:
        return {"PATH": "/usr/bin:/bin", "HOME": str(self.home), "TMPDIR": str(self.tmp), "LANG": "C.UTF-8",
                "USER": ROOM_USER, "LOGNAME": ROOM_USER,
                **{name: str(path) for name, path in self.xdg.items()}, **extra}

    def strace(self, *argv: str) -> list[str]:
        calls = ",".join(NETWORK_CALLS + OPEN_CALLS + TREE_CALLS)
        return ["strace", "-f", "-ff", "-qq", "-yy", "-s", "256", "-e", f"trace={calls}", "-o", str(self.traces / "t"),
                *argv]

    def command(self, *argv: str) -> list[str]:
        """`argv` under strace, in new network and hostname namespaces (only loopback, ROOM_HOSTNAME)."""
        return in_namespace(self.strace(*argv))

    def trace(self, returncode: Optional[int], stdout: str, allowed: tuple[Path, ...] = (),
              sources: tuple[Path, ...] = ()) -> Trace:
        """Read the trace files: outbound calls, and changes outside the extraction folder and `allowed`
        (and outside the `__pycache__` folders of `sources`, the Python program's own bytecode cache)."""
        result = Trace(returncode, stdout)
        written = set()
        for log in sorted(self.traces.iterdir()):
            for line in log.read_text(errors="replace").splitlines():
                if outbound_calls(line):
                    result.outbound.append(line)
                written.update(changed_paths(line, self.cwd))
        result.written = sorted(p for p in written if not self._allowed(Path(p), allowed, sources))
        watched = [self.home, self.tmp, *self.xdg.values()]
        result.left_behind = sorted(str(p) for folder in watched for p in folder.rglob("*"))
        return result

    def _allowed(self, path: Path, allowed: tuple[Path, ...], sources: tuple[Path, ...]) -> bool:
        if DEVICE_PATHS.match(str(path)):
            return True
        if "__pycache__" in path.parts and any(path.is_relative_to(root) for root in sources):
            return True
        if path.is_relative_to(self.tmp) and path != self.tmp:
            return bool(EXTRACTION_FOLDER.match(path.relative_to(self.tmp).parts[0]))
        return any(path == root or path.is_relative_to(root) for root in allowed)


def in_namespace(argv: list[str]) -> list[str]:
    return ["unshare", "-n", "-u", "sh", "-c", f'ip link set lo up && hostname {ROOM_HOSTNAME} && exec "$@"', "sh",
            *argv]


def run_traced(room: OfflineRoom, argv: list[str], allowed: tuple[Path, ...] = (), sources: tuple[Path, ...] = (),
               timeout: float = 600, **extra_env: str) -> Trace:
    done = subprocess.run(room.command(*argv), cwd=room.cwd, env=room.env(**extra_env), capture_output=True,
                          text=True, timeout=timeout)
    trace = room.trace(done.returncode, done.stdout, allowed, sources)
    trace.stdout += done.stderr and f"\n--- stderr ---\n{done.stderr}"
    return trace


def run_chat_traced(room: OfflineRoom, executable: Path, question: str, max_tokens: int = 4) -> Trace:
    """One question and /exit, through a real terminal (pexpect)."""
    import pexpect

    command = room.command(str(executable), "chat", "--max-tokens", str(max_tokens))
    chat = pexpect.spawn(command[0], command[1:], cwd=str(room.cwd), env=room.env(TERM="dumb"), encoding="utf-8",
                         timeout=300, dimensions=(40, 200))
    try:
        chat.expect("> ")
        chat.sendline(question)
        chat.expect(r"sources: \[\d\] \S+")
        chat.expect("> ")
        chat.sendline("/exit")
        chat.expect(pexpect.EOF)
    finally:
        chat.close()
    return room.trace(chat.exitstatus, chat.before or "")


SERVE_DRIVER = r"""
import json, os, re, signal, subprocess, sys, time, urllib.request
idle = float(sys.argv[1])
server = subprocess.Popen(sys.argv[2:], stderr=subprocess.PIPE, text=True)
for line in server.stderr:
    match = re.search(r"serving (http://\S+)/ ", line)
    if match:
        url = match.group(1)
        break
time.sleep(idle)
def post(path, body):
    request = urllib.request.Request(url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(request, timeout=300))
reply = post("/v1/chat/completions", {"model": "x", "max_tokens": 4,
                                      "messages": [{"role": "user", "content": "How is the coolant pump primed?"}]})
found = post("/v1/search", {"query": "solar array", "k": 2})
health = json.load(urllib.request.urlopen(url + "/health", timeout=60))
# strace's child is the executable: stop it, not strace, so the trace is complete.
(child,) = open(f"/proc/{server.pid}/task/{server.pid}/children").read().split()
os.kill(int(child), signal.SIGINT)
server.wait(timeout=120)
print(json.dumps({"choices": len(reply["choices"]), "sources": len(reply.get("sources", [])),
                  "hits": len(found["data"]), "health": health["status"]}))
"""


def run_serve_traced(room: OfflineRoom, executable: Path, idle_s: float = 20.0) -> Trace:
    """`serve` left idle for `idle_s`, then a chat completion, a search and a health check."""
    driver = room.root / "serve_driver.py"
    driver.write_text(SERVE_DRIVER)
    # The driver runs inside the namespace too: the server's loopback is only reachable from there.
    command = in_namespace([sys.executable, str(driver), str(idle_s),
                            *room.strace(str(executable), "serve", "--port", "0", "--max-tokens", "4")])
    done = subprocess.run(command, cwd=room.cwd, env=room.env(), capture_output=True, text=True,
                          timeout=idle_s + 600)
    trace = room.trace(done.returncode, done.stdout)
    trace.stdout += done.stderr and f"\n--- stderr ---\n{done.stderr}"
    return trace


def main(argv: list[str]) -> int:
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(prog="python -m tests.offline_trace", description=__doc__.split("\n\n")[0])
    parser.add_argument("--allow", type=Path, action="append", default=[], help="a folder the program may write")
    parser.add_argument("--sources", type=Path, action="append", default=[],
                        help="a folder of Python sources whose __pycache__ the program may refresh")
    parser.add_argument("program", type=Path, help="a bundle executable, or any program")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="its arguments; `chat QUESTION` and `serve [IDLE_S]` are driven as in the tests")
    args = parser.parse_args(argv)
    executable, command = args.program.absolute(), args.command or ["search", "pump"]
    with tempfile.TemporaryDirectory(prefix="offline-trace-") as tmp:
        room = OfflineRoom(Path(tmp))
        started = time.monotonic()
        if command[0] == "chat":
            trace = run_chat_traced(room, executable, command[1] if len(command) > 1 else "How is the pump primed?")
        elif command[0] == "serve":
            trace = run_serve_traced(room, executable, float(command[1]) if len(command) > 1 else 20.0)
        else:
            trace = run_traced(room, [str(executable), *command], tuple(p.resolve() for p in args.allow),
                               tuple(p.resolve() for p in args.sources))
        seconds = time.monotonic() - started
        shown = [p.replace(tmp, "$ROOM") for p in trace.written]
        print(f"{' '.join(command)}: exit {trace.returncode}, {seconds:.0f} s, {len(trace.outbound)} outbound "
              f"connect/sendto/sendmsg, {len(shown)} path(s) written outside the extraction folder")
        for line in trace.outbound:
            print(f"  net: {line}")
        for path in shown:
            print(f"  wrote: {path}")
        for path in trace.left_behind:
            print(f"  left: {path.replace(tmp, '$ROOM')}")
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main(sys.argv[1:]))
