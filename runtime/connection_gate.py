"""Bounds on the server's open connections, so slow or idle clients cannot pin its threads.

Every connection has one thread. At most `max_connections` are open; when one more arrives, the
connection that has waited longest for its request to arrive is cut to make room (a client still
sending headers, a trickling body, an idle keep-alive), so one that sends its request at once is
served even under a flood of slow clients. Only when every slot is working on a received request
is the newcomer refused. A request must arrive whole (headers and body) within `request_deadline_s`
of the moment the server started waiting for it; a watchdog thread cuts those that do not.

"Cutting" shuts down the reading side of the socket: the blocked read returns end-of-file at once,
and the connection's thread can still write a 408 before it closes.
"""
from __future__ import annotations

import socket
import threading
import time
from typing import Optional


class ConnectionGate:
    def __init__(self, max_connections: int, request_deadline_s: float):
        self.max_connections = max_connections
        self.request_deadline_s = request_deadline_s
        # Open connections -> monotonic time the server began waiting for their request,
        # or None while one is being answered. A cut connection leaves at once.
        self._waiting_since: dict[socket.socket, Optional[float]] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._watchdog = threading.Thread(target=self._watch, name="request-deadline", daemon=True)
        self._watchdog.start()

    @property
    def open(self) -> int:
        return len(self._waiting_since)

    def admit(self, sock: socket.socket) -> bool:
        """Take a slot for a new connection, cutting the longest-waiting one if all are taken.

        False when every slot is answering a request: the caller refuses the connection.
        """
        with self._cond:
            if len(self._waiting_since) >= self.max_connections:
                waiting = [(since, s) for s, since in self._waiting_since.items() if since is not None]
                if not waiting:
                    return False
                self._cut(min(waiting, key=lambda pair: pair[0])[1])
            self._waiting_since[sock] = time.monotonic()
            self._cond.notify()
            return True

    def waiting(self, sock: socket.socket) -> None:
        """The connection waits for its next request (keep-alive): the deadline starts again."""
        with self._cond:
            if sock in self._waiting_since:
                self._waiting_since[sock] = time.monotonic()
                self._cond.notify()

    def received(self, sock: socket.socket) -> bool:
        """The whole request has arrived: the connection is answering and cannot be cut.

        False if it was cut (deadline passed, or room made for a newer connection).
        """
        with self._cond:
            if sock not in self._waiting_since:
                return False
            self._waiting_since[sock] = None
            return True

    def is_open(self, sock: socket.socket) -> bool:
        """Not cut (yet)."""
        with self._cond:
            return sock in self._waiting_since

    def release(self, sock: socket.socket) -> None:
        with self._cond:
            self._waiting_since.pop(sock, None)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._watchdog.join()

    def _cut(self, sock: socket.socket) -> None:
        del self._waiting_since[sock]
        try:
            sock.shutdown(socket.SHUT_RD)
        except OSError:  # the client has closed it already
            pass

    def _watch(self) -> None:
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                due = {s: since + self.request_deadline_s for s, since in self._waiting_since.items()
                       if since is not None}
                for sock, deadline in due.items():
                    if deadline <= now:
                        self._cut(sock)
                later = [deadline - now for deadline in due.values() if deadline > now]
                self._cond.wait(timeout=min(later) if later else None)
