"""Real processes for the tests and the benchmarks: throwaway Redis (server, cluster, Sentinel), gunicorn services."""

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
import requests

from devtools.redis_command import redis_server_argv, sentinel_argv, server_binary, supports_tls, tls_options
from shared.web.services import COST, FORECAST, SERVICES, ServiceSpec

ROOT = Path(__file__).resolve().parent.parent
# The callers' bearer tokens every test service accepts (and the agent's, where a test serves its paths).
COST_TOKEN = "cost-token-0123456789abcdef"
FORECAST_TOKEN = "forecast-token-0123456789abcdef"
AGENT_TOKEN = "agent-token-0123456789abcdef"
CALLER_TOKENS = {COST.name: COST_TOKEN, FORECAST.name: FORECAST_TOKEN}
# Redis Cluster's hash slots, shared out among the primaries.
CLUSTER_SLOTS = 16384


def free_port():
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def needs_tls():
    """Skip the test when the redis-server in use (the bundled valkey-server, say) was built without TLS."""
    return pytest.mark.skipif(not supports_tls(), reason=f"{server_binary()} was built without TLS")


def needs_prometheus(binary):
    """Skip the test when `binary` (promtool or prometheus) is not on PATH; installing it takes root."""
    reason = f"{binary} is not installed (Debian's prometheus package: `make promtool` as root, as .ci/run does)"
    return pytest.mark.skipif(shutil.which(binary) is None, reason=reason)


def wait_until(check, timeout=10.0, interval=0.05):
    """Call check() until it returns truthy or the timeout passes; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except Exception:
            value = None
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def read_http_response(sock):
    """One HTTP response read off a socket up to its Content-Length, or what came before the peer closed."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
        head, found, body = data.partition(b"\r\n\r\n")
        lengths = [line for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")]
        if found and lengths and len(body) >= int(lengths[0].split(b":")[1]):
            break
    return data


def service_env(redis_url, webhook_url, **overrides):
    """Test service settings: its Redis, the agent's webhook, both callers' tokens, then `overrides` (None: unset)."""
    env = {
        "REDIS_URL": redis_url,
        "AGENT_WEBHOOK_URL": webhook_url,
        COST.token_setting: COST_TOKEN,
        FORECAST.token_setting: FORECAST_TOKEN,
        **overrides,
    }
    return {name: value for name, value in env.items() if value is not None}


def caller_headers(spec: ServiceSpec):
    """The Authorization header of the service's caller (the cost engine, the forecaster)."""
    return {"Authorization": f"Bearer {CALLER_TOKENS[spec.name]}"}


class RedisServer:
    """A redis-server on a free loopback port; `durable` makes it keep every write in its append-only file."""

    def __init__(self, workdir, durable=False, extra=(), binary="redis-server", password=None):
        self.port = free_port()
        self.workdir = Path(workdir)
        self.durable = durable
        self.password = password
        self.extra = tuple(extra) + (("--requirepass", password, "--masterauth", password) if password else ())
        self.binary = binary
        self.process = None

    @property
    def url(self):
        """The URL services and tests connect with."""
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, **kwargs):
        """A client of this server (as the default user)."""
        return redis.Redis(port=self.port, **{"socket_timeout": 1, "password": self.password, **kwargs})

    def start(self):
        """Start the server and wait until it answers."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = redis_server_argv(self.port, self.workdir, durable=self.durable, binary=self.binary, extra=self.extra)
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait_until(self.client().ping):
            raise RuntimeError(f"{self.binary} did not answer on port {self.port}")
        return self

    def stop(self):
        """Stop the server (its data is gone with it unless it is durable)."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def kill(self):
        """Kill the server outright, as a crash or an evicted pod would."""
        self.process.kill()
        self.process.wait(timeout=10)


