"""The Redis state repository: the only code that knows the key layout.

Keys (their names are a contract: other systems read them):

- ``app:{namespace}:{name}`` hash: ``req_cpu``, ``req_mem``, ``usage_cpu_curr``,
  ``usage_mem_curr``, ``cost_timestamp`` (from cost); ``pred_cpu_peak``, ``pred_mem_peak``,
  ``forecast_timestamp`` (from forecast); ``last_trigger`` (Unix seconds of the last
  delivered trigger). Timestamps are Unix seconds of the payload's ``timestamp``.
- ``cluster:{namespace}:cost``: the cluster's hourly cost in GBP, from the newest cost payload.
- ``cluster:{namespace}:vm_count``: the cluster's VM count, from the same payload.
- ``{cluster:{namespace}:cost}:timestamp`` and ``{cluster:{namespace}:vm_count}:timestamp``:
  Unix seconds of the payload each of the two keys above came from, so that an older payload
  cannot roll them back. The braces are a Redis Cluster hash tag: each timestamp key lives in
  the same slot as the key it guards, so one script can check and write the pair.
- ``cluster:{namespace}:req_cpu_total``: CPU cores requested by all deployments of that payload,
  the denominator of the CPU price; guarded by ``{cluster:{namespace}:req_cpu_total}:timestamp``.
- ``cluster:{namespace}:req_mem_total``: memory (MiB) requested by the same deployments, the
  memory share of the price; guarded by ``{cluster:{namespace}:req_mem_total}:timestamp``.
- ``{app:{namespace}:{name}}:history`` hash: the deployment's usage history (fields listed in
  shared/core/history.py), hash-tagged into its app key's slot and updated by the same script that
  stores a cost sample; expires 8 days after its last sample.
- ``trigger:{namespace}:{name}``: Unix seconds of the last trigger claim. Setting it (``SET NX
  PX``) is what claims a deployment's cooldown window. It is taken for a short lease (the claim
  lease: what the request may still spend on its delivery and its Redis steps) and given the rest
  of the cooldown only when the delivery is settled, so that a claim whose request dies, or whose
  settle Redis never hears, frees itself within the lease instead of silencing the deployment for
  the whole cooldown.
- ``{trigger:{namespace}:{name}}:escalation``: set when a risk rule has been claimed inside the
  current window (by the claim that opened it, or by an escalation), so that a window is escalated
  by a risk rule at most once. Leased like the window, then kept until the window's end. Its hash
  tag is the cooldown key's full name: the two share a slot, so one script decides "open a window"
  or "escalate it" atomically.
- ``{trigger:{namespace}:{name}}:pending`` hash: ``window`` and ``escalation``, the trigger item id
  of a claim not yet settled or released. A claim that finds one left behind (its request died,
  or its settle was lost after a delivery) sends its item again under the same id, so the agent can
  tell a possible duplicate; expires after the cooldown.
- ``triggers:{namespace}:failed``: list of JSON records of deliveries that failed for good,
  newest first, capped at 1000 entries.

Every atomic step touches the keys of one slot: one key, or a key and its hash-tagged companions
(a timestamp, a usage history, an escalation and the pending ids). The layout therefore works
unchanged on Redis Cluster, where the ``app:`` and ``trigger:`` keys of one deployment live on
different nodes. Each step of a request (store, claim, settle) is one script call over all its
deployments on a single Redis, and one call per node on a cluster (shared/store/runner.py), whatever the
number of deployments. The scripts are files of shared/store/scripts/, one per step (one save per source).
"""

import contextlib
import json
import time
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from operator import itemgetter
from typing import Any

from redis.exceptions import RedisError

from shared.core import history
from shared.core.episodes import APPLIED, RESOLVED, EpisodePolicy, Mirror
from shared.core.history import WINDOW_SECONDS, History, bucket_index, decode_history
from shared.store import lua
from shared.store.runner import Unit, raise_first, runner_for
from shared.store.settings import RedisMode

