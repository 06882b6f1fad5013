"""The processes a benchmark run measures: Redis (server or cluster), the agent receiver, the services, the ceiling."""

import contextlib
import os
import signal
import sys
from pathlib import Path

import redis

from bench.payloads import COST, FORECAST, SIZES, namespace
from bench.redis_proxy import CountingProxy
from devtools.agent_receiver import AgentReceiver
from devtools.harness import GunicornService, RedisClusterServers, RedisServer
from shared.runtime.settings import SETTING_NAMES

# The state stores a row set is measured on: one redis-server, and a local three-primary Redis Cluster.
STORES = ("redis", "cluster")
WORKERS = int(os.environ.get("WEB_CONCURRENCY", "2"))
# Longer than the whole run, so every firing deployment stays in its cooldown once primed.
COOLDOWN_SECONDS = 3600


class BenchError(RuntimeError):
    """The benchmark cannot go on; the message says why."""


def _stop_on_sigterm(signum, frame):
    raise KeyboardInterrupt


def run_until_done(name, work):
    """Run `work()` for the command `name`; its exit status: 0, 1 on a BenchError, 130 when interrupted.

    SIGTERM (a CI timeout, say) takes the same path as Ctrl-C, so the finally blocks stop everything.
    """
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        work()
    except KeyboardInterrupt:
        print(f"\n{name}: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    return 0


def worker_pids(master_pid):
    """The pids of a gunicorn master's workers (its child processes)."""
    children = []
    for status in Path("/proc").glob("[0-9]*/status"):
        with contextlib.suppress(OSError):
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
            if int(fields["PPid"]) == master_pid:
                children.append(int(status.parent.name))
    return sorted(children)


def peak_rss_mb(pid):
    """A process's peak resident set size (VmHWM) in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmHWM in /proc/{pid}/status")


def cpu_seconds(pids):
    """User plus system CPU time the processes have used so far, in seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        # The fields after the command name, which may itself hold spaces and parentheses.
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def workers_peak_rss_mb(service):
    """The largest peak RSS among a service's workers."""
    pids = worker_pids(service.process.pid)
    if not pids:
        raise BenchError(f"{service.app_uri} has no workers")
    return max(peak_rss_mb(pid) for pid in pids)


def service_settings(redis_url, webhook_url, sizes=SIZES):
    """The services' settings in every benchmark: its tokens, the namespaces of `sizes`, the cooldown, quiet logs."""
    return {
        "REDIS_URL": redis_url,
        "AGENT_WEBHOOK_URL": webhook_url,
        **{e.spec.token_setting: e.token for e in (COST, FORECAST)},
        "COOLDOWN_SECONDS": str(COOLDOWN_SECONDS),
        "ALLOWED_NAMESPACES": ",".join(namespace(e, size) for e in (COST, FORECAST) for size in sizes),
        # Request logs at INFO would make the benchmark measure writing to a pipe.
        "LOG_LEVEL": "WARNING",
    }


class Stack:
    """Redis, the agent receiver, the services, their counted twins and the ceiling; stop() undoes start()."""

    def __init__(self, workdir, stores=STORES):
        self.workdir = Path(workdir)
        self.stores = stores
        self.redis_server = RedisServer(self.workdir)
        self.cluster = RedisClusterServers(self.workdir / "cluster") if "cluster" in stores else None
        self.receiver = AgentReceiver()
        self.proxy = None
        self.services = {}  # (store, endpoint name) -> GunicornService timed by wrk
        self.counted = {}  # endpoint name -> GunicornService talking to the single Redis through the proxy
        self.ceiling = None
        self._started = []

    def start(self):
        """Start everything and wait until it answers; return self."""
        # Registered before starting: an interrupt during start-up must still stop what is half up.
        self._started.append(self.redis_server)
        self.redis_server.start()
        # Registered after: stopping a receiver that never served would wait for it forever.
        self._started.append(self.receiver.start())
        self.proxy = CountingProxy(self.redis_server.port)
        self._started.append(self.proxy.start())
        env = service_settings(self.redis_server.url, self.receiver.url)
        apps = {e.name: e.spec.app for e in (COST, FORECAST)}
        for name, app in apps.items():
            self.services["redis", name] = self._gunicorn(app, env, WORKERS, f"{name}.log")
            # One worker is enough to count what a request sends, and keeps every request on one connection.
            counted_env = {**env, "REDIS_URL": self.proxy.url}
            self.counted[name] = self._gunicorn(app, counted_env, 1, f"{name}-counted.log")
        if self.cluster:
            self._started.append(self.cluster)
            self.cluster.start()
            cluster_env = {**env, "REDIS_URL": self.cluster.url, "REDIS_CLUSTER": "true"}
            for name, app in apps.items():
                self.services["cluster", name] = self._gunicorn(app, cluster_env, WORKERS, f"{name}-cluster.log")
        self.ceiling = self._gunicorn("bench.ceiling:create_app()", env, WORKERS, "ceiling.log")
        return self

    def redis_pids(self, store):
        """The pids of the Redis servers behind a store."""
        if store == "redis":
            return [self.redis_server.process.pid]
        return [process.pid for process in self.cluster.processes.values()]

    def redis_nodes(self, store):
        """Clients of the Redis servers behind a store: the one server, or each cluster primary."""
        if store == "redis":
            return [redis.Redis(port=self.redis_server.port)]
        return [redis.Redis(port=port) for port in self.cluster.primary_ports()]

    def _gunicorn(self, app, env, workers, log_name):
        service = GunicornService(app, env, workers=workers)
        # Settings from the caller's shell (a token file, say) must not leak into the measured setup.
        for name in SETTING_NAMES:
            if name not in env:
                service.env.pop(name, None)
        log_path = self.workdir / log_name
        self._started.append(service)
        try:
            service.start(log_path)
        except RuntimeError:
            raise BenchError(f"{app} did not start:\n{log_path.read_text()[-2000:]}") from None
        return service

    def stop(self):
        """Stop whatever was started, newest first."""
        for part in reversed(self._started):
            with contextlib.suppress(Exception):
                part.stop()
        self._started.clear()
