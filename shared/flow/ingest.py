"""One ingest request, start to finish: store, evaluate, claim cooldowns, trigger, settle the claims."""

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.core.clock import iso_seconds, utc_now_iso
from shared.core.episodes import (
    APPLIED,
    CHANGED,
    DUE,
    ESCALATION,
    HELD,
    NO_CHANGE,
    RESOLVED,
    SNOOZE,
    SUPPRESSED,
    EpisodePolicy,
    Mirror,
    Screen,
    changes,
    screen,
    targets,
)
from shared.core.history import History
from shared.core.recommend import DEFAULT_CPU_MEMORY_PRICE_RATIO, price, recommend
from shared.core.rules import Thresholds, cooldown_remaining, has_risk
from shared.core.trigger import build_trigger
from shared.delivery.webhook import AgentWebhook, Delivery
from shared.store.repository import Claims, EpisodeItem, SavedPayload, StateRepository

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


def episode_block(place: EpisodeItem, changed: list[str]) -> dict[str, Any]:
    """A trigger item's `episode`: where it stands in its episode, and what is material."""
    return {
        "id": place.episode_id,
        "opened_at": iso_seconds(place.opened_at),
        "sequence": place.sequence,
        "notify": place.notify,
        "changed": changed,
    }


def mirror_after(
    item: dict[str, Any], place: EpisodeItem, before: Mirror | None, window: bool, now: float
) -> Mirror | None:
    """What the app hash keeps of the episode once `item` is delivered (None: the episode ended).

    `window`: the item opened a window (not an escalation); `now`: its claim's time.
    """
    if place.notify == RESOLVED:
        return None
    before = before or Mirror()
    same = before.id == place.episode_id
    cpu, memory = targets(item["recommendation"])
    return Mirror(
        id=place.episode_id,
        opened_at=place.opened_at,
        sequence=place.sequence,
        # The reminder clock: the last window's item (an escalation does not move it, as it
        # does not move the window).
        sent_at=now if window or not same else before.sent_at,
        rules=(before.rules if same else frozenset()) | {reason["rule"] for reason in item["reasons"]},
        req_cpu=item["state"].get("req_cpu"),
        req_mem=item["state"].get("req_mem"),
        cpu=cpu,
        memory=memory,
        snooze_until=place.until if place.decision == SNOOZE else None,
        no_change_until=place.until if place.decision == NO_CHANGE else None,
        reminder_every=place.reminder_every or None,
    )


@dataclass(frozen=True)
class Source:
    """What differs between the cost and the forecast ingest."""

    name: str  # the trigger's "source"
    save: Callable[[StateRepository, dict, float], SavedPayload]  # stores a loaded payload at a time
    gap: Callable[[dict, Thresholds], str | None]  # why a stored state cannot be evaluated
    evaluate: Callable[[dict, Thresholds], list[dict]]  # the reasons the rules fire on a stored state


@dataclass(frozen=True)
class IngestResult:
    """What one ingest did: the 201 body, and what the metrics and the request log read."""

    deployments: int  # in the payload
    triggered: list[str]  # sent to the agent: windows claimed, escalations, resolutions
    cooldown: list[str]  # fired, but held back by a running window
    stale: list[str]  # older than what is stored: not written
    not_evaluated: list[dict[str, str]]  # stored, but the rules could not run, and why
    firing: dict[str, list[dict[str, Any]]]  # deployment -> reasons, for every deployment whose rules fired
    delivery: Delivery | None = None  # when a trigger was sent
    reclaimed: tuple[str, ...] = ()  # sent over a claim an earlier request left unsettled: maybe a duplicate
    suppressed: list[str] = field(default_factory=list)  # fired, but held back by the reminder interval or a decision
    notified: dict[str, str] = field(default_factory=dict)  # deployment -> the notify of its item, for those sent

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
            "suppressed": self.suppressed,
            "stale": self.stale,
            "not_evaluated": self.not_evaluated,
            "delivery": self.delivery_status,
        }


@dataclass
class Evaluation:
    """What the rules made of a saved payload, and what the episodes make of the firing deployments."""

    firing: dict[str, list[dict]] = field(default_factory=dict)  # name -> reasons, those whose rules fire
    quiet: list[str] = field(default_factory=list)  # evaluated, and no rule fired
    not_evaluated: list[dict[str, str]] = field(default_factory=list)
    due: list[str] = field(default_factory=list)  # for the claim script to decide
    held: list[str] = field(default_factory=list)  # window running: `cooldown` for sure
    risky: set[str] = field(default_factory=set)  # of `firing`, those where a risk rule fired
    suppressed: list[str] = field(default_factory=list)  # reminder interval, decision or `applied`, for sure
    changed: dict[str, list[str]] = field(default_factory=dict)  # name -> what is material, when anything is
    recommendations: dict[str, dict] = field(default_factory=dict)  # worked out already, from a history read
    mirrors: dict[str, Mirror] = field(default_factory=dict)  # read after the claim, where the save sent none


