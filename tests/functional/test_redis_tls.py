"""Redis over TLS with a private CA the test makes, and mutual TLS: stored when verified, 503 when not."""

import pytest

from cost_service import create_app as create_cost_app
from devtools.harness import RedisServer, free_port, make_certificates, needs_tls, service_env
from shared.web.services import COST
from tests.conftest import COST_TOKEN, auth

pytestmark = needs_tls()


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("pki"))


def tls_server(workdir, certificates, clients_need_certificates):
    """A redis-server with a TLS port besides its plain one (which only the test's checks use)."""
    tls_port = free_port()
    server = RedisServer(
        workdir,
        extra=(
            "--tls-port", str(tls_port),
            "--tls-cert-file", certificates["server_cert"],
            "--tls-key-file", certificates["server_key"],
            "--tls-ca-cert-file", certificates["ca"],
            "--tls-auth-clients", "yes" if clients_need_certificates else "no",
        ),
    )  # fmt: skip
    server.tls_port = tls_port
    return server.start()


@pytest.fixture
def server_ca_only(tmp_path, certificates):
    server = tls_server(tmp_path / "redis", certificates, clients_need_certificates=False)
    yield server
    server.stop()


@pytest.fixture
def server_mutual(tmp_path, certificates):
    server = tls_server(tmp_path / "redis", certificates, clients_need_certificates=True)
    yield server
    server.stop()


def cost_client(url, receiver):
    return create_cost_app(service_env(url, receiver.url, REDIS_TIMEOUT_SECONDS="1")).test_client()


def test_private_ca(server_ca_only, certificates, receiver, cost_payload):
    url = f"rediss://127.0.0.1:{server_ca_only.tls_port}/0?ssl_ca_certs={certificates['ca']}"
    client = cost_client(url, receiver)
    assert client.get("/readyz").status_code == 200
    response = client.post(COST.path, json=cost_payload, headers=auth(COST_TOKEN))
    assert response.status_code == 201 and response.json["triggered"] == ["adservice"]
    assert server_ca_only.client().hget("app:default:adservice", "req_cpu") == b"2.0"


def test_a_server_the_ca_did_not_sign_is_refused(server_ca_only, certificates, receiver, cost_payload):
    # The client certificate comes from the same CA but is not the CA: the server's chain cannot be verified.
    url = f"rediss://127.0.0.1:{server_ca_only.tls_port}/0?ssl_ca_certs={certificates['client_cert']}"
    client = cost_client(url, receiver)
    assert client.get("/readyz").status_code == 503
    response = client.post(COST.path, json=cost_payload, headers=auth(COST_TOKEN))
    assert response.status_code == 503 and response.json["error"]["code"] == "REDIS_UNAVAILABLE"
    assert server_ca_only.client().keys("*") == []


def test_mutual_tls(server_mutual, certificates, receiver, cost_payload):
    base = f"rediss://127.0.0.1:{server_mutual.tls_port}/0?ssl_ca_certs={certificates['ca']}"
    mutual = cost_client(
        f"{base}&ssl_certfile={certificates['client_cert']}&ssl_keyfile={certificates['client_key']}", receiver
    )
    assert mutual.get("/readyz").status_code == 200
    assert mutual.post(COST.path, json=cost_payload, headers=auth(COST_TOKEN)).status_code == 201
    # Without a client certificate the server ends the handshake: Redis unavailable, nothing written by us.
    server_mutual.client().flushdb()
    anonymous = cost_client(base, receiver)
    assert anonymous.get("/readyz").status_code == 503
    assert anonymous.post(COST.path, json=cost_payload, headers=auth(COST_TOKEN)).status_code == 503
    assert server_mutual.client().keys("*") == []
