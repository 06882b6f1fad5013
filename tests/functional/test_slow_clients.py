"""Issue 9 through real gunicorn: stalled clients cannot starve the service, a chunked body over the
limit is refused whole, and requests gunicorn itself refuses get our JSON error shape."""

import json
import socket
import time

import pytest
import requests

from devtools.harness import GunicornService, read_http_response, service_env
from shared.web.services import COST
from tests.conftest import COST_TOKEN

pytestmark = pytest.mark.gunicorn

READ_TIMEOUT = 2
MAX_BODY = 64 * 1024
AUTH = f"Authorization: Bearer {COST_TOKEN}\r\n"


@pytest.fixture
def service(redis_server, redis_client, receiver, tmp_path):
    env = service_env(
        redis_server.url, receiver.url, CLIENT_READ_TIMEOUT_SECONDS=str(READ_TIMEOUT), MAX_BODY_BYTES=str(MAX_BODY)
    )
    started = GunicornService(COST.app, env, workers=2).start(tmp_path / "cost.log")
    yield started
    started.stop()


def connect(service):
    return socket.create_connection(("127.0.0.1", service.port), timeout=10)


def json_reply(reply):
    head, _, body = reply.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0].decode(), head.decode("latin-1"), json.loads(body)


def test_stalled_clients_starve_neither_probes_nor_ingest(service, cost_payload):
    body = json.dumps(cost_payload).encode()
    half_bodies, half_headers = [], []
    for _ in range(2):
        sock = connect(service)
        sock.sendall(
            f"POST {COST.path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n".encode()
            + f"{AUTH}Content-Length: {len(body)}\r\n\r\n".encode()
            + body[: len(body) // 2]
        )
        half_bodies.append(sock)
        sock = connect(service)
        sock.sendall(f"POST {COST.path} HTTP/1.1\r\nHost: x\r\nContent-Type: appl".encode())
        half_headers.append(sock)
    started = time.monotonic()
    try:
        # With sync workers, these waited for the stalled clients (31 s in the probe).
        assert requests.get(f"{service.url}/healthz", timeout=1).status_code == 200
        headers = {"Authorization": f"Bearer {COST_TOKEN}"}
        response = requests.post(f"{service.url}{COST.path}", json=cost_payload, headers=headers, timeout=1)
        assert response.status_code == 201
        # The stalled clients are cut at the read timeout: a half-sent body gets a 408, half-sent headers a close.
        for sock in half_bodies:
            status, head, error = json_reply(read_http_response(sock))
            assert status.startswith("HTTP/1.1 408 ")
            assert error["error"]["code"] == "REQUEST_TIMEOUT" and "X-Request-ID" in head
        assert time.monotonic() - started < READ_TIMEOUT + 1
        for sock in half_headers:
            assert read_http_response(sock) == b""
        # Half-sent headers are cut too, by the read timeout or by gunicorn's own 5 s waits for a
        # connection's bytes (seen between 2 and 8 s here): bounded either way.
        assert time.monotonic() - started < 10
    finally:
        for sock in half_bodies + half_headers:
            sock.close()


def test_a_chunked_body_over_the_limit_is_413_and_writes_nothing(service, redis_client, cost_payload):
    def send_chunked(body):
        with connect(service) as sock:
            chunks = [body[i : i + 8192] for i in range(0, len(body), 8192)]
            sock.sendall(
                f"POST {COST.path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n".encode()
                + f"{AUTH}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n".encode()
                + b"".join(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" for chunk in chunks)
                + b"0\r\n\r\n"
            )
            return json_reply(read_http_response(sock))

    valid = json.dumps(cost_payload).encode()
    # A valid payload followed by spaces: whitespace JSON allows, so only the size can refuse it.
    status, _, error = send_chunked(valid + b" " * (MAX_BODY + 1 - len(valid)))
    assert status.startswith("HTTP/1.1 413 ")
    assert error["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert redis_client.dbsize() == 0
    # At the limit exactly, it is accepted: the refusal is about size, not about chunking.
    status, _, body = send_chunked(valid + b" " * (MAX_BODY - len(valid)))
    assert status.startswith("HTTP/1.1 201"), body
    assert redis_client.exists("app:default:adservice")


@pytest.mark.parametrize(
    "header",
    [
        # A token with a trailing newline, as a shell's $(cat token) leaves it.
        f"Authorization: Bearer {COST_TOKEN}\n\r\n".encode(),
        # A folded header (obsolete line folding), refused by gunicorn before the app sees it.
        b"X-Request-ID: engine\r\n  42\r\n",
    ],
    ids=["token-with-newline", "folded-request-id"],
)
def test_requests_gunicorn_refuses_get_the_json_error_shape(service, redis_client, cost_payload, header):
    body = json.dumps(cost_payload).encode()
    with connect(service) as sock:
        sock.sendall(
            f"POST {COST.path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n".encode()
            + header
            + f"{AUTH if b'Authorization' not in header else ''}Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        status, head, error = json_reply(read_http_response(sock))
    assert status.startswith("HTTP/1.1 400 ")
    assert "Content-Type: application/json" in head
    assert error["error"]["code"] == "BAD_REQUEST"
    assert error["error"]["request_id"] and f"X-Request-ID: {error['error']['request_id']}" in head
    assert COST_TOKEN not in json.dumps(error)
    assert redis_client.dbsize() == 0