CLUSTER_ITEMS = ("cost", "vm_count", "req_cpu_total", "req_mem_total")
DEFAULT_HALF_LIFE_SECONDS = 24 * 3600
FAILED_KEEP = 1000
# What each save writes of a deployment's hash besides its timestamp field, in the order of its
# script's HSET (scripts/save_cost.lua, scripts/save_forecast.lua).
COST_FIELDS = ("req_cpu", "req_mem", "usage_cpu_curr", "usage_mem_curr")
FORECAST_FIELDS = ("pred_cpu_peak", "pred_mem_peak")
# What a save reads back of a deployment's hash besides what it writes: the other source's
# fields and last_trigger, so the rules see the state as stored after the write, and quiet_since
# for the episode. In the order of its script's HMGET, which fixes the same list.
READ_BACK = {
    "cost_timestamp": (*FORECAST_FIELDS, "forecast_timestamp", "last_trigger", "quiet_since"),
    "forecast_timestamp": (*COST_FIELDS, "cost_timestamp", "last_trigger", "quiet_since"),
}

# Unit kinds of the save and settle scripts.
ROW, ITEM = 0, 1
# How a claim is given back or settled (see RELEASE and SETTLE): a window, a window opened by a
# risk rule (its escalation key is ours too), an escalation of a running window.
WINDOW, RISKY_WINDOW, ESCALATION, RESOLUTION = "w", "r", "e", "x"
CLAIMED, ESCALATED, SUPPRESSED = 1, 2, 3


def claim_lease_seconds(redis_timeout: float, webhook_budget: float) -> float:
    """How long a claim holds before it is settled: what its request may still spend after claiming."""
    # The claim's own reply (one timeout), the history read and the settle (a timeout and its one
    # retry each), the delivery's whole budget, and a second for the rest (building the message,
    # the watchdog's grace). A request that outlives this may see its deployment claimed again.
    return webhook_budget + 5 * redis_timeout + 1


DEFAULT_CLAIM_LEASE_SECONDS = claim_lease_seconds(2, 5)

# The scripts, one per step, each in its file under shared/store/scripts/ (its header says what
# its KEYS and ARGV are and what it answers). The constants they name come from here and from
# shared/core/history.py, their one place.
HISTORY_LAYOUT = {
    "MAX_DECAY_EXPONENT": history.MAX_DECAY_EXPONENT,
    "WEIGHT_SCALE": history.WEIGHT_SCALE,
    "WINDOW_SECONDS": history.WINDOW_SECONDS,
    "MEMORY_WINDOWS": history.MEMORY_WINDOWS,
    "MAX_FIELDS": history.MAX_FIELDS,
    "HISTORY_TTL_SECONDS": history.HISTORY_TTL_SECONDS,
}
CLAIM_FLAGS = {"WINDOW": WINDOW, "RISKY_WINDOW": RISKY_WINDOW, "ESCALATION": ESCALATION, "RESOLUTION": RESOLUTION}
SAVE_COST = lua.script("save_cost", ("record_usage", "saved_state"), HISTORY_LAYOUT)
SAVE_FORECAST = lua.script("save_forecast", ("saved_state",))
CLAIM = lua.script("claim")
RESOLVE = lua.script("resolve")
SETTLE = lua.script("settle", constants=CLAIM_FLAGS)
RELEASE = lua.script("release", constants={**CLAIM_FLAGS, "FAILED_KEEP": FAILED_KEEP})
DECIDE = lua.script("decide")
MARK_QUIET = lua.script("mark_quiet")
# Without the prologue: its shebang must carry no flags (see the file).
READY = lua.read("ready")


def decode(raw: bytes) -> float:
    """A stored number (bytes) back into an int or float; stored numbers are never negative."""
    return int(raw) if raw.isdigit() else float(raw)


@dataclass(frozen=True)
class EpisodeItem:
    """Where a claimed item stands in its deployment's episode, as the claim script decided."""

    episode_id: str
    opened_at: float
    sequence: int
    notify: str
    decision: str = ""  # the decision in force ('' when none), for the mirror
    until: float = 0
    reminder_every: float = 0  # the reminder interval in force (longer after `no_change`)


