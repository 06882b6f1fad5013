"""The README's first command, tried as a newcomer would: `make run`, the seed cost payload, its trigger, Ctrl-C.

.ci/run runs this on its fresh clone before anything installs the dev tools; to rerun it by hand,
from the repo root: `python3 -m devtools.smoke_run`. It needs only the standard library, so the
system Python runs it before any virtualenv exists. When a step fails it prints what `make run`
printed, stops whatever `make run` started, and exits 1.
"""

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# What the README promises: the cost and forecast services on 8000 and 8002, the agent receiver on 9000.
SERVICE_PORTS = (8000, 8002)
RECEIVER_PORT = 9000
SEED = ROOT / "tests" / "fixtures" / "cost_seed.json"
TRIGGER_LINE = re.compile(r"^TRIGGER default/adservice from cost\b", re.MULTILINE)
TOKEN_LINE = re.compile(r"^COST_ENGINE_TOKEN=(\S+)$", re.MULTILINE)
# A cold `make run` creates the virtualenv and installs the lock first.
STARTUP_TIMEOUT = 300.0
TRIGGER_TIMEOUT = 30.0
# run_local gives each child 25 s to stop; a few of those in a row is already a failure.
STOP_TIMEOUT = 90.0
# Every process `make run` starts inherits this variable, so whatever is left over can be found.
MARKER = "AGGREGATOR_SMOKE_RUN"


class SmokeFailed(Exception):
    """A step of the smoke run failed; the message says which."""


def listening(port):
    """True when something accepts connections on the loopback port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def marked_processes(token):
    """The pids of live processes whose environment carries our marker."""
    found = []
    needle = f"{MARKER}={token}".encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                pass  # gone meanwhile, or not ours to read
    return found


def wait_for(what, ready, timeout, make):
    """Poll ready() until it is true; fail when the timeout passes or `make run` exits first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if make.poll() is not None:
            raise SmokeFailed(f"make run exited with code {make.returncode} before {what}")
        if time.monotonic() > deadline:
            raise SmokeFailed(f"no {what} within {timeout:.0f} s")
        time.sleep(0.2)


def post_seed(token):
    """POST the seed cost payload as the README's curl does; return the status and the body's text."""
    request = urllib.request.Request(
        f"http://localhost:{SERVICE_PORTS[0]}/metrics/cost",
        data=SEED.read_bytes(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


def smoke(make, output, token):
    """Every step after the start; raise SmokeFailed at the first that fails."""
    started = time.monotonic()

    def up():
        return all(listening(port) for port in SERVICE_PORTS) and TOKEN_LINE.search(output.read_text())

    wait_for(f"answer on ports {SERVICE_PORTS} with a COST_ENGINE_TOKEN line", up, STARTUP_TIMEOUT, make)
    print(f"smoke: both services answer, {time.monotonic() - started:.1f} s after `make run` started", flush=True)
    redis = re.search(r"^run_local: starting (\S+): (\S+)", output.read_text(), re.MULTILINE)
    print(f"smoke: its Redis is {redis.group(2) if redis else 'unknown'}", flush=True)

    status, body = post_seed(TOKEN_LINE.search(output.read_text()).group(1))
    if status != 201 or json.loads(body).get("triggered") != ["adservice"]:
        raise SmokeFailed(f"the seed cost payload got {status} {body}, not 201 with adservice triggered")
    wait_for("a trigger line for adservice", lambda: TRIGGER_LINE.search(output.read_text()), TRIGGER_TIMEOUT, make)
    print("smoke: the seed cost payload got 201 and the receiver printed adservice's trigger", flush=True)

    # Ctrl-C in a terminal goes to the whole foreground process group, make and run_local alike.
    os.killpg(make.pid, signal.SIGINT)
    stopping = time.monotonic()
    try:
        make.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise SmokeFailed(f"make run still running {STOP_TIMEOUT:.0f} s after Ctrl-C") from None
    took = time.monotonic() - stopping
    print(f"smoke: make run exited {took:.1f} s after Ctrl-C (code {make.returncode})", flush=True)

    ports = (*SERVICE_PORTS, RECEIVER_PORT)
    deadline = time.monotonic() + 5
    while (busy := [p for p in ports if listening(p)]) or marked_processes(token):
        if time.monotonic() > deadline:
            raise SmokeFailed(f"left after Ctrl-C: listeners on {busy}, processes {marked_processes(token)}")
        time.sleep(0.2)
    print(f"smoke: nothing listens on {ports} and no process of make run is left", flush=True)


def main():
    """Run the smoke test; exit 0 when every step passed."""
    busy = [port for port in (*SERVICE_PORTS, RECEIVER_PORT) if listening(port)]
    if busy:
        print(f"smoke: ports {busy} are in use before make run started; stop whatever holds them", file=sys.stderr)
        return 1
    token = uuid.uuid4().hex
    env = {**os.environ, MARKER: token}
    # The README's defaults: a Redis and a receiver of make run's own, never a shared one set in the environment.
    for name in ("REDIS_URL", "AGENT_WEBHOOK_URL"):
        env.pop(name, None)
    with tempfile.TemporaryDirectory(prefix="smoke-run-") as workdir:
        output = Path(workdir) / "make-run.log"
        with open(output, "wb") as sink:
            make = subprocess.Popen(
                ["make", "run"],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            smoke(make, output, token)
        except SmokeFailed as failure:
            print(f"smoke: FAILED: {failure}\n--- make run's output ---", file=sys.stderr)
            print(output.read_text(errors="replace"), file=sys.stderr, flush=True)
            stop_leftovers(make, token)
            return 1
    print("smoke: passed", flush=True)
    return 0


def stop_leftovers(make, token):
    """After a failure: Ctrl-C for make run, then SIGKILL for whatever of it is still alive."""
    if make.poll() is None:
        os.killpg(make.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            make.wait(timeout=STOP_TIMEOUT)
    for pid in marked_processes(token):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main())
