"""One ingest request, start to finish: store, evaluate, claim cooldowns, trigger, settle the claims."""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.recommend import DEFAULT_CPU_MEMORY_PRICE_RATIO, price, recommend
from shared.rules import Thresholds, cooldown_remaining, has_risk
from shared.state import Claims, SavedPayload, StateRepository
from shared.webhook import AgentWebhook, Delivery, build_trigger, utc_now_iso

log = logging.getLogger("aggregator")


def failed_record(message: dict[str, Any], delivery: Delivery, request_id: str | None) -> dict[str, Any]:
    """What triggers:{namespace}:failed keeps of a failed delivery: enough to send it again as it was."""
    record = {
        "message": message,
        "error": delivery.error,
        "failed_at": utc_now_iso(),
        "webhook_id": delivery.webhook_id,
        "request_id": request_id,
    }
    if delivery.location is not None:
        record["location"] = delivery.location  # where a redirect pointed; never followed
    return record


@dataclass(frozen=True)
class Source:
    """What differs between the cost and the forecast ingest."""

    name: str  # the trigger's "source"
    save: Callable[[StateRepository, dict], SavedPayload]  # stores a loaded payload
    gap: Callable[[dict, Thresholds], str | None]  # why a stored state cannot be evaluated
    evaluate: Callable[[dict, Thresholds], list[dict]]  # the reasons the rules fire on a stored state


@dataclass(frozen=True)
class IngestResult:
    """What one ingest did: the 201 body, and what the metrics and the request log read."""

    deployments: int  # in the payload
    triggered: list[str]  # sent to the agent: windows claimed, then escalations
    cooldown: list[str]  # fired, but held back by a running window
    stale: list[str]  # older than what is stored: not written
    not_evaluated: list[dict[str, str]]  # stored, but the rules could not run, and why
    firing: dict[str, list[dict[str, Any]]]  # deployment -> reasons, for every deployment whose rules fired
    delivery: Delivery | None = None  # when a trigger was sent
    reclaimed: tuple[str, ...] = ()  # sent over a claim an earlier request left unsettled: maybe a duplicate

    @property
    def delivery_status(self) -> str:
        """The 201 body's "delivery": none sent, ok or failed."""
        if self.delivery is None:
            return "none"
        return "ok" if self.delivery.ok else "failed"

    @property
    def body(self) -> dict[str, Any]:
        """The 201 body."""
        return {
            "status": "accepted",
            "deployments": self.deployments,
            "triggered": self.triggered,
            "cooldown": self.cooldown,
            "stale": self.stale,
            "not_evaluated": self.not_evaluated,
            "delivery": self.delivery_status,
        }


