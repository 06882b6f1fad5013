"""Episodes: one deployment's run of firing, and whether its next firing is news for the agent.

Pure functions and records (over shared.core.rules), no Redis: the claim script (shared/store/) decides atomically what
goes out; what is here tells it whether something material changed, and screens out, before any
claim, the deployments that are held back for sure, from what the app hash keeps of the episode
(the "mirror", written with each settle and decision).
"""

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.core.rules import cooldown_remaining
from shared.core.setting import Setting, check_declared, declared

FIRST, CHANGED, REMINDER, ESCALATION, RESOLVED = "first", "changed", "reminder", "escalation", "resolved"
NOTIFY_KINDS = (FIRST, CHANGED, REMINDER, ESCALATION, RESOLVED)
SNOOZE, NO_CHANGE, APPLIED = "snooze", "no_change", "applied"
DECISIONS = (SNOOZE, NO_CHANGE, APPLIED)
# `changed` lists what is material, in this order.
REASONS, REQUESTS, CPU, MEMORY = "reasons", "requests", "cpu", "memory"
# Material: more than 10 % (the VPA updater's and CAST AI's bar for acting on a recommendation),
# and for the recommended targets at least a tenth of a core or 100 MiB, so that small
# deployments do not flap on rounding.
MATERIAL_FRACTION = 0.10
MIN_CPU_CHANGE_CORES = 0.1
MIN_MEMORY_CHANGE_MB = 100
# The longest any hold may last: a decision's `until`, the reminder interval.
MAX_HOLD_SECONDS = 30 * 24 * 3600
DEFAULT_NO_CHANGE_SECONDS = 7 * 24 * 3600

# What screen() says of a firing deployment before any claim.
HELD, SUPPRESSED, DUE = "cooldown", "suppressed", "due"


# At least one second, so two claims of one key can never carry the same value.
COOLDOWN_SECONDS = Setting("COOLDOWN_SECONDS", "per-deployment trigger cooldown", 1800, int, 1, 7 * 24 * 3600)
# Empty: the cooldown's value, the spec's behaviour (a firing deployment goes again each window).
# Its lowest value is the cooldown, known only when both are read.
REMINDER_SECONDS = Setting(
    "REMINDER_SECONDS", "the least seconds between reminders of an unchanged episode", "", int, high=MAX_HOLD_SECONDS
)


@dataclass(frozen=True)
class EpisodePolicy:
    """The episode settings: reminder interval, resolution, and how long idle state is kept.

    Every field but reminder_seconds declares the variable that sets it; REMINDER_SECONDS, whose
    lowest value is the cooldown, is declared above.
    """

    cooldown_seconds: int = declared(COOLDOWN_SECONDS)
    reminder_seconds: int = COOLDOWN_SECONDS.default
    resolve_after_seconds: int = declared(
        Setting(
            "RESOLVE_AFTER_SECONDS", "quiet seconds after which an episode resolves", 3600, int, 0, MAX_HOLD_SECONDS
        )
    )
    resolved_notifications: bool = declared(
        Setting("RESOLVED_NOTIFICATIONS", "send an episode's resolved item", True, bool)
    )
    # At least an hour, so that an episode outlives the samples that resolve it.
    state_ttl_seconds: int = declared(
        Setting("STATE_TTL_SECONDS", "seconds an unwritten app hash lives", 8 * 24 * 3600, int, 3600, 365 * 24 * 3600)
    )

    def __post_init__(self):
        check_declared(self)
        if not self.cooldown_seconds <= self.reminder_seconds <= MAX_HOLD_SECONDS:
            raise ValueError("reminder_seconds must be at least the cooldown and at most 30 days")

    @property
    def episode_ttl_seconds(self) -> int:
        """How long an episode outlives its last write: the state's lifetime after the longest hold."""
        return self.state_ttl_seconds + MAX_HOLD_SECONDS


