"""One ingest request, start to finish: store, evaluate, claim cooldowns, trigger, settle the claims."""

import time
from collections.abc import Callable
from dataclasses import dataclass

from shared.recommend import price, recommend
from shared.rules import (
    Thresholds,
    cooldown_remaining,
    cost_gap,
    evaluate_cost,
    evaluate_forecast,
    forecast_gap,
    has_risk,
)
from shared.state import StateRepository
from shared.webhook import AgentWebhook, build_trigger, utc_now_iso


def failed_record(message, delivery, request_id):
    """What triggers:{namespace}:failed keeps of a failed delivery: enough to send it again as it was."""
    return {
        "message": message,
        "error": delivery.error,
        "failed_at": utc_now_iso(),
        "webhook_id": delivery.webhook_id,
        "request_id": request_id,
    }


@dataclass(frozen=True)
class Source:
    """What differs between the cost and the forecast ingest."""

    name: str  # the trigger's "source"
    save: Callable  # StateRepository method storing a loaded payload
    gap: Callable  # rule function: why a state cannot be evaluated, or None
    evaluate: Callable  # rule function over one deployment's stored state


COST = Source("cost", StateRepository.save_cost, cost_gap, evaluate_cost)
FORECAST = Source("forecast", StateRepository.save_forecast, forecast_gap, evaluate_forecast)


@dataclass
class IngestResult:
    """What one ingest did: the 201 body, and the details metrics and logs want."""

    body: dict
    firing: dict  # deployment -> reasons, for every deployment whose rules fired
    cooldown: list  # deployments held back by a running window
    delivery: object = None  # the webhook Delivery, when a trigger was sent


@dataclass
class Aggregator:
    """The parts one ingest needs, built once per app."""

    repository: StateRepository
    webhook: AgentWebhook
    thresholds: Thresholds
    headroom: float

    def ingest(self, source, payload, request_id, now=None):
        """Store a loaded payload, trigger the agent for deployments that are due; return an IngestResult."""
        now = time.time() if now is None else now
        namespace = payload["namespace"]
        cooldown = self.repository.cooldown_seconds
        saved = source.save(self.repository, payload)

        firing, not_evaluated = {}, []
        for name, state in saved.states.items():
            gap = source.gap(state, self.thresholds)
            if gap:
                not_evaluated.append({"deployment": name, "why": gap})
                continue
            reasons = source.evaluate(state, self.thresholds)
            if reasons:
                firing[name] = reasons

        # The hash's last_trigger shows a running window without asking Redis to refuse a claim;
        # inside it, only a risk rule may still get through, as an escalation.
        windows = {name: cooldown_remaining(saved.states[name], now, cooldown) for name in firing}
        candidates = [name for name in firing if not windows[name]]
        escalations = {name: windows[name] for name in firing if windows[name] and has_risk(firing[name])}
        claimed, escalated = self.repository.claim(namespace, candidates, escalations, now)

        sent, escalated_names = claimed + escalated, set(escalated)
        delivery, outcome = "none", None
        if sent:
            message = build_trigger(
                source.name,
                namespace,
                saved.cluster,
                [self._item(namespace, name, firing[name], saved, name in escalated_names) for name in sent],
            )
            outcome = self.webhook.deliver(message, request_id)
            if outcome.ok:
                risk = [name for name in claimed if has_risk(firing[name])]
                self.repository.settle_delivered(namespace, claimed, risk, now)
                delivery = "ok"
            else:
                record = failed_record(message, outcome, request_id)
                self.repository.settle_failed(namespace, claimed, escalated, now, record)
                delivery = "failed"
        sent_names = set(sent)
        held = [name for name in firing if name not in sent_names]
        body = {
            "status": "accepted",
            "deployments": len(payload["deployments"]),
            "triggered": sent,
            "cooldown": held,
            "stale": saved.stale,
            "not_evaluated": not_evaluated,
            "delivery": delivery,
        }
        return IngestResult(body, firing, held, outcome)

    def _item(self, namespace, name, reasons, saved, escalation):
        """One entry of the trigger: why, the stored state, and what to do about it at what price."""
        state = saved.states[name]
        recommendation = recommend(namespace, name, state, self.headroom)
        item = {
            "deployment": name,
            "reasons": reasons,
            "state": state,
            "recommendation": recommendation,
            "cost": price(saved.cluster, state, recommendation),
        }
        if escalation:
            item["escalation"] = True
        return item