@dataclass(frozen=True)
class Claims:
    """What one claim step won, and what settling or giving it back needs."""

    now: float  # the claims' time: their keys hold str(int(now))
    started: float  # time.monotonic() when the claim was sent: the window's time is counted from it
    claimed: list[str] = field(default_factory=list)  # windows opened
    escalated: list[str] = field(default_factory=list)  # running windows escalated by a risk rule
    risky: frozenset[str] = frozenset()  # of `claimed`, those opened by a risk rule (escalated at once)
    ids: dict[str, str] = field(default_factory=dict)  # the trigger item id each deployment won goes out with
    reclaimed: list[str] = field(default_factory=list)  # won over a claim left unsettled: maybe sent twice
    episodes: dict[str, EpisodeItem] = field(default_factory=dict)  # each item's place in its episode
    suppressed: list[str] = field(default_factory=list)  # held by the reminder interval or a decision
    resolved: list[str] = field(default_factory=list)  # open episodes whose resolved item was claimed

    @property
    def sent(self) -> list[str]:
        """Every deployment won: the windows, then the escalations, then the resolutions."""
        return self.claimed + self.escalated + self.resolved

    @property
    def value(self) -> str:
        """What the claims' keys hold while they are ours."""
        return str(int(self.now))

    def flags(self) -> list[tuple[str, str]]:
        """(name, WINDOW, RISKY_WINDOW, ESCALATION or RESOLUTION) for each deployment won."""
        return (
            [(name, RISKY_WINDOW if name in self.risky else WINDOW) for name in self.claimed]
            + [(name, ESCALATION) for name in self.escalated]
            + [(name, RESOLUTION) for name in self.resolved]
        )

    def merge(self, other: "Claims") -> "Claims":
        """These claims and the resolutions of `other`, taken at the same time, as one set to deliver and settle."""
        return replace(
            self,
            resolved=self.resolved + other.resolved,
            ids={**self.ids, **other.ids},
            reclaimed=self.reclaimed + other.reclaimed,
            episodes={**self.episodes, **other.episodes},
        )


@dataclass(frozen=True)
class DeploymentView:
    """One deployment as the agent reads it: its app hash, its open episode and its window."""

    state: dict[str, float]
    episode: dict[str, str] | None  # the episode hash (None when none is open)
    mirror: Mirror
    cooldown_seconds_left: float


@dataclass
class SavedPayload:
    """What a payload left in Redis: the state of each deployment written, and those skipped."""

    states: dict[str, dict] = field(default_factory=dict)
    stale: list[str] = field(default_factory=list)
    cluster: dict[str, float | None] = field(default_factory=dict)
    quiet: dict[str, float] = field(default_factory=dict)  # since when each one's samples fired no rule
    # As Redis answered them, decoded only when asked for: most are never needed.
    raw_mirrors: dict[str, bytes] = field(default_factory=dict)  # deployments whose app hash keeps an episode
    raw_histories: dict[str, list] = field(default_factory=dict)  # read with the state (see SAVE's `watch`)
    unfetched: set[str] = field(default_factory=set)  # their app hash keeps an episode mirror, not read (in a window)
    _mirrors: dict[str, Mirror] = field(default_factory=dict, repr=False)  # decoded, by mirror()

    def mirror(self, name: str) -> Mirror | None:
        """What the app hash keeps of the deployment's episode, None when nothing."""
        raw = self.raw_mirrors.get(name)
        if raw is None:
            return None
        decoded = self._mirrors.get(name)
        if decoded is None:
            decoded = self._mirrors[name] = Mirror.decode(raw)
        return decoded

    def history(self, name: str) -> History | None:
        """The usage history that came with the state, None when it did not."""
        flat = self.raw_histories.get(name)
        return None if flat is None else decode_history(_pairs(flat))


