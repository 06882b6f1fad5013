"""How the processes start and stop: the image's command, gunicorn's temporary directories, make run's checks."""

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from devtools.harness import ROOT, GunicornService, free_port, service_env, wait_until
from shared.web.services import COST

pytestmark = pytest.mark.gunicorn
GUNICORN = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", COST.app]
# What a process of ours sees on a bare machine: the virtualenv first, as in the image.
PATH = f"{Path(sys.executable).parent}:/usr/bin:/bin"


def image_command():
    """The Dockerfile's CMD, as the image's shell runs it."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    (command,) = [line.split(None, 1)[1] for line in text.splitlines() if line.startswith("CMD ")][-1:]
    return command


def metrics_dirs(directory):
    """The aggregator-metrics-* directories gunicorn made in `directory`."""
    return sorted(directory.glob("aggregator-metrics-*"))


def worker_pids(master_pid):
    """The pids of a gunicorn master's workers, from /proc."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == master_pid:
            pids.append(int(stat.parent.name))
    return pids


@pytest.fixture
def cost_env(redis_server, redis_client, receiver, tmp_path):
    """Settings for a cost service whose temporary directory is tmp_path/tmp."""
    (tmp_path / "tmp").mkdir()
    return service_env(redis_server.url, receiver.url, TMPDIR=str(tmp_path / "tmp"))


def test_gunicorn_removes_the_metrics_directory_it_made_when_it_exits(cost_env, tmp_path, monkeypatch):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    service = GunicornService(COST.app, cost_env, workers=2).start(tmp_path / "cost.log")
    try:
        [made] = metrics_dirs(tmp_path / "tmp")
        # A worker that exits (a restart, max_requests) runs the exit handlers it inherited: the directory stays.
        # Both workers first: the first one up answers /healthz while the master may not have forked the other.
        assert wait_until(lambda: len(worker_pids(service.process.pid)) == 2)
        old_workers = worker_pids(service.process.pid)
        os.kill(old_workers[0], signal.SIGTERM)
        assert wait_until(lambda: len(set(worker_pids(service.process.pid)) - set(old_workers)) == 1)
        assert made.is_dir() and requests.get(f"{service.url}/metrics", timeout=5).ok
    finally:
        service.stop()
    assert service.process.returncode == 0
    assert metrics_dirs(tmp_path / "tmp") == []


def test_a_metrics_directory_given_to_gunicorn_is_left_in_place(cost_env, tmp_path):
    given = tmp_path / "metrics"
    env = {**cost_env, "PROMETHEUS_MULTIPROC_DIR": str(given)}
    GunicornService(COST.app, env, workers=1).start(tmp_path / "cost.log").stop()
    assert given.is_dir() and metrics_dirs(tmp_path / "tmp") == []


def test_a_start_that_fails_leaves_no_metrics_directory(tmp_path):
    (tmp_path / "tmp").mkdir()
    env = {"PATH": PATH, "TMPDIR": str(tmp_path / "tmp"), "PORT": str(free_port())}
    done = subprocess.run(GUNICORN, cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and "AGENT_WEBHOOK_URL is required" in done.stderr
    assert metrics_dirs(tmp_path / "tmp") == []


@pytest.mark.parametrize("value", ["zero", "0", "65", "-1"])
def test_a_bad_web_concurrency_is_one_line_from_the_image_command(value, tmp_path):
    env = {"PATH": PATH, "APP_MODULE": COST.app, "WEB_CONCURRENCY": value, "TMPDIR": str(tmp_path)}
    done = subprocess.run(["sh", "-c", image_command()], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert done.stderr == f"Error: WEB_CONCURRENCY must be a whole number from 1 to 64, got {value!r}\n"
    assert done.stdout == ""


def test_the_image_command_serves_with_good_settings(cost_env, tmp_path):
    port = free_port()
    env = {**cost_env, "PATH": PATH, "APP_MODULE": COST.app, "PORT": str(port)}
    env["WEB_CONCURRENCY"] = "1"
    with open(tmp_path / "image.log", "wb") as log:
        process = subprocess.Popen(["sh", "-c", image_command()], cwd=ROOT, env=env, stdout=log, stderr=log)
        try:
            assert wait_until(lambda: requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok, timeout=20)
            # The shell exec'd gunicorn: the process we started is gunicorn's master itself.
            assert "gunicorn" in Path(f"/proc/{process.pid}/cmdline").read_text()
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0


def test_make_run_stops_at_a_bad_web_concurrency_before_starting_anything(tmp_path):
    env = {"PATH": PATH, "WEB_CONCURRENCY": "zero", "TMPDIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "devtools.run_local"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 1
    assert done.stderr == "Error: WEB_CONCURRENCY must be a whole number from 1 to 64, got 'zero'\n"
    assert "starting" not in done.stdout


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare for a read-only mount"
)
def test_no_writable_temporary_directory_is_one_line_naming_what_to_mount(tmp_path):
    # In a mount namespace of its own, every place Python looks for a temporary directory is read-only,
    # as on a read-only root filesystem with no volume mounted at /tmp.
    read_only = ["/tmp", "/var/tmp", str(ROOT)]
    mounts = " && ".join(
        f"mount --bind {d} {d} && mount -o remount,bind,ro {d} {d}" for d in map(shlex.quote, read_only)
    )
    script = f"{mounts} && exec {shlex.join(GUNICORN)}"
    env = {"PATH": PATH, "PYTHONDONTWRITEBYTECODE": "1", "PORT": str(free_port())}
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    if "mount:" in done.stderr:
        pytest.skip(f"cannot mount read-only here: {done.stderr.strip()}")
    assert done.returncode == 1
    assert done.stderr.startswith("Error: no writable temporary directory: mount a writable volume at /tmp")
    assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr
