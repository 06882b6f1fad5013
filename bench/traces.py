"""Usage traces for the backtest: synthetic ones in five shapes, or samples read from a CSV.

A trace is a list of Deployment (namespace, name, shape, requests) and, per deployment, a list
of (unix seconds, cpu cores, memory MiB) samples in time order. Everything is seeded, so the same
arguments always give the same traces.
"""

import csv
import math
import random
from dataclasses import dataclass, field
from datetime import datetime

SHAPES = ("steady", "daily", "bursty", "batch", "leak")
STEP_SECONDS = 300
START = 1704067200  # 2024-01-01T00:00:00Z, a Monday
DAY = 86400


@dataclass
class Deployment:
    """One deployment of a trace: where it lives, what it requests, and its samples."""

    namespace: str
    name: str
    shape: str
    req_cpu: float = 0.0
    req_mem: float = 0.0
    samples: list = field(default_factory=list)  # (unix seconds, cpu cores, memory MiB)


def _daily_factor(ts):
    """Office-hours load: low at night, high mid-afternoon (UTC), a third of it at weekends."""
    hour = (ts % DAY) / 3600
    level = 0.15 + 0.85 * max(0.0, math.sin(math.pi * (hour - 7) / 12)) if 7 <= hour <= 19 else 0.15
    weekday = ((ts - START) // DAY) % 7  # START is a Monday
    return level * (0.35 if weekday >= 5 else 1.0)


def _shape_sample(shape, ts, params, rnd):
    """(cpu cores, memory MiB) of one deployment of `shape` at `ts`."""
    cpu0, mem0 = params["cpu"], params["mem"]
    if shape == "steady":
        return cpu0 * max(0.05, rnd.gauss(1, 0.08)), mem0 * max(0.5, rnd.gauss(1, 0.02))
    if shape == "daily":
        factor = _daily_factor(ts)
        return cpu0 * factor * max(0.1, rnd.gauss(1, 0.1)), mem0 * (0.7 + 0.3 * factor) * max(0.5, rnd.gauss(1, 0.02))
    if shape == "bursty":
        burst = rnd.random() < 0.04
        cpu = cpu0 * (rnd.uniform(2.0, 3.5) if burst else rnd.lognormvariate(0, 0.35))
        return cpu, mem0 * (rnd.uniform(1.1, 1.25) if burst else max(0.5, rnd.gauss(1, 0.03)))
    if shape == "batch":
        # A 30-minute job every 6 hours, near idle in between.
        running = (ts - START + params["offset"]) % (6 * 3600) < 1800
        if running:
            return cpu0 * max(0.5, rnd.gauss(1, 0.05)), mem0 * max(0.5, rnd.gauss(1, 0.02))
        return cpu0 * 0.04 * max(0.1, rnd.gauss(1, 0.2)), mem0 * 0.35 * max(0.5, rnd.gauss(1, 0.02))
    # leak: memory grows until the process restarts, every 30 to 60 hours.
    if ts >= params["restart_at"]:
        params["born"], params["restart_at"] = ts, ts + rnd.uniform(30, 60) * 3600
    hours = (ts - params["born"]) / 3600
    return cpu0 * max(0.05, rnd.gauss(1, 0.1)), mem0 * (1 + params["leak_per_hour"] * hours)


def synthetic(deployments=200, days=8, seed=1):
    """`deployments` deployments spread evenly over the five shapes, sampled every 5 minutes for `days`."""
    rnd = random.Random(seed)
    result = []
    for index in range(deployments):
        shape = SHAPES[index % len(SHAPES)]
        params = {
            "cpu": rnd.uniform(0.1, 2.0),
            "mem": rnd.choice((128, 256, 512, 1024, 2048)) * rnd.uniform(0.6, 0.9),
            "offset": rnd.randrange(0, 6 * 3600, STEP_SECONDS),
            "born": START - rnd.uniform(0, 30) * 3600,
            "leak_per_hour": rnd.uniform(0.005, 0.02),
        }
        params["restart_at"] = params["born"] + rnd.uniform(30, 60) * 3600
        deployment = Deployment("default", f"{shape}-{index:03d}", shape)
        for step in range(days * DAY // STEP_SECONDS):
            ts = START + step * STEP_SECONDS
            cpu, mem = _shape_sample(shape, ts, params, rnd)
            deployment.samples.append((ts, round(cpu, 4), round(mem, 1)))
        # Requested as teams do: about twice the peak.
        deployment.req_cpu = round(2 * max(s[1] for s in deployment.samples), 2)
        deployment.req_mem = math.ceil(2 * max(s[2] for s in deployment.samples))
        result.append(deployment)
    return result


def _seconds(raw):
    raw = raw.strip()
    try:
        return float(raw)
    except ValueError:
        return datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()


def from_csv(path):
    """Deployments from a CSV of `timestamp,namespace,name,cpu,memory_mb` (a header row; ISO-8601 or Unix seconds).

    CSV samples carry no requests, so each deployment is given twice its highest usage, as the
    synthetic traces are.
    """
    by_key = {}
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"timestamp", "namespace", "name", "cpu", "memory_mb"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        for line, row in enumerate(reader, start=2):
            try:
                sample = (_seconds(row["timestamp"]), float(row["cpu"]), float(row["memory_mb"]))
            except ValueError as exc:
                raise ValueError(f"{path}:{line}: {exc}") from None
            key = (row["namespace"].strip(), row["name"].strip())
            by_key.setdefault(key, Deployment(*key, shape="csv")).samples.append(sample)
    for deployment in by_key.values():
        deployment.samples.sort()
        deployment.req_cpu = round(2 * max(s[1] for s in deployment.samples), 3) or 0.01
        deployment.req_mem = math.ceil(2 * max(s[2] for s in deployment.samples)) or 1
    return list(by_key.values())