def episode_mirror(name: str, saved: SavedPayload, found: Evaluation) -> Mirror:
    """The deployment's episode mirror, as the save or the read after the claim brought it (empty: none)."""
    return found.mirrors.get(name) or saved.mirror(name) or Mirror()


@dataclass
class Round:
    """One request's round of triggering: what it stored, evaluated and claimed, and the message built for that."""

    namespace: str
    request_id: str
    saved: SavedPayload
    found: Evaluation
    claims: Claims
    message: dict[str, Any] = field(default_factory=dict)  # the trigger, once built

    def __post_init__(self) -> None:
        self._windows = frozenset(self.claims.claimed)
        self._escalations = frozenset(self.claims.escalated)

    def opens_window(self, name: str) -> bool:
        """True when the deployment's item opened a cooldown window (not an escalation or a resolution)."""
        return name in self._windows

    def escalates(self, name: str) -> bool:
        """True when the deployment's item escalates a running window."""
        return name in self._escalations

    def mirror(self, name: str) -> Mirror:
        """The deployment's episode mirror before this request's item."""
        return episode_mirror(name, self.saved, self.found)

    @property
    def items(self) -> dict[str, dict[str, Any]]:
        """The message's items by deployment."""
        return {item["deployment"]: item for item in self.message["triggers"]}


