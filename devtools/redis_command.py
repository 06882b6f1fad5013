"""The one place that says how we start a throwaway redis-server (or valkey-server, redis-sentinel)."""

import shutil

# Durable: every acknowledged write is in the append-only file before the reply, so a kill loses nothing.
DURABLE = ("--appendonly", "yes", "--appendfsync", "always")
EPHEMERAL = ("--appendonly", "no")


def server_binary(name="redis-server"):
    """The path of a server binary, or a RuntimeError saying how to install it."""
    binary = shutil.which(name)
    if binary is None:
        raise RuntimeError(f"{name} is not installed (apt-get install -y redis-server)")
    return binary


def redis_server_argv(port, workdir, *, durable=False, binary="redis-server", extra=()):
    """The command line of a loopback-only server on `port`, keeping its files in `workdir`."""
    return [
        server_binary(binary),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        # No RDB snapshots: a durable server keeps its data in the append-only file alone.
        "--save",
        "",
        *(DURABLE if durable else EPHEMERAL),
        "--dir",
        str(workdir),
        "--logfile",
        "",
        "--loglevel",
        "warning",
        *extra,
    ]
