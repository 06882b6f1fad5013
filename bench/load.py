"""Load and counting: prime a case, time it with wrk against the ceiling, count its Redis traffic."""

import os
import re
import shutil
import subprocess
from dataclasses import dataclass

import requests

from bench.payloads import COST, FORECAST, case_bodies, firing_count, namespace, wrk_script
from bench.stack import WORKERS, BenchError, cpu_seconds, worker_pids, workers_peak_rss_mb

WRK_THREADS = 2
WRK_CONNECTIONS = 8
# Far above any latency we expect, so a slow large payload is measured rather than dropped.
WRK_TIMEOUT = "30s"


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
    cpu_ms: dict[str, float]  # CPU time per request in the timed runs: "workers", "redis", "ceiling" (gunicorn's)

    @property
    def ratio(self):
        """The service's requests per second over the ceiling's."""
        return self.service.requests_per_second / self.ceiling.requests_per_second

    @property
    def service_cpu_ms(self):
        """What one request costs the service in CPU: its workers and its Redis servers."""
        return self.cpu_ms["workers"] + self.cpu_ms["redis"]

    @property
    def cpu_ratio(self):
        """The ceiling's worker CPU per request over the service's (workers and Redis): the goals' measure."""
        return self.cpu_ms["ceiling"] / self.service_cpu_ms


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
    """A field of the script calls' stats (EVALSHA; a first load is a SCRIPT LOAD, not a script run): calls or usec."""
    return stats.get("cmdstat_evalsha", {}).get(field, 0)


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


def gunicorn_pids(service):
    """The pids of a gunicorn service: its master and its workers."""
    return [service.process.pid, *worker_pids(service.process.pid)]


def run_case(stack, wrk, mode, store, endpoint, size, workdir):
    """Prime one case, time the service and the ceiling alternately, then count its Redis traffic."""
    ns = namespace(endpoint, size)
    bodies = case_bodies(endpoint, size)
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
    # CPU time from /proc around each run: the service's gunicorn (master and workers) and its Redis
    # servers, or the ceiling's gunicorn; wrk's own is left out, as it is the same for both.
    measured = {
        "service": {"workers": gunicorn_pids(service), "redis": stack.redis_pids(store)},
        "ceiling": {"ceiling": gunicorn_pids(stack.ceiling)},
    }
    cpu = {"workers": 0.0, "redis": 0.0, "ceiling": 0.0}
    for _ in range(mode.rounds):
        for side, url in urls.items():
            before = {part: cpu_seconds(pids) for part, pids in measured[side].items()}
            runs[side].append(checked_wrk(wrk, url, script, seconds))
            for part, pids in measured[side].items():
                cpu[part] += cpu_seconds(pids) - before[part]
    done = {side: sum(run.requests for run in runs[side]) for side in runs}
    cpu_ms = {
        part: 1000 * seconds_used / done["ceiling" if part == "ceiling" else "service"]
        for part, seconds_used in cpu.items()
    }
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
        cpu_ms=cpu_ms,
    )
