"""The stand-in agent run as `make run` runs it: a line per trigger, the JSON with --verbose, a line per refusal."""

import json
import subprocess
import sys
from datetime import UTC, datetime

import pytest
import requests
from standardwebhooks import Webhook

from devtools.harness import ROOT, free_port, wait_until

SECRET = "whsec_cmVjZWl2ZXItdGVzdC1zaWduaW5nLWtleQ=="
MESSAGE = {
    "type": "deployments.thresholds_crossed",
    "source": "cost",
    "namespace": "default",
    "triggers": [
        {"deployment": f"app{i}", "reasons": [{"rule": "cpu_waste", "value": 0.8, "threshold": 0.5}]}
        for i in range(100)
    ],
}


@pytest.fixture
def run_receiver(tmp_path):
    """Start `python -m devtools.agent_receiver` with extra arguments; yield (url, output file)."""
    started = []

    def start(*args, secret=None):
        port, log = free_port(), tmp_path / f"receiver-{len(started)}.log"
        env = {"PATH": "/usr/bin:/bin", **({"AGENT_WEBHOOK_SECRET": secret} if secret else {})}
        with open(log, "wb") as output:
            process = subprocess.Popen(
                [sys.executable, "-m", "devtools.agent_receiver", "--port", str(port), *args],
                cwd=ROOT,
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        started.append(process)
        assert wait_until(lambda: "listening" in log.read_text(), timeout=10)
        return f"http://127.0.0.1:{port}/triggers", log

    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=10)


def signed(body, secret):
    """Standard Webhooks headers for a body."""
    msg_id = "msg_0123456789abcdef0123456789abcdef"
    signature = Webhook(secret).sign(msg_id, datetime.now(UTC), body)
    now = str(int(datetime.now(UTC).timestamp()))
    return {"webhook-id": msg_id, "webhook-timestamp": now, "webhook-signature": signature}


def lines_after_start(log):
    """What the receiver printed after its 'listening' line."""
    return log.read_text().splitlines()[1:]


def test_one_line_per_trigger_by_default(run_receiver):
    url, log = run_receiver()
    assert requests.post(url, data=json.dumps(MESSAGE), timeout=5).status_code == 202
    assert wait_until(lambda: len(lines_after_start(log)) >= 100)
    lines = lines_after_start(log)
    assert len(lines) == 100
    assert lines[0] == "TRIGGER default/app0 from cost: cpu_waste 0.8 (> 0.5)"


def test_verbose_prints_the_message_as_json_too(run_receiver):
    url, log = run_receiver("--verbose")
    one = {**MESSAGE, "triggers": MESSAGE["triggers"][:1]}
    assert requests.post(url, data=json.dumps(one), timeout=5).status_code == 202
    assert wait_until(lambda: lines_after_start(log) and lines_after_start(log)[-1] == "}")
    [trigger_line, *json_lines] = lines_after_start(log)
    assert trigger_line.startswith("TRIGGER default/app0")
    assert json.loads("\n".join(json_lines)) == one


def test_a_line_for_each_refused_call(run_receiver):
    url, log = run_receiver(secret=SECRET)
    body = json.dumps(MESSAGE)
    forged = signed(body, "whsec_" + "b3RoZXItc2lnbmluZy1rZXktMDAwMDAw")
    assert requests.post(url, data=body, headers=forged, timeout=5).status_code == 401
    assert requests.post(url, data="{not json", timeout=5).status_code == 400
    assert requests.post(url, data=body, headers=signed(body, SECRET), timeout=5).status_code == 202
    assert wait_until(lambda: len(lines_after_start(log)) >= 102)
    lines = lines_after_start(log)
    assert lines[0].startswith("REJECTED 401 msg_0123456789abcdef0123456789abcdef: signature did not verify")
    assert lines[1] == "REJECTED 400 (no webhook-id): the body is not JSON"
    assert len(lines) == 102 and all(line.startswith("TRIGGER ") for line in lines[2:])
