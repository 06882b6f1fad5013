"""What a benchmark run reports: the CPU table (its headline), the traffic table, the targets, and RESULTS.md."""

import contextlib
import os
import platform
import subprocess
from pathlib import Path

from bench.load import WRK_CONNECTIONS, WRK_THREADS
from bench.payloads import COST, FORECAST
from bench.stack import WORKERS

# The CPU ratio each size is held to on a single Redis (issue 23); other sizes have none.
CPU_RATIO_GOALS = {2: 0.5, 500: 0.2, 2000: 0.2}

COLUMNS = (
    "endpoint",
    "store",
    "deployments",
    "CPU ratio",
    "goal",
    "worker CPU ms/req",
    "redis CPU ms/req",
    "ceiling CPU ms/req",
    "CPU ms/req at the goal",
    "req/s",
    "ceiling req/s",
    "req/s ratio",
)
TRAFFIC_COLUMNS = (
    "endpoint",
    "store",
    "deployments",
    "p50 ms",
    "p99 ms",
    "redis cmds/req",
    "server cmds/req",
    "round trips/req",
    "redis µs/deployment",
    "peak RSS MB/worker",
)


def _rate(value):
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def cpu_goal(row):
    """The CPU ratio a case is held to, None when none (other sizes, the cluster)."""
    return CPU_RATIO_GOALS.get(row.deployments) if row.store == "redis" else None


def table(rows):
    """The headline: CPU per request and the CPU ratio per case, with requests per second beside them."""
    cells = []
    for row in rows:
        goal = cpu_goal(row)
        cells.append(
            (
                row.endpoint,
                row.store,
                str(row.deployments),
                f"{row.cpu_ratio:.3f}",
                "-" if goal is None else f"{goal}",
                f"{row.cpu_ms['workers']:.2f}",
                f"{row.cpu_ms['redis']:.2f}",
                f"{row.cpu_ms['ceiling']:.2f}",
                # What the service's workers and Redis together may spend per request to meet the goal.
                "-" if goal is None else f"{row.cpu_ms['ceiling'] / goal:.2f}",
                _rate(row.service.requests_per_second),
                _rate(row.ceiling.requests_per_second),
                f"{row.ratio:.2f}",
            )
        )
    return _markdown(COLUMNS, cells)


def traffic_table(rows):
    """Latency, the Redis traffic per request and the workers' memory, per case."""
    cells = [
        (
            row.endpoint,
            row.store,
            str(row.deployments),
            f"{row.service.p50_ms:.2f}",
            f"{row.service.p99_ms:.2f}",
            f"{row.commands:.1f}",
            f"{row.server_commands:.1f}",
            "-" if row.round_trips is None else f"{row.round_trips:.2f}",
            f"{row.server_us_per_deployment:.2f}",
            f"{row.peak_rss_mb:.1f}",
        )
        for row in rows
    ]
    return _markdown(TRAFFIC_COLUMNS, cells)


def _markdown(columns, cells):
    """A markdown table, text columns (the first two) left-aligned and numbers right-aligned."""
    widths = [max(len(c[i]) for c in [columns, *cells]) for i in range(len(columns))]
    numeric = [i > 1 for i in range(len(columns))]

    def line(values):
        padded = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if num else ("-" * (w + 2)) for w, num in zip(widths, numeric)) + "|"
    return "\n".join([line(columns), rule, *(line(c) for c in cells)])


def target_checks(rows):
    """The issues' targets, each with the measured figure and whether it is met."""
    by_case = {(row.store, row.endpoint, row.deployments): row for row in rows}
    checks = []

    def check(label, met, figure):
        checks.append(f"- [{'x' if met else ' '}] {label}: {figure}")

    for endpoint in (COST.name, FORECAST.name):
        for size, floor in CPU_RATIO_GOALS.items():
            row = by_case.get(("redis", endpoint, size))
            if row:
                check(
                    f"{endpoint} CPU ratio to the ceiling at {size} deployments >= {floor}",
                    row.cpu_ratio >= floor,
                    f"{row.cpu_ratio:.3f}",
                )
        single, cluster = by_case.get(("redis", endpoint, 500)), by_case.get(("cluster", endpoint, 500))
        if single and cluster:
            check(
                f"{endpoint} CPU ratio on the cluster at 500 deployments >= half the single-Redis one",
                cluster.cpu_ratio >= single.cpu_ratio / 2,
                f"{cluster.cpu_ratio:.3f} against {single.cpu_ratio:.3f}",
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
    """RESULTS.md: the CPU table, the targets, the traffic table, and where and how it was measured."""
    return f"""# Ingest benchmark

Written by `make bench` (bench/run.py) on {started:%Y-%m-%d %H:%M} UTC in {seconds:.0f} s.
Machine: {machine()}.

## CPU per request (the goals' measure, issue 23)

CPU ratio = the ceiling's CPU per request ÷ (the service's worker CPU per request + Redis CPU per
request). CPU time is user + system from `/proc`, over the timed runs: the service's gunicorn (master
and workers) and its Redis servers during the service's runs, the ceiling's gunicorn during its own;
wrk is left out. Unlike requests per second, it hardly moves with what else runs on the machine.
`CPU ms/req at the goal` is what the service's workers and Redis together may spend per request for
the goal (ceiling CPU ÷ goal); `req/s ratio` is the service's requests per second over the ceiling's.

{table(rows)}

## Targets (issues 6, 11 and 23)

{target_checks(rows)}

## Latency, Redis traffic and memory

{traffic_table(rows)}

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
