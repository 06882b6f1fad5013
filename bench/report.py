"""What a benchmark run reports: the markdown table, the targets met or not, and RESULTS.md."""

import contextlib
import os
import platform
import subprocess
from pathlib import Path

from bench.load import WRK_CONNECTIONS, WRK_THREADS
from bench.payloads import COST, FORECAST
from bench.stack import WORKERS

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
    return _markdown(COLUMNS, cells)


def _markdown(columns, cells):
    """A markdown table, text columns (the first two) left-aligned and numbers right-aligned."""
    widths = [max(len(c[i]) for c in [columns, *cells]) for i in range(len(columns))]
    numeric = [i > 1 for i in range(len(columns))]

    def line(values):
        padded = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if num else ("-" * (w + 2)) for w, num in zip(widths, numeric)) + "|"
    return "\n".join([line(columns), rule, *(line(c) for c in cells)])


# The ratio each size is held to on a single Redis (issue 11); other sizes have none.
RATIO_GOALS = {2: 0.5, 500: 0.2, 2000: 0.2}
CPU_COLUMNS = (
    "endpoint",
    "store",
    "deployments",
    "worker CPU ms/req",
    "redis CPU ms/req",
    "ceiling worker CPU ms/req",
    "ratio goal",
    "CPU ms/req at the goal",
)


def cpu_table(rows):
    """Where each request's CPU time goes, against what the machine has per request at the goal's rate."""
    cores = os.cpu_count() or 1
    cells = []
    for row in rows:
        goal = RATIO_GOALS.get(row.deployments) if row.store == "redis" else None
        budget = cores * 1000 / (goal * row.ceiling.requests_per_second) if goal else None
        cells.append(
            (
                row.endpoint,
                row.store,
                str(row.deployments),
                f"{row.cpu_ms['workers']:.2f}",
                f"{row.cpu_ms['redis']:.2f}",
                f"{row.cpu_ms['ceiling']:.2f}",
                "-" if goal is None else f"{goal}",
                "-" if budget is None else f"{budget:.2f}",
            )
        )
    return _markdown(CPU_COLUMNS, cells)


def target_checks(rows):
    """The issues' targets, each with the measured figure and whether it is met."""
    by_case = {(row.store, row.endpoint, row.deployments): row for row in rows}
    checks = []

    def check(label, met, figure):
        checks.append(f"- [{'x' if met else ' '}] {label}: {figure}")

    for endpoint in (COST.name, FORECAST.name):
        for size, floor in RATIO_GOALS.items():
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

## Where the CPU goes

CPU time per request (user + system, from `/proc`) over the timed runs: the service's workers, the
Redis servers during the service's runs, and the ceiling's workers during its own. `CPU ms/req at the
goal` is what the machine has for each request if it answers at the goal's rate ({os.cpu_count()} cores ×
1000 / (ratio goal × ceiling req/s)): the workers, Redis and wrk share it, so a goal is out of reach
when the workers and Redis together already need more.

{cpu_table(rows)}

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