class StateRepository:
    """Reads and writes aggregator state in Redis; see the module docstring for the keys."""

    def __init__(
        self,
        redis,
        cooldown_seconds,
        history_half_life_seconds: float | None = DEFAULT_HALF_LIFE_SECONDS,
        *,
        mode: RedisMode,
        claim_lease_seconds: float = DEFAULT_CLAIM_LEASE_SECONDS,
        episodes: EpisodePolicy | None = None,
    ):
        """`history_half_life_seconds=None` keeps no usage history (the benchmark's baseline); `mode`
        is how `redis` reaches the store (StoreSettings.mode)."""
        self.redis = redis
        self.cooldown_seconds = cooldown_seconds
        self.episodes = episodes or EpisodePolicy(cooldown_seconds, cooldown_seconds)
        self.history_half_life_seconds = history_half_life_seconds
        # A lease longer than the window would outlast it: then the window is the lease.
        self.claim_lease_ms = int(min(claim_lease_seconds, cooldown_seconds) * 1000)
        self.runner = runner_for(redis, mode)
        register = self.runner.register
        self._save_cost, self._save_forecast = register(SAVE_COST), register(SAVE_FORECAST)
        self._claim, self._resolve, self._settle = register(CLAIM), register(RESOLVE), register(SETTLE)
        self._release, self._decide, self._mark_quiet = register(RELEASE), register(DECIDE), register(MARK_QUIET)
        self._ready = register(READY)

    # Key names live here and nowhere else.
    @staticmethod
    def _companion(key: str, suffix: str) -> str:
        """A key hash-tagged into `key`'s Redis Cluster slot: `key` whole between braces, then the suffix."""
        return f"{{{key}}}:{suffix}"

    @staticmethod
    def app_key(namespace: str, name: str) -> str:
        """The hash holding one deployment's merged state."""
        return f"app:{namespace}:{name}"

    @classmethod
    def history_key(cls, namespace: str, name: str) -> str:
        """The usage history of one deployment, hash-tagged into the slot of its app key."""
        return cls._companion(cls.app_key(namespace, name), "history")

    @classmethod
    def app_and_history_keys(cls, namespace: str, deployments: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
        """(app key, history key) of each deployment (a loaded row): app_key and history_key for thousands at once."""
        prefix = cls.app_key(namespace, "")
        # _companion's spelling, written out: a call per deployment costs more than the rest of this.
        return [(key, f"{{{key}}}:history") for key in [prefix + row["name"] for row in deployments]]

    @staticmethod
    def trigger_key(namespace: str, name: str) -> str:
        """The cooldown key of one deployment."""
        return f"trigger:{namespace}:{name}"

    @classmethod
    def escalation_key(cls, namespace: str, name: str) -> str:
        """The key marking that a risk rule was claimed in the deployment's window; in its slot."""
        return cls._companion(cls.trigger_key(namespace, name), "escalation")

    @classmethod
    def pending_key(cls, namespace: str, name: str) -> str:
        """The ids of the deployment's claims not yet settled or released; in its cooldown key's slot."""
        return cls._companion(cls.trigger_key(namespace, name), "pending")

    @classmethod
    def episode_key(cls, namespace: str, name: str) -> str:
        """The deployment's open episode and the agent's decision about it; in its cooldown key's slot."""
        return cls._companion(cls.trigger_key(namespace, name), "episode")

    @classmethod
    def applied_key(cls, namespace: str, name: str) -> str:
        """Set for a while after the agent applied a recommendation: no waste episode opens meanwhile."""
        return cls._companion(cls.trigger_key(namespace, name), "applied")

    @classmethod
    def resolving_key(cls, namespace: str, name: str) -> str:
        """The lease of the claim on the episode's resolved item; in its cooldown key's slot."""
        return cls._companion(cls.trigger_key(namespace, name), "resolving")

    def claim_keys(self, namespace: str, name: str) -> tuple[str, ...]:
        """What the claim script reads and writes of one deployment, all in one slot."""
        trigger, escalation = self.trigger_key(namespace, name), self.escalation_key(namespace, name)
        pending, episode = self.pending_key(namespace, name), self.episode_key(namespace, name)
        return trigger, escalation, pending, episode, self.applied_key(namespace, name)

    def settle_keys(self, namespace: str, name: str) -> tuple[str, ...]:
        """What settling or giving back one deployment's claims touches, all in one slot."""
        return (*self.claim_keys(namespace, name)[:4], self.resolving_key(namespace, name))

    @staticmethod
    def failed_key(namespace: str) -> str:
        """The capped list of deliveries that failed for good."""
        return f"triggers:{namespace}:failed"

    @staticmethod
    def cluster_key(namespace: str, item: str) -> str:
        """One of the cluster-wide keys: cost, vm_count, req_cpu_total or req_mem_total (CLUSTER_ITEMS)."""
        return f"cluster:{namespace}:{item}"

    @classmethod
    def cluster_timestamp_key(cls, namespace: str, item: str) -> str:
        """The key holding the payload time of a cluster key, hash-tagged into that key's slot."""
        return cls._companion(cls.cluster_key(namespace, item), "timestamp")

    def check_ready(self) -> None:
        """Raise the Redis error an ingest would meet now: down, read-only, out of memory, no permission,
        a cluster missing slots (the write probe runs on every primary)."""
        self.runner.probe(self._ready)

    def save_cost(self, payload: dict, now: float | None = None) -> "SavedPayload":
        """Store a loaded cost payload, cluster totals included; one script call (per node)."""
        namespace, stamp, deployments = payload["namespace"], payload["timestamp"], payload["deployments"]
        totals = {
            "cost": payload["cluster_totals"]["current_hourly_cost_gbp"],
            "vm_count": payload["cluster_totals"]["vm_count"],
            "req_cpu_total": sum(row["req_cpu"] for row in deployments),
            "req_mem_total": sum(row["req_mem"] for row in deployments),
        }
        items = [
            Unit(
                (self.cluster_key(namespace, item), self.cluster_timestamp_key(namespace, item)),
                (totals[item],),
                ITEM,
            )
            for item in CLUSTER_ITEMS
        ]
        half_life = self.history_half_life_seconds
        # A row's numbers go joined in one argument (see scripts/save_cost.lua), each written with
        # repr(), as the client writes a number (an int's repr is its str, a float's its shortest
        # exact form): how Redis stores them and decode() reads them back. The worker, not Redis's
        # one thread, works out each sample's bucket and day. Written out, not through COST_FIELDS
        # and the key methods: this runs for each of thousands of deployments.
        rows = [
            Unit(
                keys,
                (
                    f"{row['req_cpu']!r},{row['req_mem']!r},{cpu!r},{row['usage_mem_curr']!r},"
                    + ("" if half_life is None else f"cpu:{bucket_index(cpu)}"),
                ),
            )
            for row, keys in zip(deployments, self.app_and_history_keys(namespace, deployments))
            for cpu in (row["usage_cpu_curr"],)
        ]
        usage = ("", "") if half_life is None else (int(stamp // WINDOW_SECONDS), half_life)
        episode = self._episode_args(now)

        def header(units: Sequence[Unit]) -> list:
            return [sum(unit.kind == ROW for unit in units), stamp, *usage, *episode]

        replies = self.runner.run(self._save_cost, rows + items, header)
        return self._saved(payload, "cost_timestamp", COST_FIELDS, replies)

    def save_forecast(self, payload: dict, now: float | None = None) -> "SavedPayload":
        """Store a loaded forecast payload and read the cluster totals; one script call (per node)."""
        namespace, stamp = payload["namespace"], payload["timestamp"]
        items = [Unit((self.cluster_key(namespace, item),), (), ITEM) for item in CLUSTER_ITEMS]
        deployments = payload["deployments"]
        # The usage history is not written here, but read back with the state when an episode may
        # need it (`watch`).
        rows = [
            Unit(keys, (f"{row['pred_cpu_peak']!r},{row['pred_mem_peak']!r}",))
            for row, keys in zip(deployments, self.app_and_history_keys(namespace, deployments))
        ]
        episode = self._episode_args(now)
        kept = "0" if self.history_half_life_seconds is None else "1"

        def header(units: Sequence[Unit]) -> list:
            return [sum(unit.kind == ROW for unit in units), stamp, *episode, kept]

        replies = self.runner.run(self._save_forecast, rows + items, header)
        return self._saved(payload, "forecast_timestamp", FORECAST_FIELDS, replies)

    def _episode_args(self, now: float | None) -> tuple:
        """What both save scripts take after the payload's own: now, the app hash's lifetime, the
        cooldown and '1' to send every mirror."""
        policy = self.episodes
        # With RESOLVE_AFTER_SECONDS=0 every quiet sample may resolve, so the mirror always comes.
        always = "1" if policy.resolve_after_seconds == 0 else "0"
        clock = time.time() if now is None else now
        return clock, policy.state_ttl_seconds + 3600, self.cooldown_seconds, always

    def _saved(self, payload: dict, ts_field: str, value_fields: tuple[str, ...], replies: list) -> "SavedPayload":
        """A save script's replies as a SavedPayload (see saved_state.lua for a row's reply)."""
        raise_first(replies)
        deployments, stamp, read_back = payload["deployments"], payload["timestamp"], READ_BACK[ts_field]
        saved = SavedPayload()
        states, stale, quiet = saved.states, saved.stale, saved.quiet
        # Bound once: this loop runs for each of thousands of deployments.
        written = itemgetter(*value_fields)
        for row, reply in zip(deployments, replies):
            name = row["name"]
            if reply == 0:
                stale.append(name)
                continue
            if type(reply) is list:
                saved.raw_mirrors[name] = reply[1]
                if len(reply) > 2:
                    saved.raw_histories[name] = reply[2]
                reply = reply[0]
            fields = reply.split(b",")
            if len(fields) > len(read_back):
                saved.unfetched.add(name)  # the one more field: in its window, mirror not read
            # What was written is the payload's own numbers; only the rest comes back from Redis.
            state = dict(zip(value_fields, written(row)))
            state[ts_field] = stamp
            for field_name, raw in zip(read_back, fields):
                if raw:
                    state[field_name] = decode(raw)
            if "quiet_since" in state:
                quiet[name] = state.pop("quiet_since")
            states[name] = state
        saved.cluster = _cluster(replies[len(deployments) :])
        return saved

    def histories(self, namespace: str, names: Sequence[str]) -> dict[str, History]:
        """The decoded usage history of each of `names` ({name: History}); one round trip."""
        return self.histories_and_mirrors(namespace, names, ())[0]

    def histories_and_mirrors(
        self, namespace: str, names: Sequence[str], mirrored: Sequence[str]
    ) -> tuple[dict[str, History], dict[str, Mirror]]:
        """The usage histories of `names` and the episode mirrors of `mirrored`; one round trip."""
        if not names and not mirrored:
            return {}, {}
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(self.history_key(namespace, name))
        for name in mirrored:
            pipe.hget(self.app_key(namespace, name), "episode")
        replies = pipe.execute()
        histories = {name: decode_history(flat) for name, flat in zip(names, replies)}
        return histories, {name: Mirror.decode(raw) for name, raw in zip(mirrored, replies[len(names) :])}

    def claim(
        self,
        namespace: str,
        names: Sequence[str],
        risky: Collection[str],
        now: float,
        ids: Mapping[str, str] | None = None,
        changed: Collection[str] = (),
        episode_ids: Mapping[str, str] | None = None,
    ) -> Claims:
        """For each of `names`, decide whether an item goes to the agent and claim it (see CLAIM):
        atomically per deployment, so that of any number of concurrent requests one wins each
        window and one each escalation. `risky` are those where a risk rule fired, `changed` those
        where something material changed since the episode's last item. Each claim holds for the
        claim lease until settle_delivered() or release(). `ids` gives the trigger item id a
        deployment goes out with (a fresh one otherwise); a claim left unsettled before keeps its own.
        `episode_ids` the id an episode opened now would get (a fresh one otherwise).

        On a cluster, if some node's call fails, what the others claimed is released before raising.
        """
        ids, episode_ids = ids or {}, episode_ids or {}
        units = [
            Unit(
                self.claim_keys(namespace, name),
                (
                    "1" if name in risky else "0",
                    "1" if name in changed else "0",
                    ids.get(name) or str(uuid.uuid4()),
                    episode_ids.get(name) or str(uuid.uuid4()),
                ),
            )
            for name in names
        ]
        started = time.monotonic()
        policy = self.episodes
        value = str(int(now))

        def header(_):
            lease, ttl = self.claim_lease_ms, policy.episode_ttl_seconds
            return [value, lease, self.cooldown_seconds, policy.reminder_seconds, ttl]

        replies = self.runner.run(self._claim, units, header)
        claimed: list[str] = []
        escalated: list[str] = []
        suppressed: list[str] = []
        won_ids: dict[str, str] = {}
        reclaimed: list[str] = []
        episodes: dict[str, EpisodeItem] = {}
        for name, reply in zip(names, replies):
            if isinstance(reply, list):
                kind, item_id, prior, episode_id, opened_at, sequence, notify, decision, until, every = reply
                (claimed if kind == CLAIMED else escalated).append(name)
                won_ids[name] = item_id.decode()
                episodes[name] = EpisodeItem(
                    episode_id.decode(),
                    decode(opened_at),
                    int(sequence),
                    notify.decode(),
                    decision.decode(),
                    int(until),
                    int(every),
                )
                if prior:
                    reclaimed.append(name)
            elif reply == SUPPRESSED:
                suppressed.append(name)
        claims = Claims(
            now,
            started,
            claimed,
            escalated,
            frozenset(risky) & set(claimed),
            won_ids,
            reclaimed,
            episodes,
            suppressed,
        )
        return self._won(namespace, claims, replies)

    def resolve(self, namespace: str, episodes: Mapping[str, str], now: float) -> Claims:
        """Claim the resolved item of each open episode of `episodes` ({name: episode id}); once per episode."""
        names = list(episodes)
        units = [
            Unit(
                (
                    self.resolving_key(namespace, name),
                    self.pending_key(namespace, name),
                    self.episode_key(namespace, name),
                ),
                (episodes[name], str(uuid.uuid4())),
            )
            for name in names
        ]
        started = time.monotonic()
        value = str(int(now))
        replies = self.runner.run(self._resolve, units, lambda _: [value, self.claim_lease_ms])
        resolved, won_ids, reclaimed, items = [], {}, [], {}
        for name, reply in zip(names, replies):
            if isinstance(reply, list):
                item_id, prior, opened_at, sequence = reply
                resolved.append(name)
                won_ids[name] = item_id.decode()
                items[name] = EpisodeItem(episodes[name], decode(opened_at), int(sequence), RESOLVED)
                if prior:
                    reclaimed.append(name)
        claims = Claims(now, started, ids=won_ids, reclaimed=reclaimed, episodes=items, resolved=resolved)
        return self._won(namespace, claims, replies)

    def _won(self, namespace: str, claims: Claims, replies: Sequence) -> Claims:
        """`claims`, unless some node's call failed: then what the others won is given back and its error raised."""
        if any(isinstance(reply, Exception) for reply in replies):
            # The claim's own error is the one to report; a release that fails too leaves the
            # claims to their lease.
            with contextlib.suppress(RedisError):
                self.release(namespace, claims)
            raise_first(replies)
        return claims

    def release(self, namespace: str, claims: Claims, record: dict | None = None) -> None:
        """Give back the claims (those still ours), so that a resend can claim them again; with
        `record`, also keep it in the failed list for people to read."""
        units = [Unit(self.settle_keys(namespace, name), (flag,)) for name, flag in claims.flags()]
        if record is not None:
            units.append(Unit((self.failed_key(namespace),), (_record_json(record),), ITEM))
        if not units:
            return

        def header(subset):
            return [claims.value, sum(unit.kind == ROW for unit in subset)]

        raise_first(self.runner.run(self._release, units, header))

    def settle_delivered(
        self,
        namespace: str,
        claims: Claims,
        reasons: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
        mirrors: Mapping[str, Mirror | None] | None = None,
    ) -> None:
        """After a delivery: note `last_trigger` for the windows claimed, keep every claim still
        ours for the rest of its window, and note each item in its episode (`reasons`: each item's
        reasons) and in the app hash's mirror of it (`mirrors`: None drops the mirror)."""
        reasons, mirrors = reasons or {}, mirrors or {}
        claimed = set(claims.claimed)
        policy = self.episodes
        units = []
        for name in dict.fromkeys([*claims.claimed, *mirrors]):
            mirror = mirrors.get(name)
            watch = mirror.watch_from(policy) if mirror else None
            args = (
                claims.value if name in claimed else "",
                mirror.encode() if mirror else "",
                "" if watch is None else watch,
            )
            if name in claimed or name in mirrors:
                units.append(Unit((self.app_key(namespace, name),), args))
        for name, flag in claims.flags():
            item = claims.episodes.get(name)
            units.append(
                Unit(
                    self.settle_keys(namespace, name),
                    (
                        flag,
                        item.episode_id if item else "",
                        item.notify if item else "",
                        json.dumps(reasons.get(name, []), separators=(",", ":")),
                    ),
                    ITEM,
                )
            )
        if not units:
            return
        elapsed = time.monotonic() - claims.started
        left_ms = int((self.cooldown_seconds - elapsed) * 1000)

        def header(subset):
            apps = sum(unit.kind == ROW for unit in subset)
            ttl = policy.episode_ttl_seconds
            return [claims.value, left_ms, claims.now + elapsed, self.cooldown_seconds, apps, ttl]

        raise_first(self.runner.run(self._settle, units, header))

    def mark_quiet(self, namespace: str, quiet: Collection[str], firing: Collection[str], now: float) -> None:
        """Start the quiet count of the deployments in `quiet` (unless it runs) and stop it for those in `firing`."""
        units = [Unit((self.app_key(namespace, name),), ("1",)) for name in quiet]
        units += [Unit((self.app_key(namespace, name),), ("0",)) for name in firing]
        if units:
            raise_first(self.runner.run(self._mark_quiet, units, lambda _: [now]))

    def decide(
        self, namespace: str, name: str, episode_id: str, decision: str, until: float | None, note: str, now: float
    ) -> bool:
        """Record the agent's decision about the deployment's open episode; False when `episode_id` is not it."""
        policy = self.episodes
        block_ms = policy.resolve_after_seconds * 1000 if decision == APPLIED else 0
        keys = (self.episode_key(namespace, name), self.applied_key(namespace, name))
        args = (episode_id, decision, "" if until is None else until, note, now, block_ms, policy.episode_ttl_seconds)
        [reply] = self.runner.run(self._decide, [Unit(keys, args)], lambda _: [])
        raise_first([reply])
        return bool(reply)

    def mirror(self, namespace: str, name: str) -> Mirror:
        """What the app hash keeps of the deployment's episode."""
        return Mirror.decode(self.redis.hget(self.app_key(namespace, name), "episode"))

    def write_mirror(self, namespace: str, name: str, mirror: Mirror | None) -> None:
        """Replace the app hash's mirror of the episode (None: drop it, with its quiet count)."""
        key = self.app_key(namespace, name)
        if mirror is None:
            self.redis.hdel(key, "episode", "watch", "quiet_since")
            return
        watch = mirror.watch_from(self.episodes)
        self.redis.hset(key, mapping={"episode": mirror.encode(), "watch": "" if watch is None else watch})
        if mirror.id is None:
            self.redis.hdel(key, "quiet_since")

    def deployment(self, namespace: str, name: str) -> "DeploymentView | None":
        """What is stored of one deployment, for the agent's read: None when nothing is."""
        raw = self.redis.hgetall(self.app_key(namespace, name))
        if not raw:
            return None
        episode = {k.decode(): v.decode() for k, v in self.redis.hgetall(self.episode_key(namespace, name)).items()}
        left_ms = self.redis.pttl(self.trigger_key(namespace, name))
        fields_ = {k.decode(): v for k, v in raw.items()}
        mirror = Mirror.decode(fields_.pop("episode", None))
        for hidden in ("watch", "quiet_since"):
            fields_.pop(hidden, None)
        state = {k: decode(v) for k, v in fields_.items()}
        return DeploymentView(state, episode or None, mirror, max(0.0, left_ms / 1000) if left_ms > 0 else 0.0)

    def settle_failed(self, namespace: str, claims: Claims, record: dict) -> None:
        """After a failed delivery: give back the claims and keep `record` for people to read."""
        self.release(namespace, claims, record)

    def failed_triggers(self, namespace: str, limit: int = FAILED_KEEP) -> list[dict]:
        """The records of failed deliveries, newest first."""
        return [json.loads(raw) for raw in self.redis.lrange(self.failed_key(namespace), 0, limit - 1)]

    def running_windows(self, namespace: str, names: Sequence[str]) -> dict[str, tuple[int, float]]:
        """{name: (claimed at, seconds left)} for the deployments of `names` whose cooldown window is claimed."""
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.get(self.trigger_key(namespace, name))
            pipe.pttl(self.trigger_key(namespace, name))
        replies = pipe.execute() if names else []
        windows = {}
        for name, claimed_at, left_ms in zip(names, replies[::2], replies[1::2]):
            if claimed_at is not None and left_ms > 0:
                windows[name] = (int(claimed_at), left_ms / 1000)
        return windows

    def remove_failed(self, namespace: str, record: dict) -> bool:
        """Drop one record, as failed_triggers returned it, from the failed list; True when it was there."""
        return bool(self.redis.lrem(self.failed_key(namespace), 1, _record_json(record)))


def _pairs(flat):
    """A flat [field, value, ...] reply as a dict."""
    return dict(zip(flat[::2], flat[1::2]))


def _record_json(record):
    """A failed-delivery record as the list stores it; LREM finds a record by this exact text."""
    return json.dumps(record, separators=(",", ":"))


def _cluster(replies):
    """The stored cluster totals (None where no cost payload has set them yet)."""
    cost, vm_count, req_cpu_total, req_mem_total = (None if raw is None else decode(raw) for raw in replies)
    return {
        "hourly_cost_gbp": cost,
        "vm_count": vm_count,
        "req_cpu_total": req_cpu_total,
        "req_mem_total": req_mem_total,
    }
