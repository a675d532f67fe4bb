"""The runtime's offline guarantee: no outbound connection, except to this machine.

An audit hook (PEP 578) sees every `socket.connect`, `socket.sendto`, `socket.sendmsg` and name
lookup made from Python, before the system call. Loopback and Unix sockets pass; anything else
raises NetworkRefused, whose message says which address was refused and why. Audit hooks cannot
be removed, so once installed the guard holds for the life of the process.

ONNX Runtime's telemetry (Windows builds send events through ETW) is switched off as well.
"""
from __future__ import annotations

import ipaddress
import os
import socket
import sys
import threading
from dataclasses import dataclass, field

LOG_ENV = "EDGEBUNDLE_NETWORK_LOG"   # append one line per refused or allowed attempt to this file

_SOCKET_EVENTS = {"socket.connect", "socket.sendto", "socket.sendmsg"}
_LOOKUP_EVENTS = {"socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex", "socket.gethostbyaddr"}
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


class NetworkRefused(PermissionError):
    """An outbound connection was attempted; this bundle runs offline."""


@dataclass
class GuardState:
    allowed: int = 0
    refused: list[str] = field(default_factory=list)
    log_path: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


_state: GuardState | None = None


def is_local_address(host) -> bool:
    """Loopback addresses and names, the unspecified address (binding), and Unix socket paths."""
    if isinstance(host, (bytes, bytearray)):
        return True   # AF_UNIX abstract or path address
    if not isinstance(host, str):
        return False
    if host.lower() in _LOOPBACK_NAMES or host == "":
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback or address.is_unspecified


def _describe(event: str, args: tuple) -> tuple[bool, str]:
    """(allowed, "what was attempted") for one audited event."""
    if event in _SOCKET_EVENTS:
        sock, address = args[0], args[1]
        if getattr(sock, "family", None) == getattr(socket, "AF_UNIX", None):
            return True, f"{event} unix:{address!r}"
        host = address[0] if isinstance(address, tuple) and address else address
        return is_local_address(host), f"{event} {address!r}"
    if event == "socket.gethostbyaddr":
        # a reverse lookup asks DNS even for 127.0.0.1 where /etc/hosts does not say; callers such as
        # socket.getfqdn treat the refusal (an OSError) as "no name" and go on
        return False, f"{event} {args[0]!r}"
    host = args[0]
    if isinstance(host, (bytes, bytearray)):
        host = bytes(host).decode("ascii", "replace")
    # binding to all interfaces looks up this machine's own name (socket.getfqdn): /etc/hosts answers
    own_name = isinstance(host, str) and host.lower() == socket.gethostname().lower()
    return host is None or own_name or is_local_address(host), f"{event} {host!r}"


def _hook(event: str, args: tuple) -> None:
    if event not in _SOCKET_EVENTS and event not in _LOOKUP_EVENTS:
        return
    state = _state
    allowed, what = _describe(event, args)
    with state.lock:
        if allowed:
            state.allowed += 1
        else:
            state.refused.append(what)
        if state.log_path:
            with open(state.log_path, "a", encoding="utf-8") as log:
                log.write(f"{'allowed' if allowed else 'refused'} {what}\n")
    if not allowed:
        raise NetworkRefused(f"network access refused: {what} (this bundle runs offline; only loopback is allowed)")


def install_network_guard() -> GuardState:
    """Install the guard once per process (later calls return the same state) and turn telemetry off."""
    global _state
    if _state is None:
        _state = GuardState(log_path=os.environ.get(LOG_ENV) or None)
        sys.addaudithook(_hook)
        _disable_onnxruntime_telemetry()
    return _state


def _disable_onnxruntime_telemetry() -> None:
    import onnxruntime

    disable = getattr(onnxruntime, "disable_telemetry_events", None)
    if disable is not None:
        disable()
