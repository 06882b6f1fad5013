"""SIGTERM (a pod being stopped) lets in-flight requests finish."""

import signal
import threading

import pytest
import requests

from devtools.harness import GunicornService, service_env
from shared.web.services import COST
from tests.conftest import COST_TOKEN

pytestmark = pytest.mark.gunicorn


def test_sigterm_during_a_request_still_answers_it(redis_server, redis_client, receiver, tmp_path, cost_payload):
    receiver.delay = 1.0  # the agent is slow, so the request is still in flight when SIGTERM arrives
    service = GunicornService(COST.app, service_env(redis_server.url, receiver.url), workers=1).start(
        tmp_path / "cost.log"
    )
    answers = []

    def ingest():
        answers.append(
            requests.post(
                f"{service.url}{COST.path}",
                json=cost_payload,
                headers={"Authorization": f"Bearer {COST_TOKEN}"},
                timeout=30,
            )
        )

    caller = threading.Thread(target=ingest)
    caller.start()
    # The service is delivering the trigger, so the request is in flight: now stop the service.
    assert receiver.arrived.wait(timeout=20)
    service.process.send_signal(signal.SIGTERM)
    assert answers == []
    caller.join(timeout=30)
    assert service.process.wait(timeout=30) == 0
    service.stop()
    [answer] = answers
    assert answer.status_code == 201 and answer.json()["delivery"] == "ok"
    assert redis_client.hget("app:default:adservice", "last_trigger") is not None
