"""The ingest benchmark: both services against the bare-Flask ceiling, at 2 to 2000 deployments per payload.

`make bench` runs this. It starts a redis-server of its own, the agent receiver, the cost and
forecast services and the ceiling app (bench/ceiling.py), all under the project's gunicorn.conf.py
on loopback ports, drives them with wrk, prints one markdown table and writes it to
bench/RESULTS.md. `--quick` runs one-second measurements to smoke-check the harness and writes
nothing unless `--output` says where. Everything it started is stopped on exit, Ctrl-C included.
"""

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import redis
import requests

from bench.redis_proxy import CountingProxy
from devtools.agent_receiver import AgentReceiver
from shared import services
from shared.config import SETTING_NAMES
from shared.services import ServiceSpec
from tests.support import GunicornService, RedisClusterServers, RedisServer

ROOT = Path(__file__).resolve().parent.parent

SIZES = (2, 50, 500, 2000)
# The state stores a row set is measured on: one redis-server, and a local three-primary Redis Cluster.
STORES = ("redis", "cluster")
COST_TOKEN = "bench-cost-token-0123456789abcdef"
FORECAST_TOKEN = "bench-forecast-token-0123456789abcdef"
WORKERS = int(os.environ.get("WEB_CONCURRENCY", "2"))
WRK_THREADS = 2
WRK_CONNECTIONS = 8
# Far above any latency we expect, so a slow large payload is measured rather than dropped.
WRK_TIMEOUT = "30s"
# Longer than the whole run, so every firing deployment stays in its cooldown once primed.
COOLDOWN_SECONDS = 3600
# Every tenth deployment fires no rule: real namespaces are mostly, not only, in trouble.
QUIET_EVERY = 10
RESULTS = ROOT / "bench" / "RESULTS.md"


class BenchError(RuntimeError):
    """The benchmark cannot go on; the message says why."""


@dataclass(frozen=True)
class Mode:
    """How long each measurement runs."""

    rounds: int  # service then ceiling, this many times per case
    small_seconds: int  # per wrk run at 2 and 50 deployments
    large_seconds: int  # per wrk run at 500 and 2000 deployments, which complete fewer requests
    warmup_seconds: int
    counted_requests: int  # sequential requests through the counting proxy


# Short runs, alternated: the machine's speed drifts (other tenants, CPU boost), and alternating
# spreads the drift over the service and the ceiling alike instead of favouring whichever ran first.
FULL = Mode(rounds=3, small_seconds=2, large_seconds=3, warmup_seconds=1, counted_requests=5)
QUICK = Mode(rounds=1, small_seconds=1, large_seconds=1, warmup_seconds=0, counted_requests=2)


@dataclass(frozen=True)
class Endpoint:
    """One of the two ingest endpoints, and the token the benchmark's caller presents to it."""

    spec: ServiceSpec
    token: str

    @property
    def name(self):
        """The service's short name."""
        return self.spec.name

    @property
    def path(self):
        """The service's ingest path."""
        return self.spec.path


COST = Endpoint(services.COST, COST_TOKEN)
FORECAST = Endpoint(services.FORECAST, FORECAST_TOKEN)


@dataclass
class WrkResult:
    """What one wrk run measured."""

    requests: int
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: str  # non-2xx responses and socket errors, empty when there were none


@dataclass
class Row:
    """One line of the table."""

    endpoint: str
    store: str  # "redis" or "cluster"
    deployments: int
    service: WrkResult
    ceiling: WrkResult
    commands: float  # sent by the service, per request (script calls over all nodes on a cluster)
    server_commands: float  # executed by Redis (Lua calls included), per request
    round_trips: float | None  # None on a cluster, where the proxy cannot stand between client and nodes
    server_us_per_deployment: float  # Redis time in our scripts (INFO commandstats), per deployment
    peak_rss_mb: float

    @property
    def ratio(self):
        """The service's requests per second over the ceiling's."""
        return self.service.requests_per_second / self.ceiling.requests_per_second


# --- payloads -------------------------------------------------------------------------------


def namespace(endpoint, size):
    """Each case writes its own namespace, so priming one case never pre-claims another's cooldowns."""
    return f"bench-{endpoint.name}-{size}"


def is_quiet(index):
    """True for the deployments that fire no rule."""
    return index % QUIET_EVERY == QUIET_EVERY - 1


