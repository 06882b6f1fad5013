"""A hard deadline for an HTTP call made with requests: a watchdog shuts its sockets when the time is up.

requests' timeouts bound each socket read, so a peer dripping its answer a byte at a time outlasts
them however short they are. Calls made through `deadline_session()` inside a `Watchdog` register
their connections with it, and the watchdog shuts those sockets at its deadline, which wakes the
thread blocked reading them. Each status line read is noted on the way, before any header, so the
caller can tell "answered 2xx, then dripped" from "never answered".
"""

import contextlib
import http.client
import socket
import threading
from types import TracebackType
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

# The connections and status lines of the calling thread's watched call (None outside a Watchdog).
_in_use = threading.local()


class _StatusNotingResponse(http.client.HTTPResponse):
    """Notes each status line read for the calling thread's watchdog, before any header is read."""

    def _read_status(self):
        version, status, reason = super()._read_status()  # type: ignore[misc]
        statuses = getattr(_in_use, "statuses", None)
        if statuses is not None:
            statuses.append(status)
        return version, status, reason


class _WatchedHTTPConnection(HTTPConnection):
    """Registers itself with the calling thread's watchdog each time it sends a request."""

    response_class = _StatusNotingResponse

    def request(self, *args: Any, **kwargs: Any) -> Any:
        """urllib3's request, after telling the calling thread's watchdog which connection it uses."""
        connections = getattr(_in_use, "connections", None)
        if connections is not None:
            connections.append(self)
        return super().request(*args, **kwargs)


class _WatchedHTTPSConnection(_WatchedHTTPConnection, HTTPSConnection):
    pass


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class DeadlineAdapter(HTTPAdapter):
    """requests' adapter whose connections a Watchdog can cut at its deadline."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        """The usual pool manager, building watched connections."""
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


def deadline_session() -> requests.Session:
    """A requests Session whose http(s) connections a Watchdog can cut."""
    session = requests.Session()
    adapter = DeadlineAdapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class Watchdog:
    """Shuts the sockets the calls made inside it use once `seconds` have passed, whatever the peer is doing.

    It watches the calls of the thread that enters it, and only those made through a deadline_session().
    """

    def __init__(self, seconds: float) -> None:
        self.connections: list[HTTPConnection] = []
        self.statuses: list[int] = []  # every status line read inside it, in order
        self.fired = threading.Event()
        self._timer = threading.Timer(seconds, self.cut)
        self._timer.daemon = True

    def __enter__(self) -> "Watchdog":
        _in_use.connections, _in_use.statuses = self.connections, self.statuses
        self._timer.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._timer.cancel()
        _in_use.connections = _in_use.statuses = None

    def cut(self) -> None:
        """Shut the watched sockets now: what the deadline does (a test may call it itself)."""
        self.fired.set()
        for connection in self.connections:
            sock = connection.sock
            if sock is not None:
                # shutdown, not close: it wakes the thread blocked reading this socket.
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
