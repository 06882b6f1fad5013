"""The gunicorn worker both services run: threaded, with a read timeout on clients, and JSON errors.

Pods are reached directly through a Kubernetes Service, with no buffering proxy in front, so a
client that stalls half way through its headers or body must not hold a thread for ever: every
blocking read or write on a client socket times out after ``CLIENT_READ_TIMEOUT_SECONDS``. And the
requests gunicorn itself refuses (a malformed header, a folded one) get the same JSON error shape
as the app's own errors instead of gunicorn's HTML page.
"""

import ctypes
import errno
import gc
import json
import os
import socket
from http import HTTPStatus
from typing import Any

from gunicorn import glogging
from gunicorn.http import errors as http_errors
from gunicorn.workers.gthread import ThreadWorker as GunicornThreadWorker

from shared.core.errors import ApiError, error_body, new_request_id

DEFAULT_CLIENT_READ_TIMEOUT = 10.0
# Allocations between young collections (CPython's default is 700); see ThreadWorker.init_process.
GC_YOUNG_THRESHOLD = 50_000

# glibc's mallopt() parameter for the most malloc arenas a process may have (malloc.h).
M_ARENA_MAX = -8
# Arenas for a worker's threads: glibc's default is 8 per core, each keeping its own free memory,
# so a few threads that each parse a large payload leave several arenas' worth of peak behind.
WORKER_MALLOC_ARENAS = 2

# The statuses gunicorn gives the requests it refuses; anything else that parses badly is a 400.
CLIENT_ERROR_STATUSES = (
    (http_errors.LimitRequestLine, 414),
    (http_errors.LimitRequestHeaders, 431),
    (http_errors.UnsupportedTransferCoding, 501),
    (http_errors.ExpectationFailed, 417),
    (http_errors.ForbiddenProxyRequest, 403),
    (http_errors.ParseException, 400),
)
# Parse errors that are not the client's fault: gunicorn answers them (500) as it always does.
NOT_CLIENT_ERRORS = (
    http_errors.InvalidResponseHeader,
    http_errors.InvalidResponseHeaderName,
    http_errors.ConfigurationProblem,
)


class ClientReadTimeout(ConnectionResetError, TimeoutError):
    """A client sent nothing for the read timeout: a timeout, which gunicorn treats as the reset it
    logs quietly (a plain timeout would log a traceback per stalled client)."""


class _TimedSocket(socket.socket):
    """A client socket whose blocking mode always carries the worker's read timeout."""

    __slots__ = ()
    read_timeout = DEFAULT_CLIENT_READ_TIMEOUT

    def setblocking(self, flag: bool) -> None:
        """Blocking means blocking for at most read_timeout; non-blocking stays as it is."""
        if flag:
            self.settimeout(self.read_timeout)
        else:
            super().setblocking(False)

    def recv(self, *args: Any) -> bytes:
        """socket.recv, raising ClientReadTimeout when the client stalls."""
        try:
            return super().recv(*args)
        except TimeoutError:
            raise ClientReadTimeout(errno.ECONNRESET, "client read timeout") from None

    def recv_into(self, *args: Any) -> int:
        """socket.recv_into, raising ClientReadTimeout when the client stalls."""
        try:
            return super().recv_into(*args)
        except TimeoutError:
            raise ClientReadTimeout(errno.ECONNRESET, "client read timeout") from None


def client_error_status(exc: BaseException) -> int | None:
    """The status for a request gunicorn refused as malformed, or None when it is not the client's fault."""
    if isinstance(exc, NOT_CLIENT_ERRORS):
        return None
    for error, status in CLIENT_ERROR_STATUSES:
        if isinstance(exc, error):
            return status
    return None


def error_response(status: int, message: str) -> bytes:
    """A complete HTTP/1.1 response carrying the JSON error shape; the connection closes after it."""
    request_id = new_request_id()
    body = json.dumps(error_body(ApiError(status, message), request_id), separators=(",", ":")).encode()
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"X-Request-ID: {request_id}\r\n\r\n"
    )
    return head.encode("latin-1") + body


class Logger(glogging.Logger):
    """gunicorn's logger without the access log: the app logs one richer line per request itself,
    and gunicorn would work out every access line's fields even with its access logger silenced."""

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        """Log nothing."""


def limit_malloc_arenas(arenas: int) -> bool:
    """Cap glibc's malloc arenas for the threads this process starts from now on; False where it cannot."""
    # An operator's MALLOC_ARENA_MAX, which glibc read at start-up, stays in force.
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (musl has no arenas to cap)
    return bool(mallopt(M_ARENA_MAX, arenas))


class ThreadWorker(GunicornThreadWorker):
    """gunicorn's gthread worker, with client sockets that time out and refusals in our JSON shape."""

    client_read_timeout = DEFAULT_CLIENT_READ_TIMEOUT

    def init_process(self) -> None:
        """Tune the garbage collector for large payloads, then serve."""
        # The app was loaded before the fork (preload_app): frozen, its objects are never traversed
        # again by a full collection (and their pages stay shared with the master). A request of
        # thousands of deployments keeps tens of thousands of containers alive until it answers: at
        # the default threshold every few dozen deployments would run a young collection, which
        # would move them all on to older generations to be traversed again and again. Garbage
        # without cycles is freed at once whatever the threshold; only cycles wait a little longer.
        gc.freeze()
        gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
        limit_malloc_arenas(WORKER_MALLOC_ARENAS)
        super().init_process()

    def enqueue_req(self, conn: Any) -> None:
        """Give the connection's socket the read timeout before a thread reads from it."""
        if type(conn.sock) is socket.socket:
            # gthread switches the socket to blocking in several places; the subclass makes each of
            # those switches carry the timeout, which no setting of gunicorn's offers.
            conn.sock.__class__ = self._socket_class()
        super().enqueue_req(conn)

    def _socket_class(self):
        if getattr(self, "_timed_socket", None) is None:
            self._timed_socket = type(
                "ClientSocket", (_TimedSocket,), {"__slots__": (), "read_timeout": self.client_read_timeout}
            )
        return self._timed_socket

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        """Answer a request gunicorn refused with our JSON error shape; leave other errors to gunicorn."""
        status = client_error_status(exc)
        if status is None:
            return super().handle_error(req, client, addr, exc)
        # The class only: gunicorn's message can quote the offending header, which may be a token.
        reason = type(exc).__name__
        self.log.warning("Invalid request from ip=%s: %s", (addr or ("",))[0], reason)
        try:
            client.sendall(error_response(status, f"Malformed HTTP request ({reason}); nothing was done."))
        except OSError:
            self.log.debug("Failed to send error message.")