def firing_count(size):
    """How many deployments of a payload fire a rule."""
    return sum(not is_quiet(i) for i in range(size))


def payload_timestamp():
    """A recent timestamp: the services refuse future ones, and every request reuses this one."""
    return datetime.fromtimestamp(int(time.time()) - 60, UTC).isoformat().replace("+00:00", "Z")


def cost_payload(ns, size, timestamp, *, waste_rule=True):
    """A cost payload; with waste_rule, all but every tenth deployment waste most of their CPU."""
    deployments = []
    for i in range(size):
        if is_quiet(i):
            requested, usage = 1.0, 0.65  # 35 % waste, 65 % utilisation: no rule at all
        elif waste_rule:
            requested, usage = 2.0, round(0.3 + (i % 7) * 0.03, 2)  # cpu_waste fires
        else:
            requested, usage = 2.0, 1.1  # 45 % waste: under cpu_waste's 50 %, over safe_downscale's 40 %
        deployments.append(
            {
                "name": f"app-{i}",
                "current_requests": {"cpu_cores": requested, "memory_mb": 4096},
                "current_usage": {"cpu_cores": usage, "memory_mb": 1024 + (i % 13) * 64},
            }
        )
    return {
        "source": "cost-engine",
        "timestamp": timestamp,
        "namespace": ns,
        "cluster_totals": {"vm_count": 3 + size // 20, "current_hourly_cost_gbp": round(0.75 + size * 0.05, 2)},
        "deployments": deployments,
    }


def forecast_payload(ns, size, timestamp):
    """A forecast payload over cost_payload(waste_rule=False): all but every tenth may safely downscale.

    safe_downscale, like cpu_waste, is a waste rule: a risk rule (a predicted spike) may escalate a
    running window, which is another path than the steady state measured here.
    """
    deployments = []
    for i in range(size):
        # Quiet: a peak at 80 % of the request neither spikes (90 %) nor allows a downscale (60 %).
        peak = 0.8 if is_quiet(i) else round(0.55 + (i % 5) * 0.1, 2)
        deployments.append({"name": f"app-{i}", "predict_peak_24h": {"cpu_cores": peak, "memory_mb": 2048}})
    return {"source": "forecast", "timestamp": timestamp, "namespace": ns, "deployments": deployments}


def wrk_script(body_path, token):
    """A wrk Lua script that POSTs the body file with the service's headers."""
    return f"""-- generated by bench/run.py
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {token}"
local file = assert(io.open("{body_path}", "rb"))
wrk.body = file:read("*a")
file:close()
"""


# --- processes ------------------------------------------------------------------------------


def ensure_wrk():
    """Return wrk's path, installing it with apt-get when missing and we are root."""
    path = shutil.which("wrk")
    if path:
        return path
    if os.geteuid() != 0:
        raise BenchError("wrk is not installed: install it (sudo apt-get install -y wrk) and rerun")
    print("bench: wrk is missing; installing it with apt-get", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "wrk"]
    if subprocess.run(install, env=env, stdout=subprocess.DEVNULL).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, stdout=subprocess.DEVNULL, check=True)
        subprocess.run(install, env=env, stdout=subprocess.DEVNULL, check=True)
    path = shutil.which("wrk")
    if not path:
        raise BenchError("apt-get install wrk did not provide a wrk binary")
    return path


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


def workers_peak_rss_mb(service):
    """The largest peak RSS among a service's workers."""
    pids = worker_pids(service.process.pid)
    if not pids:
        raise BenchError(f"{service.app_uri} has no workers")
    return max(peak_rss_mb(pid) for pid in pids)


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
        env = {
            "REDIS_URL": self.redis_server.url,
            "AGENT_WEBHOOK_URL": self.receiver.url,
            **{e.spec.token_setting: e.token for e in (COST, FORECAST)},
            "COOLDOWN_SECONDS": str(COOLDOWN_SECONDS),
            "ALLOWED_NAMESPACES": ",".join(namespace(e, size) for e in (COST, FORECAST) for size in SIZES),
            # Request logs at INFO would make the benchmark measure writing to a pipe.
            "LOG_LEVEL": "WARNING",
        }
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


# --- measuring ------------------------------------------------------------------------------


