"""A rightsizing recommendation and its price for one deployment: pure functions over stored state.

With at least a day of usage history, the recommendation is the Kubernetes VPA recommender's:
CPU from percentiles of a decaying histogram of samples, memory from the daily peaks, each with
a safety margin (headroom). With less, it is the latest sample (or a higher forecast peak) plus
the headroom. The price splits the cluster's hourly cost over the namespace's requested CPU and
memory as OpenCost does when only a node's price is known: a core-hour costs as much as
`cpu_memory_price_ratio` GiB-hours.
"""

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from shared.core.history import History

MIN_CPU_CORES = 0.01
MIN_MEMORY_MB = 64
HOURS_PER_MONTH = 730
MIB_PER_GIB = 1024
# OpenCost's default on-demand prices: $0.031611 per core-hour and $0.004237 per GiB-hour.
DEFAULT_CPU_MEMORY_PRICE_RATIO = 7.46
CPU_LOWER, CPU_TARGET, CPU_UPPER = 0.5, 0.9, 0.95
MEMORY_LOWER, MEMORY_TARGET = 0.5, 0.9


def _ceil(value):
    # Rounding to 9 places first keeps float noise (460.00000000000006) from adding a whole unit.
    return math.ceil(round(value, 9))


def _millicores(cores, headroom):
    return max(round(MIN_CPU_CORES * 1000), _ceil(cores * (1 + headroom) * 1000))


def _mebibytes(mib, headroom):
    return max(MIN_MEMORY_MB, _ceil(mib * (1 + headroom)))


def _iso(seconds):
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def _fresh_forecast(state, max_skew_seconds):
    """The forecast peaks (cpu, memory) when the forecast is within max_skew_seconds of the cost data."""
    if "forecast_timestamp" not in state or "cost_timestamp" not in state:
        return 0, 0
    if abs(state["forecast_timestamp"] - state["cost_timestamp"]) > max_skew_seconds:
        return 0, 0
    return state.get("pred_cpu_peak", 0), state.get("pred_mem_peak", 0)


def recommend(
    namespace: str,
    name: str,
    state: Mapping[str, Any],
    headroom: float,
    history: History | None = None,
    max_skew_seconds: float = 3600,
) -> dict[str, Any]:
    """The recommended CPU and memory requests for one deployment, with a kubectl command to apply them."""
    history = history or History()
    if history.enough:
        floor_cpu, floor_mem = _fresh_forecast(state, max_skew_seconds)
        # A fresh forecast is a floor: never below the predicted 24 h peak plus headroom.
        cpu_target = _millicores(max(history.cpu_percentile(CPU_TARGET), floor_cpu), headroom)
        cpu = {
            "target": cpu_target,
            "lower": min(cpu_target, _millicores(history.cpu_percentile(CPU_LOWER), headroom)),
            "upper": max(cpu_target, _millicores(history.cpu_percentile(CPU_UPPER), headroom)),
        }
        mem_target = _mebibytes(max(history.memory_percentile(MEMORY_TARGET), floor_mem), headroom)
        memory = {
            "target": mem_target,
            "lower": min(mem_target, _mebibytes(history.memory_percentile(MEMORY_LOWER), headroom)),
            "upper": max(mem_target, _mebibytes(history.memory_peak(), headroom)),
        }
        basis = "history"
    else:
        # One sample says nothing about spread: lower, target and upper are the same number.
        cpu_seen = max(state["usage_cpu_curr"], state.get("pred_cpu_peak", 0))
        mem_seen = max(state.get("usage_mem_curr", 0), state.get("pred_mem_peak", 0))
        cpu = dict.fromkeys(("target", "lower", "upper"), _millicores(cpu_seen, headroom))
        memory = dict.fromkeys(("target", "lower", "upper"), _mebibytes(mem_seen, headroom))
        basis = "single_sample"
    millicores, memory_mb = cpu["target"], memory["target"]
    return {
        "cpu_cores": millicores / 1000,
        "memory_mb": memory_mb,
        "headroom": headroom,
        "kubectl": (
            f"kubectl -n {namespace} set resources deployment/{name} --requests=cpu={millicores}m,memory={memory_mb}Mi"
        ),
        "basis": basis,
        "cpu": {bound: value / 1000 for bound, value in cpu.items()},
        "memory": memory,
        "history": {
            "samples": history.samples,
            "first_sample": _iso(history.first_sample),
            "last_sample": _iso(history.last_sample),
            "span_hours": round(history.span_hours, 1),
            "confidence": round(history.confidence, 2),
        },
    }


def _costs(current, recommended):
    return {
        "current_gbp_per_hour": round(current, 6),
        "recommended_gbp_per_hour": round(recommended, 6),
        "delta_gbp_per_hour": round(recommended - current, 6),
    }


def price(
    cluster: Mapping[str, Any],
    state: Mapping[str, Any],
    recommendation: Mapping[str, Any],
    cpu_memory_price_ratio: float = DEFAULT_CPU_MEMORY_PRICE_RATIO,
) -> dict[str, Any] | None:
    """What the deployment's requests cost now and after the recommendation, or None if unknown."""
    hourly = cluster.get("hourly_cost_gbp")
    cores = cluster.get("req_cpu_total") or 0
    gib = (cluster.get("req_mem_total") or 0) / MIB_PER_GIB
    # Requests in core-equivalents: a GiB-hour costs 1/ratio of a core-hour.
    weight = cores + gib / cpu_memory_price_ratio
    if hourly is None or not weight:
        return None
    per_core = hourly / weight
    per_gib = per_core / cpu_memory_price_ratio
    cpu_now, cpu_then = state["req_cpu"] * per_core, recommendation["cpu_cores"] * per_core
    memory_now = state.get("req_mem", 0) / MIB_PER_GIB * per_gib
    memory_then = recommendation["memory_mb"] / MIB_PER_GIB * per_gib
    current, recommended = cpu_now + memory_now, cpu_then + memory_then
    # The payload floors keep these finite; state stored before them might not, and a trigger
    # carrying Infinity or NaN is refused by a strict JSON agent.
    if not all(math.isfinite(v) for v in (per_core, per_gib, current, recommended, recommended - current)):
        return None
    return {
        "price_per_cpu_core_hour_gbp": round(per_core, 6),
        "price_per_memory_gib_hour_gbp": round(per_gib, 6),
        **_costs(current, recommended),
        "by_resource": {"cpu": _costs(cpu_now, cpu_then), "memory": _costs(memory_now, memory_then)},
        "monthly_delta_gbp": round((recommended - current) * HOURS_PER_MONTH, 2),
        "basis": (
            f"The cluster's £{hourly:g}/hour split over the {cores:g} CPU cores and {gib:g} GiB of memory "
            "requested in the namespace's latest cost payload, one core-hour costing as much as "
            f"{cpu_memory_price_ratio:g} GiB-hours (OpenCost's default on-demand ratio); a month is "
            f"{HOURS_PER_MONTH} hours."
        ),
    }