@dataclass
class Aggregator:
    """The parts one ingest needs, built once per app."""

    repository: StateRepository
    webhook: AgentWebhook
    thresholds: Thresholds
    headroom: float
    cpu_memory_price_ratio: float = DEFAULT_CPU_MEMORY_PRICE_RATIO

    @property
    def episodes(self) -> EpisodePolicy:
        """The episode settings (the repository's: its scripts apply them)."""
        return self.repository.episodes

    def ingest(self, source: Source, payload: dict, request_id: str, now: float | None = None) -> IngestResult:
        """Store a loaded payload, trigger the agent for deployments that are due; return an IngestResult."""
        now = time.time() if now is None else now
        namespace = payload["namespace"]
        saved = source.save(self.repository, payload, now)
        found = self._evaluate(source, saved)
        self._screen(namespace, found, saved, now)
        resolutions = self._resolutions(found, saved, now)
        self._mark_quiet(namespace, found, saved, resolutions, now)
        if found.due:
            claims = self.repository.claim(namespace, found.due, found.risky, now, changed=found.changed)
        else:
            claims = Claims(now, 0.0)
        if resolutions:
            claims = self._resolve(namespace, claims, resolutions, now, request_id)
        sent = claims.sent
        outcome = None
        if sent:
            if claims.reclaimed:
                log.warning(
                    "sending again what an unsettled claim may have sent already",
                    extra={"request_id": request_id, "deployments": claims.reclaimed},
                )
            sending = Round(namespace, request_id, saved, found, claims)
            outcome = self._deliver(source, sending)
            self._settle(sending, outcome)
        suppressed = found.suppressed + claims.suppressed
        not_held = set(sent) | set(suppressed)
        return IngestResult(
            deployments=len(payload["deployments"]),
            triggered=sent,
            cooldown=[name for name in found.firing if name not in not_held],
            stale=saved.stale,
            not_evaluated=found.not_evaluated,
            firing=found.firing,
            delivery=outcome,
            reclaimed=tuple(claims.reclaimed),
            suppressed=suppressed,
            notified={name: claims.episodes[name].notify for name in sent if name in claims.episodes},
        )

    def _resolve(
        self, namespace: str, claims: Claims, resolutions: dict[str, str], now: float, request_id: str
    ) -> Claims:
        """Claim the resolved items of `resolutions` besides `claims`; with RESOLVED_NOTIFICATIONS off, end them now."""
        with self._given_back_on_failure(namespace, claims, request_id):
            resolved = self.repository.resolve(namespace, resolutions, now)
            if not self.episodes.resolved_notifications:
                if resolved.resolved:
                    self.repository.settle_delivered(namespace, resolved, mirrors=dict.fromkeys(resolved.resolved))
                return claims
        return claims.merge(resolved)

    def decide(
        self, namespace: str, name: str, episode_id: str, decision: str, until: float | None, note: str, now: float
    ) -> bool:
        """Record the agent's decision about the deployment's open episode; False when `episode_id` is not it."""
        repository = self.repository
        if not repository.decide(namespace, name, episode_id, decision, until, note, now):
            return False
        # The app hash's mirror lets ingest skip the claim; the decision above is what counts.
        mirror = repository.mirror(namespace, name)
        if decision == APPLIED:
            after = self.episodes.resolve_after_seconds
            repository.write_mirror(namespace, name, Mirror(blocked_until=now + after) if after else None)
        elif mirror.id == episode_id:
            if decision == SNOOZE:
                mirror = replace(mirror, snooze_until=until)
            else:
                mirror = replace(mirror, no_change_until=until, reminder_every=None if until is None else until - now)
            repository.write_mirror(namespace, name, mirror)
        return True

    def _evaluate(self, source: Source, saved: SavedPayload) -> Evaluation:
        """The reasons each stored deployment fires, those quiet, and those not evaluable."""
        found = Evaluation()
        for name, state in saved.states.items():
            gap = source.gap(state, self.thresholds)
            if gap:
                found.not_evaluated.append({"deployment": name, "why": gap})
                continue
            reasons = source.evaluate(state, self.thresholds)
            if reasons:
                found.firing[name] = reasons
            else:
                found.quiet.append(name)
        return found

    def _screen(self, namespace: str, found: Evaluation, saved: SavedPayload, now: float) -> None:
        """Sort the firing deployments into held for sure (no Redis asked) and due for the claim script."""
        # The hash's last_trigger shows a delivered window, and its episode mirror the reminder
        # clock and the decisions, without asking Redis; the claim script decides the rest,
        # seeing windows whose trigger is still in flight and decisions made since.
        policy = self.episodes
        needing_targets = []
        cooldown = policy.cooldown_seconds
        for name, reasons in found.firing.items():
            risky = has_risk(reasons)
            if not risky and cooldown_remaining(saved.states[name], now, cooldown):
                # The steady state, as screen() would say it, without making its callables for
                # each of thousands of deployments.
                found.held.append(name)
                continue
            if risky:
                found.risky.add(name)
            mirror = partial(episode_mirror, name, saved, found)

            def known(name=name):
                return self._targets(namespace, name, saved, found, saved.history(name))

            verdict = screen(mirror, reasons, risky, saved.states[name], now, policy, known)
            if verdict.needs_targets:
                needing_targets.append(name)
            self._sort(found, name, verdict)
        if needing_targets:
            # The targets alone can tell whether these are due, and their history did not come with
            # the state (written before its watch time): read it.
            histories = self.repository.histories(namespace, needing_targets)
            for name in needing_targets:
                found.suppressed.remove(name)
                mirror = partial(episode_mirror, name, saved, found)

                def read(name=name):
                    return self._targets(namespace, name, saved, found, histories[name])

                reasons = found.firing[name]
                self._sort(found, name, screen(mirror, reasons, False, saved.states[name], now, policy, read))

    @staticmethod
    def _sort(found: Evaluation, name: str, verdict: Screen) -> None:
        {DUE: found.due, HELD: found.held, SUPPRESSED: found.suppressed}[verdict.verdict].append(name)
        if verdict.changed:
            found.changed[name] = verdict.changed

    def _targets(self, namespace, name, saved, found, history):
        """The recommended targets from `history` (kept for the item), or None without one."""
        if history is None:
            return None
        recommendation = self._recommend(namespace, name, saved.states[name], history)
        found.recommendations[name] = recommendation
        return targets(recommendation)

    def _recommend(self, namespace, name, state, history):
        return recommend(namespace, name, state, self.headroom, history, self.thresholds.max_state_skew_seconds)

    def _resolutions(self, found: Evaluation, saved: SavedPayload, now: float) -> dict[str, str]:
        """{name: episode id} of the open episodes whose samples have been quiet long enough."""
        after = self.episodes.resolve_after_seconds
        resolutions = {}
        for name in found.quiet:
            mirror = saved.mirror(name)
            # The first quiet sample is the start of the count when none runs yet.
            if mirror and mirror.id and now - saved.quiet.get(name, now) >= after:
                resolutions[name] = mirror.id
        return resolutions

    def _mark_quiet(
        self, namespace: str, found: Evaluation, saved: SavedPayload, resolving: dict[str, str], now: float
    ) -> None:
        """Start the quiet count of open episodes gone quiet, stop it where rules fire again."""
        start = [
            name
            for name in found.quiet
            if name not in saved.quiet
            and name not in resolving
            and (name in saved.unfetched or (saved.mirror(name) or Mirror()).id)
        ]
        stop = [name for name in found.firing if name in saved.quiet]
        if start or stop:
            self.repository.mark_quiet(namespace, start, stop, now)

    def _deliver(self, source: Source, sending: Round) -> Delivery:
        """Build the trigger for what was claimed (kept in `sending`) and send it; return how that went.

        Whatever stops us before an outcome gives the claims back first, if Redis still answers.
        """
        namespace, saved, found, claims = sending.namespace, sending.saved, sending.found, sending.claims
        sent = claims.sent
        with self._given_back_on_failure(namespace, claims, sending.request_id):
            # Read here, for the few deployments triggered that the save did not bring a history for.
            unread = [n for n in sent if n not in found.recommendations and n not in claims.resolved]
            # An escalation inside a window: its episode's mirror did not come with the state.
            unmirrored = [n for n in sent if n in saved.unfetched]
            histories, found.mirrors = self.repository.histories_and_mirrors(namespace, unread, unmirrored)
            items = [self._item(sending, name, histories.get(name)) for name in sent]
            sending.message = build_trigger(source.name, namespace, saved.cluster, items)
            return self.webhook.deliver(sending.message, sending.request_id)

    @contextlib.contextmanager
    def _given_back_on_failure(self, namespace: str, claims: Claims, request_id: str) -> Iterator[None]:
        """Whatever stops the request before an outcome gives its claims back, if Redis still answers."""
        try:
            yield
        except (RedisTimeoutError, RedisConnectionError):
            # Redis did not answer within the request's Redis time: a release would wait out the
            # same stall again. The claims free themselves when their lease ends.
            log.warning("claims left to their lease: redis did not answer", extra={"request_id": request_id})
            raise
        except BaseException:
            # Whatever else stops us (Redis refusing the history read, a bug, the worker being told
            # to exit) must not leave windows claimed with nothing sent: give them back, so a
            # resend triggers.
            self._release_after_failure(namespace, claims, request_id)
            raise

    def _settle(self, sending: Round, delivery: Delivery) -> None:
        """Keep a delivered trigger's claims for their window and note its items in their episodes;
        or give a failed one's back and keep its record."""
        namespace, claims = sending.namespace, sending.claims
        if not delivery.ok:
            record = failed_record(sending.message, delivery, sending.request_id)
            self.repository.settle_failed(namespace, claims, record)
            return
        items = sending.items
        mirrors = {
            name: mirror_after(
                item, claims.episodes[name], sending.mirror(name), sending.opens_window(name), claims.now
            )
            for name, item in items.items()
        }
        reasons = {name: item["reasons"] for name, item in items.items()}
        self.repository.settle_delivered(namespace, claims, reasons, mirrors)

    def _release_after_failure(self, namespace: str, claims: Claims, request_id: str) -> None:
        """Give back the claims of a request that is failing; the original error is the one to report."""
        try:
            self.repository.release(namespace, claims)
        except Exception:
            log.exception("claims not released; they expire with their lease", extra={"request_id": request_id})

    def _item(self, sending: Round, name: str, history: History | None) -> dict[str, Any]:
        """One entry of the trigger, as TriggerItemSchema names its fields: why, the stored state, what to do
        about it at what price, and its episode."""
        found = sending.found
        state = sending.saved.states[name]
        place = sending.claims.episodes[name]
        if place.notify == RESOLVED:
            reasons, recommendation, cost = [], None, None
        else:
            reasons = found.firing[name]
            recommendation = found.recommendations.get(name) or self._recommend(sending.namespace, name, state, history)
            cost = price(sending.saved.cluster, state, recommendation, self.cpu_memory_price_ratio)
        changed = found.changed.get(name, []) if place.notify in (CHANGED, ESCALATION) else []
        if name in found.mirrors and place.notify in (CHANGED, ESCALATION):
            changed = changes(found.mirrors[name], reasons, state, *targets(recommendation))
        item = {
            "id": sending.claims.ids[name],
            "deployment": name,
            "reasons": reasons,
            "state": state,
            "recommendation": recommendation,
            "cost": cost,
            "episode": episode_block(place, changed),
        }
        if sending.escalates(name):
            item["escalation"] = True
        return item