def post(url, body, token):
    """POST a JSON body the way the engines do; return the decoded 201 answer."""
    response = requests.post(
        url,
        data=body,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        timeout=60,
    )
    if response.status_code != 201:
        raise BenchError(f"POST {url} answered {response.status_code}: {response.text[:500]}")
    return response.json()


def prime(stack, store, endpoint, size, bodies):
    """Bring a case to steady state: every firing deployment triggered once and in its cooldown."""
    expected = firing_count(size)
    if endpoint is FORECAST:
        # The forecast rules need cost state; this cost payload fires no cost rule of its own.
        seeded = post(f"{stack.services[store, COST.name].url}{COST.path}", bodies["seed"], COST.token)
        if seeded["triggered"]:
            raise BenchError(f"the forecast case's cost seed fired {len(seeded['triggered'])} deployments")
    answer = post(f"{stack.services[store, endpoint.name].url}{endpoint.path}", bodies["payload"], endpoint.token)
    # A 2xx from the receiver is what writes last_trigger; only then is the case in steady state.
    if len(answer["triggered"]) != expected or answer["delivery"] != "ok":
        raise BenchError(
            f"priming {endpoint.name} at {size}: triggered {len(answer['triggered'])} of {expected}, "
            f"delivery {answer['delivery']}"
        )


def count_redis_traffic(stack, store, endpoint, size, body, requests_count):
    """Per steady-state request: commands sent, commands Redis executed, round trips, and script µs.

    Sequential requests while nothing else talks to Redis, so the INFO commandstats delta
    belongs to these requests alone (a delta around a wrk run would also catch the requests
    still in flight when wrk stops). On the single Redis the requests go to the service's
    one-worker twin behind the counting proxy; on a cluster, to the service itself, and the
    script calls are counted on every primary.
    """
    nodes = stack.redis_nodes(store)
    service = stack.counted[endpoint.name] if store == "redis" else stack.services[store, endpoint.name]
    url = f"{service.url}{endpoint.path}"
    # A worker's first request loads the Lua scripts and may open its connections: not steady state.
    for _ in range(2 * WORKERS):
        post(url, body, endpoint.token)
    commands_before, trips_before = stack.proxy.counts()
    stats_before = [node.info("commandstats") for node in nodes]
    for _ in range(requests_count):
        answer = post(url, body, endpoint.token)
        if answer["triggered"] or len(answer["cooldown"]) != firing_count(size):
            raise BenchError(f"{endpoint.name} at {size} is not in steady state: {answer}")
    stats_after = [node.info("commandstats") for node in nodes]
    commands_after, trips_after = stack.proxy.counts()
    executed = sum(server_commands(after) - server_commands(before) for before, after in zip(stats_before, stats_after))
    scripts = sum(
        script_stat(after, "calls") - script_stat(before, "calls") for before, after in zip(stats_before, stats_after)
    )
    usec = sum(
        script_stat(after, "usec") - script_stat(before, "usec") for before, after in zip(stats_before, stats_after)
    )
    if store == "redis":
        commands = (commands_after - commands_before) / requests_count
        round_trips = (trips_after - trips_before) / requests_count
    else:
        commands, round_trips = scripts / requests_count, None
    return commands, executed / requests_count, round_trips, usec / requests_count / size


def server_commands(stats):
    """Commands Redis has executed, Lua scripts' own calls included, leaving out our INFO calls."""
    return sum(entry["calls"] for name, entry in stats.items() if name != "cmdstat_info")


def script_stat(stats, field):
    """A field of the script commands' stats (EVALSHA, and EVAL for a first load): calls or usec."""
    return sum(stats.get(name, {}).get(field, 0) for name in ("cmdstat_evalsha", "cmdstat_eval"))


LATENCY_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _latency_ms(text):
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        raise BenchError(f"cannot read wrk latency {text!r}")
    return float(match[1]) * LATENCY_UNITS[match[2]]


def parse_wrk(output):
    """Read requests, requests/s, p50, p99 and errors from `wrk --latency` output."""

    def find(pattern):
        match = re.search(pattern, output, re.MULTILINE)
        if not match:
            raise BenchError(f"unexpected wrk output:\n{output}")
        return match[1]

    errors = [line.strip() for line in output.splitlines() if re.match(r"\s*(Non-2xx|Socket errors)", line)]
    return WrkResult(
        requests=int(find(r"^\s*(\d+) requests in")),
        requests_per_second=float(find(r"^Requests/sec:\s*([\d.]+)")),
        p50_ms=_latency_ms(find(r"^\s*50%\s+(\S+)")),
        p99_ms=_latency_ms(find(r"^\s*99%\s+(\S+)")),
        errors="; ".join(errors),
    )


