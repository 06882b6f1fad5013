"""Threshold rules: pure functions from a deployment's stored state to the reasons it should be looked at.

Each reason is a dict (`rule`, `value`, `threshold`) that goes into the agent trigger as it is.
The comparisons are written exactly as the spec writes them, strict `>` and `<`, so a value
sitting on a threshold never fires.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from shared.core.setting import Setting, check_declared, declared

CPU_WASTE = "cpu_waste"
CPU_UTILISATION = "cpu_utilisation"
PREDICTED_CPU_SPIKE = "predicted_cpu_spike"
SAFE_DOWNSCALE = "safe_downscale"
MEMORY_UTILISATION = "memory_utilisation"
PREDICTED_MEMORY_SPIKE = "predicted_memory_spike"

# A risk reason may escalate a window that a waste reason opened; never the other way round.
RISK_RULES = frozenset({CPU_UTILISATION, PREDICTED_CPU_SPIKE, MEMORY_UTILISATION, PREDICTED_MEMORY_SPIKE})

# Why a stored deployment had no rule evaluated (the 201 body's `not_evaluated`).
NO_COST_STATE = "no_cost_state"
COST_STATE_TOO_OLD = "cost_state_too_old"
ZERO_REQUEST = "zero_request"


@dataclass(frozen=True)
class Thresholds:
    """The rule settings: the spec's five ratios, the memory rules and the cost/forecast skew limit.

    Each field declares the variable that sets it, with its default and bounds: a new rule's
    threshold is added here and nowhere else (shared.runtime.settings reads it from the field).
    """

    # Waste is a fraction of the request: at 1 or above the rules could never fire.
    cpu_waste: float = declared(
        Setting("CPU_WASTE_THRESHOLD", "waste above this fires cpu_waste", 0.5, float, 0, 1, below_high=True)
    )
    cpu_utilisation: float = declared(
        Setting("CPU_UTILISATION_THRESHOLD", "utilisation above this fires cpu_utilisation", 0.85, float, 0, 100)
    )
    predicted_spike_ratio: float = declared(
        Setting("PREDICTED_SPIKE_RATIO", "peak above this x request fires predicted_cpu_spike", 0.9, float, 0, 100)
    )
    downscale_waste: float = declared(
        Setting("SAFE_DOWNSCALE_WASTE_THRESHOLD", "safe_downscale's waste bar", 0.4, float, 0, 1, below_high=True)
    )
    downscale_peak_ratio: float = declared(
        Setting("SAFE_DOWNSCALE_PEAK_RATIO", "safe_downscale's peak bar, x request", 0.6, float, 0, 100)
    )
    memory_utilisation: float = declared(
        Setting("MEMORY_UTILISATION_THRESHOLD", "memory use above this fires memory_utilisation", 0.85, float, 0, 100)
    )
    predicted_memory_spike_ratio: float = declared(
        Setting(
            "PREDICTED_MEMORY_SPIKE_RATIO",
            "memory peak above this x request fires predicted_memory_spike",
            0.9,
            float,
            0,
            100,
        )
    )
    max_state_skew_seconds: float = declared(
        Setting("MAX_STATE_SKEW_SECONDS", "most seconds between forecast and cost data", 3600, float, 0, 30 * 24 * 3600)
    )
    # Off by default: the spec's behaviour has CPU rules only.
    memory_rules: bool = declared(Setting("MEMORY_RULES", "turns on the two memory rules", False, bool))

    def __post_init__(self):
        check_declared(self)


def _reason(rule, value, threshold, **extra):
    # Rounded for the reader of the trigger; the decision was made on the exact value.
    return {"rule": rule, "value": round(value, 6), "threshold": threshold, **extra}


def _cpu_request(state):
    """The requested CPU, or None when there is no cost state or it is zero (no ratio exists)."""
    req_cpu = state.get("req_cpu")
    if req_cpu is None or state.get("usage_cpu_curr") is None or req_cpu <= 0:
        return None
    return req_cpu


def cost_gap(state: Mapping[str, Any], thresholds: Thresholds) -> str | None:
    """Why the cost rules cannot be evaluated on this state, or None when they can."""
    return ZERO_REQUEST if _cpu_request(state) is None else None


def forecast_gap(state: Mapping[str, Any], thresholds: Thresholds) -> str | None:
    """Why the forecast rules cannot be evaluated on this merged state, or None when they can."""
    if state.get("req_cpu") is None or state.get("usage_cpu_curr") is None:
        return NO_COST_STATE
    # A forecast judged against cost data from another day would fire on numbers that no longer hold.
    skew = abs(state.get("forecast_timestamp", 0) - state.get("cost_timestamp", 0))
    if skew > thresholds.max_state_skew_seconds:
        return COST_STATE_TOO_OLD
    if state["req_cpu"] <= 0:
        return ZERO_REQUEST
    return None


def evaluate_cost(state: Mapping[str, Any], thresholds: Thresholds) -> list[dict[str, Any]]:
    """Reasons the cost rules fire for one deployment's state (empty when none do)."""
    req_cpu = _cpu_request(state)
    if req_cpu is None:
        return []
    usage = state["usage_cpu_curr"]
    waste = (req_cpu - usage) / req_cpu
    utilisation = usage / req_cpu
    reasons = []
    if waste > thresholds.cpu_waste:
        reasons.append(_reason(CPU_WASTE, waste, thresholds.cpu_waste))
    if utilisation > thresholds.cpu_utilisation:
        reasons.append(_reason(CPU_UTILISATION, utilisation, thresholds.cpu_utilisation))
    req_mem, usage_mem = state.get("req_mem"), state.get("usage_mem_curr")
    # Only with memory rules on and both figures known (a zero request has no ratio).
    if (
        thresholds.memory_rules
        and req_mem
        and usage_mem is not None
        and usage_mem / req_mem > thresholds.memory_utilisation
    ):
        reasons.append(_reason(MEMORY_UTILISATION, usage_mem / req_mem, thresholds.memory_utilisation))
    return reasons


