"""A rightsizing recommendation and its price for one deployment: pure functions over stored state.

The recommendation follows the Kubernetes VPA recommender's idea: the highest CPU and memory
seen or forecast, plus a safety margin (headroom). The price spreads the cluster's hourly cost
over the CPU cores requested in the namespace's latest cost payload; CPU is all we can price,
since the payloads carry no VM shapes.
"""

import math

MIN_CPU_CORES = 0.01
MIN_MEMORY_MB = 64


def _ceil(value):
    # Rounding to 9 places first keeps float noise (460.00000000000006) from adding a whole unit.
    return math.ceil(round(value, 9))


def recommend(namespace, name, state, headroom):
    """The recommended CPU and memory requests for one deployment, with a kubectl command to apply them."""
    cpu_seen = max(state["usage_cpu_curr"], state.get("pred_cpu_peak", 0))
    mem_seen = max(state.get("usage_mem_curr", 0), state.get("pred_mem_peak", 0))
    millicores = max(round(MIN_CPU_CORES * 1000), _ceil(cpu_seen * (1 + headroom) * 1000))
    memory_mb = max(MIN_MEMORY_MB, _ceil(mem_seen * (1 + headroom)))
    return {
        "cpu_cores": millicores / 1000,
        "memory_mb": memory_mb,
        "headroom": headroom,
        "kubectl": (
            f"kubectl -n {namespace} set resources deployment/{name} --requests=cpu={millicores}m,memory={memory_mb}Mi"
        ),
    }


def price(cluster, state, recommendation):
    """What the deployment's CPU request costs now and after the recommendation, or None if unknown."""
    hourly = cluster.get("hourly_cost_gbp")
    requested = cluster.get("req_cpu_total")
    if hourly is None or not requested:
        return None
    per_core = hourly / requested
    current = state["req_cpu"] * per_core
    recommended = recommendation["cpu_cores"] * per_core
    # The payload floors keep these finite; state stored before them might not, and a trigger
    # carrying Infinity or NaN is refused by a strict JSON agent.
    if not all(math.isfinite(v) for v in (per_core, current, recommended, recommended - current)):
        return None
    return {
        "price_per_cpu_core_hour_gbp": round(per_core, 6),
        "current_gbp_per_hour": round(current, 6),
        "recommended_gbp_per_hour": round(recommended, 6),
        "delta_gbp_per_hour": round(recommended - current, 6),
        "basis": (
            f"The cluster's £{hourly:g}/hour spread over the {requested:g} CPU cores requested in the "
            "namespace's latest cost payload; memory is not priced, as no VM shapes are known."
        ),
    }