def run_wrk(wrk, url, script, seconds):
    """Run wrk against url with the case's script; return what it measured."""
    argv = [wrk, f"-t{WRK_THREADS}", f"-c{WRK_CONNECTIONS}", f"-d{seconds}s", "--timeout", WRK_TIMEOUT]
    argv += ["--latency", "-s", str(script), url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120)
    if done.returncode != 0:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse_wrk(done.stdout)


def checked_wrk(wrk, url, script, seconds):
    """run_wrk(), failing on any non-2xx answer or socket error: errors are not throughput."""
    result = run_wrk(wrk, url, script, seconds)
    if result.errors:
        raise BenchError(f"{url}: {result.errors}")
    return result


def combine(results):
    """Several equal-length runs as one: mean requests/s and mean percentiles."""
    count = len(results)
    return WrkResult(
        requests=sum(r.requests for r in results),
        requests_per_second=sum(r.requests_per_second for r in results) / count,
        p50_ms=sum(r.p50_ms for r in results) / count,
        p99_ms=sum(r.p99_ms for r in results) / count,
        errors="",
    )


def run_case(stack, wrk, mode, store, endpoint, size, workdir):
    """Prime one case, time the service and the ceiling alternately, then count its Redis traffic."""
    timestamp = payload_timestamp()
    ns = namespace(endpoint, size)
    if endpoint is COST:
        payload = cost_payload(ns, size, timestamp)
        bodies = {"payload": json.dumps(payload)}
    else:
        bodies = {
            "seed": json.dumps(cost_payload(ns, size, timestamp, waste_rule=False)),
            "payload": json.dumps(forecast_payload(ns, size, timestamp)),
        }
    body_path = workdir / f"{store}-{ns}.json"
    body_path.write_text(bodies["payload"])
    script = workdir / f"{store}-{ns}.lua"
    script.write_text(wrk_script(body_path, endpoint.token))

    prime(stack, store, endpoint, size, bodies)
    seconds = mode.small_seconds if size <= 50 else mode.large_seconds
    service = stack.services[store, endpoint.name]
    urls = {"service": f"{service.url}{endpoint.path}", "ceiling": f"{stack.ceiling.url}{endpoint.path}"}
    runs = {"service": [], "ceiling": []}
    if mode.warmup_seconds:
        # A worker's first requests are slower (lazy imports, cold caches); keep them out of the figures.
        for url in urls.values():
            checked_wrk(wrk, url, script, mode.warmup_seconds)
    for _ in range(mode.rounds):
        for side, url in urls.items():
            runs[side].append(checked_wrk(wrk, url, script, seconds))
    commands, executed, round_trips, server_us = count_redis_traffic(
        stack, store, endpoint, size, bodies["payload"], mode.counted_requests
    )
    return Row(
        endpoint=endpoint.name,
        store=store,
        deployments=size,
        service=combine(runs["service"]),
        ceiling=combine(runs["ceiling"]),
        commands=commands,
        server_commands=executed,
        round_trips=round_trips,
        server_us_per_deployment=server_us,
        peak_rss_mb=workers_peak_rss_mb(service),
    )


# --- reporting ------------------------------------------------------------------------------

COLUMNS = (
    "endpoint",
    "store",
    "deployments",
    "req/s",
    "p50 ms",
    "p99 ms",
    "ceiling req/s",
    "ratio",
    "redis cmds/req",
    "server cmds/req",
    "round trips/req",
    "redis µs/deployment",
    "peak RSS MB/worker",
)