class GunicornService:
    """One service run exactly as production runs it: gunicorn with the project's config."""

    def __init__(self, app_uri, env, workers=2):
        self.port = free_port()
        self.app_uri = app_uri
        self.env = {**os.environ, **env, "PORT": str(self.port), "WEB_CONCURRENCY": str(workers), "HOST": "127.0.0.1"}
        self.process = None
        self.output = None

    @property
    def url(self):
        """The service's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, log_path):
        """Start gunicorn and wait until /healthz answers."""
        self.output = open(log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", self.app_uri],
            cwd=ROOT,
            env=self.env,
            stdout=self.output,
            stderr=subprocess.STDOUT,
        )
        if not wait_until(lambda: requests.get(f"{self.url}/healthz", timeout=1).ok, timeout=20):
            self.stop()
            raise RuntimeError(f"{self.app_uri} did not start; see {log_path}")
        return self

    def stop(self):
        """Stop gunicorn gracefully."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        if self.output:
            self.output.close()


def close_cluster_client(client):
    """Close a RedisCluster client for good: made with from_url, its nodes' clients do not own their
    connection pools, so close() alone leaves their sockets open until garbage collection."""
    for node in client.get_nodes():
        if node.redis_connection is not None:
            node.redis_connection.connection_pool.disconnect()
    client.close()


@contextlib.contextmanager
def both_services(env, log_dir, workers=2):
    """Both services under gunicorn with one set of settings, as {"cost": ..., "forecast": ...}; stopped after."""
    cost = GunicornService(COST.app, env, workers=workers).start(log_dir / "cost.log")
    try:
        forecast = GunicornService(FORECAST.app, env, workers=workers).start(log_dir / "forecast.log")
    except BaseException:
        cost.stop()
        raise
    try:
        yield {"cost": cost, "forecast": forecast}
    finally:
        cost.stop()
        forecast.stop()


# A Load's payload numbered `seq` is stamped LOAD_EPOCH + seq: the newest one stored is known by its timestamp.
LOAD_EPOCH = 1_700_000_000


def numbered_payload(kind, seq, names):
    """A payload of service `kind` for the deployments `names`, whose numbers all derive from `seq`."""
    stamp = datetime.fromtimestamp(LOAD_EPOCH + seq, UTC).isoformat().replace("+00:00", "Z")
    if kind == COST.name:
        rows = [
            {
                "name": n,
                "current_requests": {"cpu_cores": 2.0, "memory_mb": seq},
                "current_usage": {"cpu_cores": (seq % 20) / 10, "memory_mb": seq % 1000},
            }
            for n in names
        ]
        extra = {"cluster_totals": {"vm_count": 1 + seq % 7, "current_hourly_cost_gbp": seq / 100}}
        return {"source": "cost-engine", "timestamp": stamp, "namespace": "default", "deployments": rows, **extra}
    rows = [{"name": n, "predict_peak_24h": {"cpu_cores": (seq % 30) / 10, "memory_mb": seq}} for n in names]
    return {"source": "forecast", "timestamp": stamp, "namespace": "default", "deployments": rows}


@dataclass(frozen=True)
class Answer:
    """One request of a Load: what it sent, when, and what came back (`status` None: no answer, see `failure`)."""

    kind: str
    seq: int
    names: tuple[str, ...]
    sent_at: float
    answered_at: float
    status: int | None
    error_code: str | None = None  # the JSON error body's code
    retry_after: str | None = None
    failure: str | None = None  # the exception, when the request got no answer