@dataclass(frozen=True)
class Mirror:
    """What the app hash keeps of the deployment's episode (field `episode`, JSON), for the save step."""

    id: str | None = None  # the open episode, None when none is open
    opened_at: float | None = None
    sequence: int = 0  # of the last item sent
    sent_at: float | None = None  # when the last item was sent
    rules: frozenset[str] = frozenset()  # every rule an item of the episode carried
    req_cpu: float | None = None  # the last item's requests
    req_mem: float | None = None
    cpu: float | None = None  # the last item's recommended targets (cores, MiB)
    memory: float | None = None
    snooze_until: float | None = None
    no_change_until: float | None = None
    reminder_every: float | None = None  # after `no_change`: the span the agent asked for, when longer
    blocked_until: float | None = None  # after `applied`: no waste episode before this

    def encode(self) -> str:
        """The JSON the app hash keeps."""
        fields_ = {
            "id": self.id,
            "opened_at": self.opened_at,
            "sequence": self.sequence,
            "sent_at": self.sent_at,
            "rules": sorted(self.rules),
            "req_cpu": self.req_cpu,
            "req_mem": self.req_mem,
            "cpu": self.cpu,
            "memory": self.memory,
            "snooze_until": self.snooze_until,
            "no_change_until": self.no_change_until,
            "reminder_every": self.reminder_every,
            "blocked_until": self.blocked_until,
        }
        return json.dumps({k: v for k, v in fields_.items() if v not in (None, [], 0)}, separators=(",", ":"))

    @classmethod
    def decode(cls, raw: str | bytes | None) -> "Mirror":
        """The mirror from the app hash's field (an empty Mirror when absent or unreadable)."""
        if not raw:
            return cls()
        try:
            data = json.loads(raw)
            return cls(
                id=data.get("id"),
                opened_at=data.get("opened_at"),
                sequence=int(data.get("sequence", 0)),
                sent_at=data.get("sent_at"),
                rules=frozenset(data.get("rules", ())),
                req_cpu=data.get("req_cpu"),
                req_mem=data.get("req_mem"),
                cpu=data.get("cpu"),
                memory=data.get("memory"),
                snooze_until=data.get("snooze_until"),
                no_change_until=data.get("no_change_until"),
                reminder_every=data.get("reminder_every"),
                blocked_until=data.get("blocked_until"),
            )
        except (ValueError, TypeError, AttributeError):
            # A mirror is a hint: unreadable, it hides nothing, and the claim script still decides.
            return cls()

    def watch_from(self, policy: EpisodePolicy) -> float | None:
        """From when the save step returns the usage history with the state (None: never)."""
        if self.id is None or self.sent_at is None:
            return None
        # Before the window ends only a risk rule goes out (as an escalation, no history needed up
        # front); while snoozed no waste item goes out at all.
        return max(self.sent_at + policy.cooldown_seconds, self.snooze_until or 0)


def targets(recommendation: Mapping[str, Any] | None) -> tuple[float | None, float | None]:
    """The recommended CPU (cores) and memory (MiB) targets of a trigger item's recommendation."""
    if not recommendation:
        return None, None
    return recommendation["cpu_cores"], recommendation["memory_mb"]


def _moved(before: float | None, now: float | None, floor: float) -> bool:
    if before is None or now is None:
        return before is not now
    return abs(now - before) > max(MATERIAL_FRACTION * abs(before), floor)


def changes(
    mirror: Mirror,
    reasons: Iterable[Mapping[str, Any]],
    state: Mapping[str, Any],
    cpu: float | None,
    memory: float | None,
) -> list[str]:
    """What is material since the episode's last item: new rules, requests or recommended targets moved."""
    if mirror.id is None:
        return []
    found = []
    if any(reason["rule"] not in mirror.rules for reason in reasons):
        found.append(REASONS)
    if _moved(mirror.req_cpu, state.get("req_cpu"), 0) or _moved(mirror.req_mem, state.get("req_mem"), 0):
        found.append(REQUESTS)
    # Targets not known now (no history read) are never called a change.
    if cpu is not None and _moved(mirror.cpu, cpu, MIN_CPU_CHANGE_CORES):
        found.append(CPU)
    if memory is not None and _moved(mirror.memory, memory, MIN_MEMORY_CHANGE_MB):
        found.append(MEMORY)
    return found


@dataclass(frozen=True)
class Screen:
    """screen()'s verdict for one firing deployment, and what it found changed."""

    verdict: str
    changed: list[str] = field(default_factory=list)
    needs_targets: bool = False  # only the recommended targets could make it due: read the history


def screen(
    mirror_of: Callable[[], Mirror],
    reasons: Sequence[Mapping[str, Any]],
    risky: bool,
    state: Mapping[str, Any],
    now: float,
    policy: EpisodePolicy,
    known_targets: Callable[[], tuple[float | None, float | None] | None],
) -> Screen:
    """Whether a firing deployment is held back for sure (window running, reminder interval, a
    decision, the block after `applied`) or must go to the claim script, which decides for good.

    `mirror_of()` gives the episode's mirror, and `known_targets()` the current recommended targets
    when the history came with the state, else None; each is asked only where it can matter (a
    waste rule inside its window, the steady state, needs neither).
    """
    if not risky and cooldown_remaining(state, now, policy.cooldown_seconds):
        return Screen(HELD)
    mirror = mirror_of()
    if risky:
        # A risk rule always goes to the claim: a new window, or an escalation of the running one.
        cpu, memory = (known_targets() if mirror.id else None) or (None, None)
        return Screen(DUE, changes(mirror, reasons, state, cpu, memory))
    if mirror.id is None:
        if mirror.blocked_until is not None and now < mirror.blocked_until:
            return Screen(SUPPRESSED)
        return Screen(DUE)
    if mirror.snooze_until is not None and now < mirror.snooze_until:
        return Screen(SUPPRESSED)
    changed = changes(mirror, reasons, state, None, None)
    every = max(policy.reminder_seconds, mirror.reminder_every or 0)
    reminder_due = mirror.sent_at is None or now >= mirror.sent_at + every
    reminder_held = mirror.no_change_until is not None and now < mirror.no_change_until
    found = known_targets()
    if found is not None:
        changed = changes(mirror, reasons, state, *found)
    if changed or (reminder_due and not reminder_held):
        return Screen(DUE, changed)
    return Screen(SUPPRESSED, needs_targets=found is None)