def _rate(value):
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def table(rows):
    """The results as one markdown table."""
    cells = [
        (
            row.endpoint,
            row.store,
            str(row.deployments),
            _rate(row.service.requests_per_second),
            f"{row.service.p50_ms:.2f}",
            f"{row.service.p99_ms:.2f}",
            _rate(row.ceiling.requests_per_second),
            f"{row.ratio:.2f}",
            f"{row.commands:.1f}",
            f"{row.server_commands:.1f}",
            "-" if row.round_trips is None else f"{row.round_trips:.2f}",
            f"{row.server_us_per_deployment:.2f}",
            f"{row.peak_rss_mb:.1f}",
        )
        for row in rows
    ]
    widths = [max(len(c[i]) for c in [COLUMNS, *cells]) for i in range(len(COLUMNS))]
    numeric = [i > 1 for i in range(len(COLUMNS))]

    def line(values):
        padded = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if num else ("-" * (w + 2)) for w, num in zip(widths, numeric)) + "|"
    return "\n".join([line(COLUMNS), rule, *(line(c) for c in cells)])


def target_checks(rows):
    """The issues' targets, each with the measured figure and whether it is met."""
    by_case = {(row.store, row.endpoint, row.deployments): row for row in rows}
    checks = []

    def check(label, met, figure):
        checks.append(f"- [{'x' if met else ' '}] {label}: {figure}")

    for endpoint in (COST.name, FORECAST.name):
        for size, floor in ((2, 0.5), (500, 0.2), (2000, 0.2)):
            row = by_case.get(("redis", endpoint, size))
            if row:
                check(
                    f"{endpoint} ratio to the ceiling at {size} deployments >= {floor}",
                    row.ratio >= floor,
                    f"{row.ratio:.2f}",
                )
        single, cluster = by_case.get(("redis", endpoint, 500)), by_case.get(("cluster", endpoint, 500))
        if single and cluster:
            check(
                f"{endpoint} on the cluster at 500 deployments >= half the single-Redis ratio",
                cluster.ratio >= single.ratio / 2,
                f"{cluster.ratio:.2f} against {single.ratio:.2f}",
            )
        cases = [row for row in rows if row.endpoint == endpoint and row.store == "redis"]
        if cases:
            trips = max(row.round_trips for row in cases)
            check(f"{endpoint} round trips per request in steady state == 1 at every size", trips <= 1, f"{trips:.2f}")
            commands = max(row.commands for row in cases)
            check(f"{endpoint} commands per request == 1 at every size", commands <= 1, f"at most {commands:.1f}")
        on_cluster = [row for row in rows if row.endpoint == endpoint and row.store == "cluster"]
        if on_cluster:
            calls = max(row.commands for row in on_cluster)
            check(
                f"{endpoint} script calls per request on the cluster <= 3 (one per primary)", calls <= 3, f"{calls:.1f}"
            )
        row = by_case.get(("redis", endpoint, 2000))
        if row:
            check(
                f"{endpoint} peak RSS per worker at 2000 deployments < 80 MB",
                row.peak_rss_mb < 80,
                f"{row.peak_rss_mb:.1f} MB",
            )
    return "\n".join(checks)


def machine():
    """Cores, CPU model, Python and Redis versions, for the reader of RESULTS.md."""
    cores = os.cpu_count()
    with contextlib.suppress(FileNotFoundError):
        cores = int(subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout)
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    redis_version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()
    version = next((part.split("=", 1)[1] for part in redis_version if part.startswith("v=")), "unknown")
    return f"{cores} cores ({model}), Python {platform.python_version()}, redis-server {version}"


