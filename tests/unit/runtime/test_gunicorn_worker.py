"""The gthread worker's parts that work in-process: the refusal of a malformed request, and the client read timeout.

tests/functional/test_slow_clients.py runs the same worker under a real gunicorn.
"""

import ctypes
import json
import os
import socket
import subprocess
import sys
import time

import pytest
from gunicorn.config import Config
from gunicorn.http import errors as http_errors
from gunicorn.workers.base import Worker
from gunicorn.workers.gthread import ThreadWorker as GunicornThreadWorker

from devtools.harness import ROOT, read_http_response
from shared.runtime.gunicorn_worker import (
    WORKER_MALLOC_ARENAS,
    ClientReadTimeout,
    ThreadWorker,
    client_error_status,
    error_response,
)

READ_TIMEOUT = 0.2


class RecordingLog:
    """The worker's logger, keeping each line it is given."""

    def __init__(self):
        self.lines = []

    def warning(self, message, *args):
        """Keep a warning."""
        self.lines.append(message % args)

    def debug(self, message, *args):
        """Keep a debug line."""
        self.lines.append(message % args)


@pytest.fixture
def worker():
    """A ThreadWorker as gunicorn builds it before the fork, with the read timeout post_worker_init hands it."""
    built = ThreadWorker(1, os.getpid(), [], None, 30, Config(), RecordingLog())
    built.client_read_timeout = READ_TIMEOUT
    yield built
    built.tmp.close()


@pytest.fixture
def client_and_peer():
    """A connected socket pair: the worker's client socket, and the client's end."""
    client, peer = socket.socketpair()
    peer.settimeout(5)
    yield client, peer
    client.close()
    peer.close()


def parse_response(raw):
    """(status line, headers, JSON body) of one HTTP/1.1 response."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    assert int(headers["content-length"]) == len(body)
    return status_line, headers, json.loads(body)


def test_the_refusal_is_a_whole_response_in_the_json_error_shape():
    status_line, headers, body = parse_response(error_response(431, "Malformed HTTP request (X); nothing was done."))
    assert status_line == "HTTP/1.1 431 Request Header Fields Too Large"
    assert (headers["connection"], headers["content-type"]) == ("close", "application/json")
    assert body["error"]["code"] == "HEADERS_TOO_LARGE"
    assert body["error"]["message"] == "Malformed HTTP request (X); nothing was done."
    assert body["error"]["request_id"] == headers["x-request-id"]
    assert set(body["error"]) == {"code", "message", "details", "request_id", "timestamp"}


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (http_errors.LimitRequestLine(9000, 4094), 414),
        (http_errors.LimitRequestHeaders("too many"), 431),
        (http_errors.UnsupportedTransferCoding("gzip"), 501),
        (http_errors.ExpectationFailed("200-ok"), 417),
        (http_errors.ForbiddenProxyRequest("10.0.0.9"), 403),
        (http_errors.InvalidHeader("X-Token: secret"), 400),
        (http_errors.ObsoleteFolding("X-Folded"), 400),
        (http_errors.InvalidRequestLine("GET"), 400),
        # The application's own bad header (a subclass of InvalidHeader) and gunicorn's configuration: not the client's.
        (http_errors.InvalidResponseHeader("X-Bad"), None),
        (http_errors.InvalidResponseHeaderName("X Bad"), None),
        (http_errors.ConfigurationProblem("forwarded_allow_ips"), None),
        (ValueError("a bug"), None),
    ],
)
def test_the_status_of_each_refusal(exc, status):
    assert client_error_status(exc) == status


def test_a_malformed_request_gets_the_json_shape_without_the_offending_header(worker, client_and_peer):
    client, peer = client_and_peer
    worker.handle_error(None, client, ("10.0.0.9", 40000), http_errors.InvalidHeader("X-Token: secret-token"))
    status_line, _, body = parse_response(read_http_response(peer))
    assert status_line == "HTTP/1.1 400 Bad Request" and body["error"]["code"] == "BAD_REQUEST"
    assert body["error"]["message"] == "Malformed HTTP request (InvalidHeader); nothing was done."
    assert worker.log.lines == ["Invalid request from ip=10.0.0.9: InvalidHeader"]


def test_a_client_gone_before_the_refusal_is_logged_quietly(worker, client_and_peer):
    client, peer = client_and_peer
    peer.close()
    worker.handle_error(None, client, None, http_errors.LimitRequestLine(9000, 4094))
    assert worker.log.lines == ["Invalid request from ip=: LimitRequestLine", "Failed to send error message."]


def test_errors_not_of_the_client_are_left_to_gunicorn(worker, client_and_peer, monkeypatch):
    handled = []
    monkeypatch.setattr(Worker, "handle_error", lambda self, req, client, addr, exc: handled.append(exc))
    exc = http_errors.InvalidResponseHeader("X-Bad")
    worker.handle_error(None, client_and_peer[0], ("10.0.0.9", 40000), exc)
    assert handled == [exc] and worker.log.lines == []


@pytest.fixture
def enqueued(worker, client_and_peer, monkeypatch):
    """The worker's client socket once the worker has queued its connection for a thread."""

    class Connection:
        sock = client_and_peer[0]

    queued = []
    monkeypatch.setattr(GunicornThreadWorker, "enqueue_req", lambda self, conn: queued.append(conn))
    connection = Connection()
    worker.enqueue_req(connection)
    assert queued == [connection]
    return connection.sock


