"""A body over the limit is refused from its Content-Length, before it is read."""

import json
import socket

import pytest

from devtools.harness import GunicornService, service_env
from shared.web.services import COST
from tests.conftest import COST_TOKEN

pytestmark = pytest.mark.gunicorn


def test_huge_declared_body_is_413_without_being_read(redis_server, redis_client, receiver, tmp_path):
    service = GunicornService(COST.app, service_env(redis_server.url, receiver.url), workers=1).start(
        tmp_path / "cost.log"
    )
    try:
        with socket.create_connection(("127.0.0.1", service.port), timeout=5) as sock:
            # Claims 1 GB but sends 10 bytes: if the server tried to read it all, this would time out.
            sock.sendall(
                f"POST {COST.path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n".encode()
                + f"Authorization: Bearer {COST_TOKEN}\r\nContent-Length: 1000000000\r\n\r\n".encode()
                + b'{"a": 1234'
            )
            reply = b""
            while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
    finally:
        service.stop()
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert json.loads(body)["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert redis_client.dbsize() == 0