def results_markdown(rows, mode, started, seconds, load):
    """RESULTS.md: the table, where and how it was measured, and the targets."""
    return f"""# Ingest benchmark

Written by `make bench` (bench/run.py) on {started:%Y-%m-%d %H:%M} UTC in {seconds:.0f} s.
Machine: {machine()}.

{table(rows)}

## Targets (issues 6 and 11)

{target_checks(rows)}

## Method

- Each service and the ceiling (bench/ceiling.py: a Flask app whose endpoints only call
  `request.get_json()` and answer 201 `{{}}`) run under the project's `gunicorn.conf.py` with
  `WEB_CONCURRENCY={WORKERS}`, `LOG_LEVEL=WARNING`, on loopback, against a redis-server of the run's own
  (`store` redis) and against a local Redis Cluster of three primaries without replicas (`store` cluster).
- Load: `wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} --latency` with the same body and headers for the service and
  the ceiling. After a {mode.warmup_seconds} s warm-up of each, a case runs {mode.rounds} rounds of
  "service, then ceiling", {mode.small_seconds} s per run at 2 and 50 deployments and {mode.large_seconds} s at
  500 and 2000; req/s and the percentiles are the means over the rounds. wrk shares the {os.cpu_count()} cores
  with the workers, equally for both. Load average before the run: {load}.
- Payloads: deployments `app-0`, `app-1`, ...; all but every tenth fire a rule (cost: `cpu_waste`; forecast:
  `safe_downscale`, over cost state that fires no cost rule). Each case has its own namespace and is
  primed with one request whose trigger the agent receiver accepts, so the timed requests find every firing
  deployment in its cooldown (steady state).
- `redis cmds/req` and `round trips/req`: {mode.counted_requests} sequential steady-state requests to a
  one-worker twin of the service whose Redis connection goes through bench/redis_proxy.py, which parses the
  commands the service sends and counts round trips by holding replies until the client stops sending.
  This is what the targets count: one EVALSHA is one command. On the cluster, where no proxy can stand
  between the client and the nodes, `redis cmds/req` is the script calls counted by `INFO commandstats`
  on every primary (one per node per step at most), and round trips are not counted.
- `redis µs/deployment`: the time Redis spent in our scripts (`INFO commandstats` usec of EVALSHA and EVAL,
  over every node) per request and per deployment, over those same requests.
- `server cmds/req`: the `INFO commandstats` delta over those same requests, which also counts every call a
  Lua script makes inside Redis (so a script doing HGET, HSET and HGETALL counts 4).
- `peak RSS MB/worker`: the largest `VmHWM` among the service's workers after the case (peaks only grow, and
  the cases run from small to large).
"""


def run(mode, output, sizes=SIZES, stores=STORES):
    """Run every case and report; return the rows."""
    wrk = ensure_wrk()
    started_at = datetime.now(UTC)
    started = time.monotonic()
    # Other work on the machine slows the service and the ceiling alike, but readers should know of it.
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    rows = []
    with tempfile.TemporaryDirectory(prefix="aggregator-bench-") as tmp:
        workdir = Path(tmp)
        stack = Stack(workdir, stores)
        try:
            print("bench: starting Redis, the agent receiver, the services and the ceiling", flush=True)
            stack.start()
            for store in stores:
                for size in sizes:
                    for endpoint in (COST, FORECAST):
                        print(f"bench: {endpoint.name} at {size} deployments on {store}", flush=True)
                        rows.append(run_case(stack, wrk, mode, store, endpoint, size, workdir))
        finally:
            stack.stop()
    seconds = time.monotonic() - started
    print()
    print(table(rows))
    print()
    print(target_checks(rows))
    print(f"\nbench: {seconds:.0f} s in all; {machine()}; load average before: {load}")
    if output:
        output.write_text(results_markdown(rows, mode, started_at, seconds, load))
        print(f"bench: wrote {output}")
    return rows


def _choices(allowed, kind):
    """An argparse type: a comma-separated subset of `allowed`, kept in their order."""

    def parse(text):
        try:
            chosen = {kind(part.strip()) for part in text.split(",") if part.strip()}
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a list of {kind.__name__}: {text!r}") from None
        if not chosen or not chosen <= set(allowed):
            raise argparse.ArgumentTypeError(f"choose among {', '.join(map(str, allowed))}")
        return tuple(value for value in allowed if value in chosen)

    return parse


def _stop_on_sigterm(signum, frame):
    raise KeyboardInterrupt


def main(argv=None):
    """Parse the options and run the benchmark; exit non-zero when it could not finish."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one-second runs to smoke-check the harness")
    parser.add_argument(
        "--output",
        type=Path,
        help=f"where to write the results (default: {RESULTS.relative_to(ROOT)}, none with --quick)",
    )
    parser.add_argument(
        "--sizes",
        type=_choices(SIZES, int),
        default=SIZES,
        help="comma-separated deployments per payload, a subset of the default (a targeted check writes nothing)",
    )
    parser.add_argument(
        "--stores", type=_choices(STORES, str), default=STORES, help="comma-separated: redis, cluster, or both"
    )
    args = parser.parse_args(argv)
    partial = args.quick or args.sizes != SIZES or args.stores != STORES
    output = args.output or (None if partial else RESULTS)
    # SIGTERM (a CI timeout, say) takes the same path as Ctrl-C, so the finally blocks stop everything.
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        run(QUICK if args.quick else FULL, output, args.sizes, args.stores)
    except KeyboardInterrupt:
        print("\nbench: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
