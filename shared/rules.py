"""Threshold rules: pure functions from a deployment's stored state to the reasons it should be looked at.

Each reason is a dict (`rule`, `value`, `threshold`) that goes into the agent trigger as it is.
The comparisons are written exactly as the spec writes them, strict `>` and `<`, so a value
sitting on a threshold never fires.
"""

import math
from dataclasses import dataclass, fields

CPU_WASTE = "cpu_waste"
CPU_UTILISATION = "cpu_utilisation"
PREDICTED_CPU_SPIKE = "predicted_cpu_spike"
SAFE_DOWNSCALE = "safe_downscale"


@dataclass(frozen=True)
class Thresholds:
    """The five numbers of the spec; ratios of the requested CPU."""

    cpu_waste: float = 0.5
    cpu_utilisation: float = 0.85
    predicted_spike_ratio: float = 0.9
    downscale_waste: float = 0.4
    downscale_peak_ratio: float = 0.6

    def __post_init__(self):
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"threshold {field.name} must be a finite number, got {value!r}")
            if value < 0:
                raise ValueError(f"threshold {field.name} must not be negative, got {value!r}")
        # Waste is a fraction of the request: at 1 or above the rule could never fire.
        for name in ("cpu_waste", "downscale_waste"):
            if getattr(self, name) >= 1:
                raise ValueError(f"threshold {name} must be below 1, got {getattr(self, name)!r}")


def _reason(rule, value, threshold, **extra):
    # Rounded for the reader of the trigger; the decision was made on the exact value.
    return {"rule": rule, "value": round(value, 6), "threshold": threshold, **extra}


def _cpu_request(state):
    """The requested CPU, or None when there is no cost state or it is zero (no ratio exists)."""
    req_cpu = state.get("req_cpu")
    if req_cpu is None or state.get("usage_cpu_curr") is None or req_cpu <= 0:
        return None
    return req_cpu


def evaluate_cost(state, thresholds):
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
    return reasons


def evaluate_forecast(state, thresholds):
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
    return reasons


def cooldown_running(state, now, cooldown_seconds):
    """True when the state's last delivered trigger is still inside its cooldown window."""
    last = state.get("last_trigger")
    return last is not None and now < last + cooldown_seconds