class Load:
    """Numbered payloads posted from `threads` threads to running services until stopped; every answer recorded.

    `choose(rng, seq)` picks each request's service name ("cost", "forecast") and deployment names;
    `services` maps those names to running services (GunicornService). The threads never assert (an
    assertion would only end its thread): tests assert on `answers()` once `stop()` has joined them.
    With `readiness_of`, one more thread polls that service's /readyz and records (time, status).
    """

    def __init__(self, services, choose, threads=6, readiness_of=None):
        self.services = services
        self.choose = choose
        self.readiness_of = readiness_of
        self._seqs = iter(range(1, sys.maxsize))
        self._lock = threading.Lock()
        self._answers = []
        self._readiness = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._send_loop, args=(seed,)) for seed in range(threads)]
        if readiness_of is not None:
            self._threads.append(threading.Thread(target=self._ready_loop))

    def start(self):
        """Start the threads; return self."""
        for thread in self._threads:
            thread.start()
        return self

    def stop(self):
        """Stop the threads and wait for their requests in flight (each has a 10 s timeout)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def running(self):
        """Whether a thread is still running after stop()."""
        return any(thread.is_alive() for thread in self._threads)

    def send(self, kind, seq, names):
        """Post payload `seq` for `names` to the service `kind` and return the response (for a caller's resend too)."""
        spec = next(spec for spec in SERVICES if spec.name == kind)
        return requests.post(
            self.services[kind].url + spec.path,
            json=numbered_payload(kind, seq, names),
            headers=caller_headers(spec),
            timeout=10,
        )

    def answers(self):
        """Every request so far, in the order their answers came."""
        with self._lock:
            return list(self._answers)

    def readiness(self):
        """Every /readyz poll so far: (monotonic time, status or None when it got no answer)."""
        with self._lock:
            return list(self._readiness)

    def count(self, status, after=0.0, kind=None):
        """How many answers with `status` came after the monotonic time `after` (from service `kind`)."""
        return sum(
            1
            for answer in self.answers()
            if answer.status == status and answer.answered_at > after and kind in (None, answer.kind)
        )

    def first(self, status, after):
        """When the first answer with `status` after the monotonic time `after` came; None if none did."""
        return min(
            (a.answered_at for a in self.answers() if a.status == status and a.answered_at > after), default=None
        )

    def _send_loop(self, seed):
        rng = random.Random(seed)
        while not self._stop.is_set():
            with self._lock:
                seq = next(self._seqs)  # taken under the lock, so sequence numbers increase with send order
            kind, names = self.choose(rng, seq)
            sent_at = time.monotonic()
            try:
                response = self.send(kind, seq, names)
            except requests.RequestException as exc:
                self._record(Answer(kind, seq, tuple(names), sent_at, time.monotonic(), None, failure=repr(exc)))
                continue
            code = None
            if response.status_code >= 400:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    code = response.json()["error"]["code"]
            retry_after = response.headers.get("Retry-After")
            self._record(
                Answer(kind, seq, tuple(names), sent_at, time.monotonic(), response.status_code, code, retry_after)
            )
            if response.status_code == 503:
                # As a caller backs off before it retries; the jitter keeps the threads out of step.
                self._stop.wait(0.02 + rng.random() * 0.03)

    def _ready_loop(self):
        url = f"{self.services[self.readiness_of].url}/readyz"
        while not self._stop.is_set():
            try:
                status = requests.get(url, timeout=10).status_code
            except requests.RequestException:
                status = None
            with self._lock:
                self._readiness.append((time.monotonic(), status))
            self._stop.wait(0.05)

    def _record(self, answer):
        with self._lock:
            self._answers.append(answer)


def free_cluster_port():
    """A port free for a cluster node, whose bus port (port + 10000) is free as well."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


class RedisClusterServers:
    """Redis Cluster nodes on loopback, joined by `join()`: `size` primaries with `replicas` each.

    `node_timeout_ms` is cluster-node-timeout: how long a silent primary takes to be failed over.
    """

    def __init__(self, workdir, size=3, replicas=0, node_timeout_ms=None):
        self.workdir = Path(workdir)
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.ports = [free_cluster_port() for _ in range(size * (1 + replicas))]
        self.processes = {}

    @property
    def url(self):
        """A seed URL; the cluster client discovers the other nodes from it."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def node(self, port):
        """A plain client of one node."""
        return redis.Redis(port=port, socket_timeout=1)

    def start(self):
        """Start the nodes, create the cluster and wait until every slot is served (and replicas synced)."""
        extra = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        if self.node_timeout_ms:
            extra += ["--cluster-node-timeout", str(self.node_timeout_ms)]
        for port in self.ports:
            node_dir = self.workdir / str(port)
            node_dir.mkdir(parents=True, exist_ok=True)
            argv = redis_server_argv(port, node_dir, extra=extra)
            self.processes[port] = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for port in self.ports:
            if not wait_until(self.node(port).ping):
                raise RuntimeError(f"cluster node on port {port} did not answer")
        self.join()
        if not self.wait_ok(self.ports, timeout=30):
            raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")
        for port in self.replica_ports():
            synced = wait_until(lambda port=port: self.node(port).info("replication")["master_link_status"] == "up")
            if not synced:
                raise RuntimeError(f"replica on port {port} did not sync")
        return self

    def join(self):
        """Make the nodes one cluster as `redis-cli --cluster create` would, with plain CLUSTER commands.

        No redis-cli needed (the bundled valkey-server comes without a CLI): the first `size` ports
        become primaries with an equal share of the slots, the others their replicas in turn.
        """
        size = len(self.ports) // (1 + self.replicas)
        primaries, replicas = self.ports[:size], self.ports[size:]
        share = CLUSTER_SLOTS / size
        for index, port in enumerate(primaries):
            first, last = round(index * share), round((index + 1) * share) - 1
            self.node(port).execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
        for epoch, port in enumerate(self.ports, start=1):
            # Distinct epochs from the start, as redis-cli sets them: no tie for the nodes to settle first.
            self.node(port).execute_command("CLUSTER", "SET-CONFIG-EPOCH", epoch)
        for port in self.ports[1:]:
            self.node(self.ports[0]).execute_command("CLUSTER", "MEET", "127.0.0.1", port)
        for index, port in enumerate(replicas):
            replicate = ("CLUSTER", "REPLICATE", self.node(primaries[index % size]).execute_command("CLUSTER", "MYID"))
            # Refused ("Unknown node") until the gossip has told the replica about its primary.
            if not wait_until(lambda port=port, replicate=replicate: self.node(port).execute_command(*replicate), 30):
                raise RuntimeError(f"node {port} could not become a replica")

    def wait_ok(self, ports, timeout):
        """Wait until every node of `ports` says cluster_state:ok; return whether they did."""
        return wait_until(lambda: all(self.node(p).cluster("info")["cluster_state"] == "ok" for p in ports), timeout)

    def wait_failover(self, killed, timeout):
        """Wait until another node serves the slots of the killed primary and the cluster is ok again."""

        def done():
            survivors = self.live_ports()
            served_by = {entry[2][1] for entry in self.node(survivors[0]).cluster("slots")}
            return killed not in served_by and all(
                self.node(p).cluster("info")["cluster_state"] == "ok" for p in survivors
            )

        return wait_until(done, timeout)

    def primary_ports(self):
        """The ports of the live nodes that are primaries now."""
        return [p for p in self.live_ports() if self.node(p).info("replication")["role"] == "master"]

    def replica_ports(self):
        """The ports of the live nodes that are replicas now."""
        return [p for p in self.live_ports() if self.node(p).info("replication")["role"] == "slave"]

    def live_ports(self):
        """The ports of the nodes still running."""
        return [port for port, process in self.processes.items() if process.poll() is None]

    def kill(self, port):
        """Kill one node outright (SIGKILL), as a crash would."""
        self.processes[port].kill()
        self.processes[port].wait(timeout=10)

    def stop(self):
        """Stop every node."""
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            process.wait(timeout=10)


class RedisSentinelSet:
    """A primary, a replica and three Sentinels (quorum 2) watching them, all real processes on loopback."""

    def __init__(self, workdir, master_name="aggregator", sentinels=3, password=None, sentinel_password=None, tls=None):
        self.workdir = Path(workdir)
        self.master_name = master_name
        self.password, self.sentinel_password = password, sentinel_password
        # With `tls` (make_certificates' files), servers and Sentinels also listen with TLS, talk to
        # each other over it, and name the TLS ports: a client reaches them only over TLS. The plain
        # ports stay open for the test's own checks.
        self.tls = tls
        # A replica's first full sync waits 5 s by default, for more replicas to share it: none will.
        self.server_options = ("--repl-diskless-sync-delay", "0")
        self.primary = self._server("primary")
        self.replica = None
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.sentinel_tls_ports = [free_port() for _ in range(sentinels)] if tls else []
        self.sentinel_processes = []

    def _server(self, name, extra=()):
        server = RedisServer(self.workdir / name, password=self.password)
        server.data_port = free_port() if self.tls else server.port
        tls = tls_options(server.data_port, self.tls) if self.tls else ()
        server.extra = (*server.extra, *self.server_options, *(arg for n, v in tls for arg in (f"--{n}", v)), *extra)
        return server

    @property
    def sentinels_setting(self):
        """The REDIS_SENTINELS value naming these Sentinels."""
        return ",".join(f"127.0.0.1:{port}" for port in (self.sentinel_tls_ports or self.sentinel_ports))

    def sentinel(self, index=0):
        """A client of one Sentinel."""
        return redis.Redis(port=self.sentinel_ports[index], socket_timeout=2, password=self.sentinel_password)

    def primary_port(self):
        """The port of the primary the first Sentinel names now."""
        return int(self.sentinel().sentinel_get_master_addr_by_name(self.master_name)[1])

    def start(self):
        """Start the servers and Sentinels; wait until every Sentinel knows the replica and the other two."""
        try:
            return self._start()
        except BaseException:
            # Nothing the set started may outlive a failed start (the next test would meet it).
            self.stop()
            raise

    def _diagnosis(self, seen):
        """Per Sentinel: (replicas, other Sentinels) it last reported, or its exit code, and its log's tail."""
        parts = []
        for index, (port, process) in enumerate(zip(self.sentinel_ports, self.sentinel_processes)):
            log = self.workdir / f"sentinel-{port}" / "sentinel.log"
            tail = log.read_text(errors="replace").splitlines()[-3:] if log.exists() else []
            status = f"exited {process.returncode}" if process.poll() is not None else f"saw {seen.get(index)}"
            parts.append(f"sentinel {port} {status}, log: {' | '.join(tail)}")
        return "; ".join(parts)

    def _start(self):
        self.primary.start()
        self.replica = self._server("replica", ("--replicaof", "127.0.0.1", str(self.primary.data_port))).start()
        if not wait_until(lambda: self.replica.client().info("replication")["master_link_status"] == "up"):
            raise RuntimeError("the replica did not sync with the primary")
        announced = self.sentinel_tls_ports or self.sentinel_ports
        ids = {port: f"{index + 1:040x}" for index, port in enumerate(announced)}
        for index, port in enumerate(self.sentinel_ports):
            workdir = self.workdir / f"sentinel-{port}"
            workdir.mkdir(parents=True, exist_ok=True)
            own = announced[index]
            peers = [("myid", None, ids[own]), ("known-replica", self.replica.data_port, None)]
            peers += [("known-sentinel", other, ids[other]) for other in announced if other != own]
            argv = sentinel_argv(
                port,
                workdir,
                master_name=self.master_name,
                master_port=self.primary.data_port,
                peers=peers,
                auth_pass=self.password,
                requirepass=self.sentinel_password,
                tls={**self.tls, "tls_port": own} if self.tls else None,
            )
            # Each Sentinel's log stays in its workdir, for the error below to quote.
            with open(workdir / "sentinel.log", "wb") as log:
                self.sentinel_processes.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))
        others = len(self.sentinel_ports) - 1
        seen = {}

        def settled():
            for index in range(len(self.sentinel_ports)):
                state = self.sentinel(index).sentinel_master(self.master_name)
                seen[index] = (state["num-slaves"], state["num-other-sentinels"])
                if state["num-slaves"] < 1 or state["num-other-sentinels"] < others:
                    return False
            return True

        if not wait_until(settled, timeout=30, interval=0.2):
            raise RuntimeError(f"the Sentinels did not discover the replica and each other: {self._diagnosis(seen)}")
        return self

    def server_on(self, port):
        """The RedisServer whose data port (the port Sentinels name) is `port`."""
        return self.primary if self.primary.data_port == port else self.replica

    def stop(self):
        """Stop the Sentinels and both servers."""
        for process in self.sentinel_processes:
            if process.poll() is None:
                process.terminate()
        for process in self.sentinel_processes:
            process.wait(timeout=10)
        for server in (self.primary, self.replica):
            if server is not None:
                server.stop()


