"""One ingest request, start to finish: store, evaluate, claim cooldowns, trigger, settle the claims."""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from shared.rules import Thresholds, cooldown_running, evaluate_cost, evaluate_forecast
from shared.state import StateRepository
from shared.webhook import AgentWebhook, build_trigger

log = logging.getLogger("aggregator.ingest")


@dataclass(frozen=True)
class Source:
    """What differs between the cost and the forecast ingest."""

    name: str  # the trigger's "source"
    save: Callable  # StateRepository method storing a loaded payload
    evaluate: Callable  # rule function over one deployment's stored state


COST = Source("cost", StateRepository.save_cost, evaluate_cost)
FORECAST = Source("forecast", StateRepository.save_forecast, evaluate_forecast)


@dataclass
class Aggregator:
    """The parts one ingest needs, built once per app."""

    repository: StateRepository
    webhook: AgentWebhook
    thresholds: Thresholds

    def ingest(self, source, payload, request_id, now=None):
        """Store a loaded payload, trigger the agent for deployments that are due, return the 201 body."""
        now = time.time() if now is None else now
        namespace = payload["namespace"]
        saved = source.save(self.repository, payload)
        firing = {}
        for name, state in saved.states.items():
            reasons = source.evaluate(state, self.thresholds)
            if reasons:
                firing[name] = reasons
        # The hash's last_trigger shows a running window without asking Redis to refuse a claim.
        held = [name for name in firing if cooldown_running(saved.states[name], now, self.repository.cooldown_seconds)]
        held_now = set(held)
        candidates = [name for name in firing if name not in held_now]
        claimed = self.repository.claim_cooldowns(namespace, candidates, now)
        won = set(claimed)
        held += [name for name in candidates if name not in won]
        delivery = "none"
        if claimed:
            message = build_trigger(
                source.name, namespace, saved.cluster, {n: firing[n] for n in claimed}, saved.states
            )
            outcome = self.webhook.deliver(message, request_id)
            if outcome.ok:
                self.repository.record_delivery(namespace, claimed, now)
                delivery = "ok"
            else:
                self.repository.release_cooldowns(namespace, claimed, now)
                delivery = "failed"
        return {
            "status": "accepted",
            "deployments": len(payload["deployments"]),
            "triggered": claimed,
            "cooldown": held,
            "stale": saved.stale,
            "delivery": delivery,
        }