@dataclass
class Aggregator:
    """The parts one ingest needs, built once per app."""

    repository: StateRepository
    webhook: AgentWebhook
    thresholds: Thresholds
    headroom: float
    cpu_memory_price_ratio: float = DEFAULT_CPU_MEMORY_PRICE_RATIO

    def ingest(self, source: Source, payload: dict, request_id: str, now: float | None = None) -> IngestResult:
        """Store a loaded payload, trigger the agent for deployments that are due; return an IngestResult."""
        now = time.time() if now is None else now
        namespace = payload["namespace"]
        saved = source.save(self.repository, payload)
        firing, not_evaluated = self._evaluate(source, saved)
        claims = self._claim(namespace, firing, saved, now)
        sent = claims.sent
        outcome = None
        if sent:
            if claims.reclaimed:
                log.warning(
                    "sending again what an unsettled claim may have sent already",
                    extra={"request_id": request_id, "deployments": claims.reclaimed},
                )
            message, outcome = self._deliver(source, namespace, saved, firing, claims, request_id)
            self._settle(namespace, claims, message, outcome, request_id)
        sent_names = set(sent)
        return IngestResult(
            deployments=len(payload["deployments"]),
            triggered=sent,
            cooldown=[name for name in firing if name not in sent_names],
            stale=saved.stale,
            not_evaluated=not_evaluated,
            firing=firing,
            delivery=outcome,
            reclaimed=tuple(claims.reclaimed),
        )

    def _evaluate(self, source: Source, saved: SavedPayload) -> tuple[dict[str, list[dict]], list[dict[str, str]]]:
        """The reasons each stored deployment fires ({name: reasons}, only those that fire), and those not evaluable."""
        firing, not_evaluated = {}, []
        for name, state in saved.states.items():
            gap = source.gap(state, self.thresholds)
            if gap:
                not_evaluated.append({"deployment": name, "why": gap})
                continue
            reasons = source.evaluate(state, self.thresholds)
            if reasons:
                firing[name] = reasons
        return firing, not_evaluated

    def _claim(self, namespace: str, firing: dict[str, list[dict]], saved: SavedPayload, now: float) -> Claims:
        """Claim the cooldown windows of the firing deployments that are due."""
        # The hash's last_trigger shows a delivered window without asking Redis; inside it only a risk
        # rule may still get through, as an escalation. The rest (no window seen, or a risk) go to
        # the claim script, which also sees windows whose trigger is still in flight.
        cooldown = self.repository.cooldown_seconds
        risky = {name for name, reasons in firing.items() if has_risk(reasons)}
        due = [name for name in firing if name in risky or not cooldown_remaining(saved.states[name], now, cooldown)]
        return self.repository.claim(namespace, due, risky, now) if due else Claims(now, 0.0)

    def _deliver(
        self,
        source: Source,
        namespace: str,
        saved: SavedPayload,
        firing: dict[str, list[dict]],
        claims: Claims,
        request_id: str,
    ) -> tuple[dict, Delivery]:
        """Build the trigger for what was claimed and send it; return (message, outcome).

        Whatever stops us before an outcome gives the claims back first, if Redis still answers.
        """
        sent, escalated_names = claims.sent, set(claims.escalated)
        try:
            # Read here, for the few deployments triggered, so the storing script stays lean.
            histories = self.repository.histories(namespace, sent)
            message = build_trigger(
                source.name,
                namespace,
                saved.cluster,
                [
                    self._item(
                        namespace, name, firing[name], saved, histories[name], claims.ids[name], name in escalated_names
                    )
                    for name in sent
                ],
            )
            return message, self.webhook.deliver(message, request_id)
        except (RedisTimeoutError, RedisConnectionError):
            # Redis did not answer within the request's Redis time: a release would wait out the
            # same stall again. The claims free themselves when their lease ends.
            log.warning("claims left to their lease: redis did not answer", extra={"request_id": request_id})
            raise
        except BaseException:
            # Whatever else stops us before an outcome (Redis refusing the history read, a bug, the
            # worker being told to exit) must not leave windows claimed with nothing sent: give
            # them back, so a resend triggers.
            self._release_after_failure(namespace, claims, request_id)
            raise

    def _settle(self, namespace: str, claims: Claims, message: dict, outcome: Delivery, request_id: str) -> None:
        """Keep a delivered trigger's claims for their window; or give a failed one's back and keep its record."""
        if outcome.ok:
            self.repository.settle_delivered(namespace, claims)
        else:
            record = failed_record(message, outcome, request_id)
            self.repository.settle_failed(namespace, claims, record)

    def _release_after_failure(self, namespace: str, claims: Claims, request_id: str) -> None:
        """Give back the claims of a request that is failing; the original error is the one to report."""
        try:
            self.repository.release(namespace, claims)
        except Exception:
            log.exception("claims not released; they expire with their lease", extra={"request_id": request_id})

    def _item(self, namespace, name, reasons, saved, history, item_id, escalation):
        """One entry of the trigger: why, the stored state, and what to do about it at what price."""
        state = saved.states[name]
        skew = self.thresholds.max_state_skew_seconds
        recommendation = recommend(namespace, name, state, self.headroom, history, skew)
        item = {
            "id": item_id,
            "deployment": name,
            "reasons": reasons,
            "state": state,
            "recommendation": recommendation,
            "cost": price(saved.cluster, state, recommendation, self.cpu_memory_price_ratio),
        }
        if escalation:
            item["escalation"] = True
        return item