def make_certificates(directory):
    """A private CA made here with the openssl CLI, and a server and a client certificate it signed.

    The server certificate names 127.0.0.1 and localhost. Returns a dict of file paths: ca, server_cert,
    server_key, client_cert, client_key.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {name: directory / f"{name}.pem" for name in ("ca", "ca_key", "server_cert", "server_key")}
    paths.update({name: directory / f"{name}.pem" for name in ("client_cert", "client_key")})

    def openssl(*args):
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)

    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test private CA",
        "-keyout", paths["ca_key"], "-out", paths["ca"],
    )  # fmt: skip
    for role, extensions in (
        ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        request, ext = directory / f"{role}.csr", directory / f"{role}.ext"
        ext.write_text(extensions + "\n")
        openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={role}",
            "-keyout", paths[f"{role}_key"], "-out", request,
        )  # fmt: skip
        openssl(
            "x509", "-req", "-in", request, "-CA", paths["ca"], "-CAkey", paths["ca_key"], "-CAcreateserial",
            "-days", "2", "-extfile", ext, "-out", paths[f"{role}_cert"],
        )  # fmt: skip
    return {name: str(path) for name, path in paths.items() if name != "ca_key"}


class PrometheusServer:
    """A real Prometheus on a free loopback port, scraping and evaluating every `interval`."""

    def __init__(self, workdir, targets, rule_files=(), interval="1s", binary="prometheus"):
        self.port = free_port()
        self.workdir = Path(workdir)
        self.targets = list(targets)
        self.rule_files = [str(path) for path in rule_files]
        self.interval = interval
        self.binary = binary
        self.process = None
        self.output = None

    @property
    def url(self):
        """The HTTP API's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        """Write the configuration, start Prometheus and wait until it is ready."""
        import yaml

        self.workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": self.interval, "evaluation_interval": self.interval},
            "rule_files": self.rule_files,
            "scrape_configs": [{"job_name": "aggregator", "static_configs": [{"targets": self.targets}]}],
        }
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.output = open(self.workdir / "prometheus.log", "wb")
        self.process = subprocess.Popen(
            [
                self.binary,
                f"--config.file={self.workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.output,
            stderr=subprocess.STDOUT,
        )
        if not wait_until(lambda: requests.get(f"{self.url}/-/ready", timeout=1).ok, timeout=30):
            self.stop()
            raise RuntimeError(f"prometheus did not start; see {self.workdir / 'prometheus.log'}")
        return self

    def query(self, expr):
        """The result vector of an instant query; raises if Prometheus refuses the query."""
        response = requests.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=5)
        body = response.json()
        if body.get("status") != "success":
            raise RuntimeError(f"query {expr!r} failed: {body.get('error')}")
        return body["data"]["result"]

    def alerts(self):
        """The alerts Prometheus holds now (pending or firing)."""
        return requests.get(f"{self.url}/api/v1/alerts", timeout=5).json()["data"]["alerts"]

    def stop(self):
        """Stop Prometheus."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.output:
            self.output.close()


class LoopbackServer:
    """A TCP server on a free loopback port that serves each connection in a thread of its own;
    subclasses say how in `_serve(conn)`."""

    def __init__(self):
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self._threads = []

    @property
    def port(self):
        """The port it listens on."""
        return self._listener.getsockname()[1]

    def start(self):
        """Accept connections in a background thread; return self."""
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def stop(self):
        """Stop accepting, and wait a little for the connections being served."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._listener.close()

    def _accept(self):
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, conn):
        raise NotImplementedError