def test_blocking_on_a_queued_client_socket_means_blocking_for_the_read_timeout(enqueued):
    enqueued.setblocking(True)
    assert enqueued.gettimeout() == READ_TIMEOUT
    enqueued.setblocking(False)
    assert enqueued.gettimeout() == 0.0
    enqueued.setblocking(True)
    assert enqueued.gettimeout() == READ_TIMEOUT


@pytest.mark.parametrize("read", [lambda sock: sock.recv(10), lambda sock: sock.recv_into(bytearray(10))])
def test_a_stalled_client_times_out_as_a_reset(enqueued, client_and_peer, read):
    enqueued.setblocking(True)
    started = time.monotonic()
    with pytest.raises(ClientReadTimeout) as stalled:
        read(enqueued)
    assert READ_TIMEOUT <= time.monotonic() - started < READ_TIMEOUT + 1
    # gunicorn logs a reset quietly; a plain timeout would be a traceback per stalled client.
    assert isinstance(stalled.value, ConnectionResetError) and isinstance(stalled.value, TimeoutError)
    client_and_peer[1].sendall(b"GET / ")
    assert read(enqueued) in (b"GET / ", 6)


def test_a_connection_queued_again_keeps_its_socket(worker, enqueued):
    timed_class = type(enqueued)

    class Connection:
        sock = enqueued

    worker.enqueue_req(Connection())
    assert type(enqueued) is timed_class and timed_class.read_timeout == READ_TIMEOUT


# Eight threads allocate at once (objects over 512 bytes come from malloc, not Python's own
# allocator), then glibc's malloc_stats() prints one "Arena N:" line per arena to stderr.
ARENA_PROBE = """
import ctypes, sys, threading
from shared.runtime.gunicorn_worker import WORKER_MALLOC_ARENAS, limit_malloc_arenas
print(limit_malloc_arenas(WORKER_MALLOC_ARENAS) if sys.argv[1] == "capped" else None)
barrier = threading.Barrier(8)
held = []
def allocate():
    barrier.wait()
    held.append([bytes(2000) for _ in range(200)])
    barrier.wait()
threads = [threading.Thread(target=allocate) for _ in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
ctypes.CDLL(None).malloc_stats()
"""


def arenas_after_eight_threads(mode, **env):
    done = subprocess.run(
        [sys.executable, "-c", ARENA_PROBE, mode],
        cwd=ROOT,
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip(), sum(line.startswith("Arena ") for line in done.stderr.splitlines())


@pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "malloc_stats"), reason="not glibc: no malloc arenas to cap")
def test_a_worker_caps_the_malloc_arenas_its_threads_may_take():
    # Uncapped, glibc gives each thread that allocates at once an arena of its own.
    assert arenas_after_eight_threads("default")[1] > WORKER_MALLOC_ARENAS
    assert arenas_after_eight_threads("capped") == ("True", WORKER_MALLOC_ARENAS)
    # An operator's MALLOC_ARENA_MAX stays in force: glibc read it at start-up, and we leave it.
    assert arenas_after_eight_threads("capped", MALLOC_ARENA_MAX="4") == ("False", 4)