def evaluate_forecast(state: Mapping[str, Any], thresholds: Thresholds) -> list[dict[str, Any]]:
    """Reasons the forecast rules fire on the merged cost and forecast state of one deployment."""
    req_cpu = _cpu_request(state)
    peak = state.get("pred_cpu_peak")
    if req_cpu is None or peak is None:
        return []
    waste = (req_cpu - state["usage_cpu_curr"]) / req_cpu
    reasons = []
    if peak > thresholds.predicted_spike_ratio * req_cpu:
        reasons.append(_reason(PREDICTED_CPU_SPIKE, peak / req_cpu, thresholds.predicted_spike_ratio))
    if waste > thresholds.downscale_waste and peak < thresholds.downscale_peak_ratio * req_cpu:
        reasons.append(
            _reason(
                SAFE_DOWNSCALE,
                waste,
                thresholds.downscale_waste,
                peak_ratio=round(peak / req_cpu, 6),
                peak_threshold=thresholds.downscale_peak_ratio,
            )
        )
    req_mem, mem_peak = state.get("req_mem"), state.get("pred_mem_peak")
    # Only with memory rules on and both figures known (a zero request has no ratio).
    if (
        thresholds.memory_rules
        and req_mem
        and mem_peak is not None
        and mem_peak > thresholds.predicted_memory_spike_ratio * req_mem
    ):
        reasons.append(_reason(PREDICTED_MEMORY_SPIKE, mem_peak / req_mem, thresholds.predicted_memory_spike_ratio))
    return reasons


def has_risk(reasons: Iterable[Mapping[str, Any]]) -> bool:
    """True when any reason is a risk (not waste) rule."""
    return any(reason["rule"] in RISK_RULES for reason in reasons)


def cooldown_remaining(state: Mapping[str, Any], now: float, cooldown_seconds: float) -> float:
    """Seconds left in the window opened by the state's last delivered trigger (0 when none runs)."""
    last = state.get("last_trigger")
    return 0 if last is None else max(0.0, last + cooldown_seconds - now)