class SocketAgent(LoopbackServer):
    """A socket-level stand-in for a misbehaving agent webhook.

    It reads each request whole (headers and Content-Length body, kept in `requests`), then answers
    as `mode` says: "drip" (a 200 status line and headers, then the body one byte every `interval`
    seconds), "drip_headers" (a 200 status line, then a header one byte at a time), "drip_status"
    (the status line itself one byte at a time), "hang" (never answers), or "redirect" (`status`
    with a Location of `location`).
    """

    def __init__(self, mode, status=302, location="http://127.0.0.1:9/elsewhere", interval=1.0, drip_bytes=20):
        self.mode, self.status, self.location = mode, status, location
        self.interval, self.drip_bytes = interval, drip_bytes
        self.requests = []
        super().__init__()

    @property
    def url(self):
        """Where to POST triggers."""
        return f"http://127.0.0.1:{self.port}/triggers"

    def _serve(self, conn):
        with conn:
            conn.settimeout(5)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
            while len(body) < int(headers.get("content-length", 0)):
                body += conn.recv(65536)
            self.requests.append({"request_line": lines[0], "headers": headers, "body": body})
            if self.mode == "redirect":
                conn.sendall(
                    f"HTTP/1.1 {self.status} Moved\r\nLocation: {self.location}\r\nContent-Length: 0\r\n\r\n".encode()
                )
            elif self.mode.startswith("drip"):
                # What comes at once, then what comes one byte every `interval` seconds.
                prefix, trickle = {
                    "drip": (f"HTTP/1.1 200 OK\r\nContent-Length: {self.drip_bytes}\r\n\r\n", "a" * self.drip_bytes),
                    "drip_headers": ("HTTP/1.1 200 OK\r\nX-Slow: ", "a" * self.drip_bytes),
                    "drip_status": ("", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
                }[self.mode]
                conn.sendall(prefix.encode())
                for byte in trickle.encode():
                    if self._stop.wait(self.interval):
                        return
                    try:
                        conn.sendall(bytes([byte]))
                    except OSError:
                        return  # the sender hung up: what a hard deadline looks like from here
            else:
                self._stop.wait()


class RefusingRedis(LoopbackServer):
    """A socket-level stand-in for a Redis that answers every command with the same error reply,
    e.g. "LOADING ..." (a real server only says it for the moments it loads its data)."""

    def __init__(self, error):
        self.error = error
        self.commands = []
        super().__init__()

    @property
    def url(self):
        """The URL a client connects with."""
        return f"redis://127.0.0.1:{self.port}/0"

    def _serve(self, conn):
        reader = conn.makefile("rb")
        with conn, reader:
            while not self._stop.is_set():
                # A RESP command is an array of bulk strings: *N, then N times $len and the bytes.
                header = reader.readline()
                if not header.startswith(b"*"):
                    return
                args = []
                for _ in range(int(header[1:])):
                    size = int(reader.readline()[1:])
                    args.append(reader.read(size + 2)[:-2])
                self.commands.append(args)
                conn.sendall(f"-{self.error}\r\n".encode())


def time_passes(client, names, seconds, namespace="default"):
    """Move every time stored of the deployments' windows and episodes `seconds` back, as if that
    long had passed on the services' clock since (the windows run on it; their keys' TTLs only tidy up)."""
    for name in names:
        app, window = f"app:{namespace}:{name}", f"trigger:{namespace}:{name}"
        episode = f"{{trigger:{namespace}:{name}}}:episode"
        mirror = json.loads(client.hget(app, "episode"))
        mirror["sent_at"] -= seconds
        watch = float(client.hget(app, "watch")) - seconds
        client.hset(app, mapping={"episode": json.dumps(mirror), "watch": watch})
        client.hincrby(app, "last_trigger", -seconds)
        client.hincrby(episode, "window_at", -seconds)
        client.incrby(window, -seconds)
