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
  shared/history.py), hash-tagged into its app key's slot and updated by the same script that
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
deployments on a single Redis, and one call per node on a cluster (shared/batch.py), whatever the
number of deployments.
"""

import contextlib
import json
import time
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter

from redis.exceptions import RedisError

from shared.batch import PROLOGUE, Script, Unit, raise_first, runner_for
from shared.history import RECORD_USAGE_LUA, WINDOW_SECONDS, History, bucket_index, decode_history

CLUSTER_ITEMS = ("cost", "vm_count", "req_cpu_total", "req_mem_total")
DEFAULT_HALF_LIFE_SECONDS = 24 * 3600
FAILED_KEEP = 1000
COST_FIELDS = ("req_cpu", "req_mem", "usage_cpu_curr", "usage_mem_curr")
FORECAST_FIELDS = ("pred_cpu_peak", "pred_mem_peak")
# What a save reads back of a deployment's hash besides what it writes: the other source's
# fields and last_trigger, so the rules see the state as stored after the write.
READ_BACK = {
    "cost_timestamp": (*FORECAST_FIELDS, "forecast_timestamp", "last_trigger"),
    "forecast_timestamp": (*COST_FIELDS, "cost_timestamp", "last_trigger"),
}

# Unit kinds of the save and settle scripts.
ROW, ITEM = 0, 1
# How a claim is given back or settled (see RELEASE and SETTLE): a window, a window opened by a
# risk rule (its escalation key is ours too), an escalation of a running window.
WINDOW, RISKY_WINDOW, ESCALATION = "w", "r", "e"
CLAIMED, ESCALATED = 1, 2


def claim_lease_seconds(redis_timeout: float, webhook_budget: float) -> float:
    """How long a claim holds before it is settled: what its request may still spend after claiming."""
    # The claim's own reply (one timeout), the history read and the settle (a timeout and its one
    # retry each), the delivery's whole budget, and a second for the rest (building the message,
    # the watchdog's grace). A request that outlives this may see its deployment claimed again.
    return webhook_budget + 5 * redis_timeout + 1


DEFAULT_CLAIM_LEASE_SECONDS = claim_lease_seconds(2, 5)

# Store one payload. Arguments: the counts of rows, keys per row and items; the item mode ('set'
# for cost, 'get' for forecast); the timestamp field and the payload's timestamp; the count and
# names of the value fields written, then of the fields read back; the history's UTC day number
# and half-life ('' and 0 for no history); each row's values in that order (with a history,
# then its CPU bucket field and memory); each written item's value. Keys: each row's keys (its app
# hash first, then its usage history), then each item's (the cluster key, and with 'set' its
# timestamp key). Per row: write unless the stored data from the same source is newer, count the
# sample in the usage history (record_usage skips a sample it counted already), and answer the
# read-back fields as one comma-joined string ('' where absent), or 0 when skipped. Per item: with
# 'set', write unless its timestamp key is newer; answer the value stored after. The per-row work
# is kept to one HMGET and one HSET (two more with a history): Redis time per deployment is what
# bounds a large payload.
SAVE = Script(
    f"""{PROLOGUE}
{RECORD_USAGE_LUA}
local rows, per_row, items = tonumber(A[ao + 1]), tonumber(A[ao + 2]), tonumber(A[ao + 3])
local set_items, ts_field, ts = A[ao + 4] == 'set', A[ao + 5], A[ao + 6]
local stamp, nfields = tonumber(ts), tonumber(A[ao + 7])
local nread = tonumber(A[ao + 8 + nfields])
local hset, read = {{ts_field, ts}}, {{ts_field}}
for j = 1, nfields do
  hset[2 * j + 1] = A[ao + 7 + j]
end
for j = 1, nread do
  read[j + 1] = A[ao + 8 + nfields + j]
end
local h = ao + 9 + nfields + nread
local day, half_life = tonumber(A[h]), tonumber(A[h + 1])
local history = A[h] ~= ''
local per_values = history and nfields + 2 or nfields
local out, v, k = {{}}, h + 2, ko
for i = 1, rows do
  local key = K[k + 1]
  local got = redis.call('HMGET', key, unpack(read))
  local stored = tonumber(got[1])
  if not stored or stored <= stamp then
    for j = 1, nfields do
      hset[2 * j + 2] = A[v + j - 1]
    end
    redis.call('HSET', key, unpack(hset))
    if history then
      record_usage(K[k + 2], stamp, ts, A[v + nfields], day, A[v + nfields + 1], half_life)
    end
    for j = 2, nread + 1 do
      if not got[j] then
        got[j] = ''
      end
    end
    out[i] = table.concat(got, ',', 2, nread + 1)
  else
    out[i] = 0
  end
  v, k = v + per_values, k + per_row
end
for j = 1, items do
  local value_key = K[k + 1]
  if set_items then
    local stored = tonumber(redis.call('GET', K[k + 2]))
    if not stored or stored <= stamp then
      redis.call('SET', value_key, A[v])
      redis.call('SET', K[k + 2], ts)
    end
    v, k = v + 1, k + 2
  else
    k = k + 1
  end
  out[rows + j] = redis.call('GET', value_key)
end
return out
"""
)

# Claim, per deployment, its cooldown window, or else escalate the running window when a risk
# rule fired, in one atomic step: a risk rule met inside any window, whether its trigger is in
# flight or delivered, is escalated exactly once. Both are taken for the lease only (SETTLE gives
# them the rest of the window). KEYS: per deployment its cooldown key, escalation key and pending
# key (one slot). ARGV: now, the lease in ms, the cooldown, then per deployment '1' when a risk
# rule fired and the trigger item id it would go out with. Answers per deployment 0 (held), or
# {1 (window claimed) or 2 (escalated), the item id to send, 1 when that id is one an earlier
# unsettled claim left behind (else 0)}. A window opened by a risk rule is marked escalated at
# once: its own trigger carries the risk.
CLAIM = Script(
    f"""{PROLOGUE}
local now, lease, cooldown = A[ao + 1], tonumber(A[ao + 2]), A[ao + 3]
if ko == 1 then
  -- Keys of several slots on one cluster node: read each first, so that a key the node no longer
  -- serves fails the script before it claims anything, and the retry key by key finds no claim
  -- of its own to lose to.
  for i = 1, nk do
    redis.call('EXISTS', K[ko + i])
  end
end
local out = {{}}
for i = 1, nk / 3 do
  local window, escalation, pending = K[ko + 3 * i - 2], K[ko + 3 * i - 1], K[ko + 3 * i]
  local risk, id = A[ao + 2 * i + 2] == '1', A[ao + 2 * i + 3]
  local won, slot = 0, nil
  if redis.call('SET', window, now, 'NX', 'PX', lease) then
    if risk then
      redis.call('SET', escalation, now, 'PX', lease)
    end
    -- A new window: an escalation left pending belongs to the one before.
    redis.call('HDEL', pending, 'escalation')
    won, slot = 1, 'window'
  elseif risk then
    local left = redis.call('PTTL', window)
    if redis.call('SET', escalation, now, 'NX', 'PX', left > 0 and math.min(lease, left) or lease) then
      won, slot = 2, 'escalation'
    end
  end
  if slot then
    local prior = redis.call('HGET', pending, slot)
    if prior then
      out[i] = {{won, prior, 1}}
    else
      redis.call('HSET', pending, slot, id)
      out[i] = {{won, id, 0}}
    end
    redis.call('EXPIRE', pending, cooldown)
  else
    out[i] = 0
  end
end
return out
"""
)

# After a delivery: last_trigger on each claimed window's app hash, and each claim still ours
# (its key holds our value) kept for the rest of its window instead of its lease. KEYS: the app
# keys, then per claim its cooldown, escalation and pending keys. ARGV: our value, the window's
# milliseconds left, now, the cooldown, the count of app keys, then per claim its WINDOW,
# RISKY_WINDOW or ESCALATION flag. An escalation ends with its window: the window's value is when
# it was claimed.
SETTLE = Script(
    f"""{PROLOGUE}
local value, left, now, cooldown = A[ao + 1], tonumber(A[ao + 2]), tonumber(A[ao + 3]), tonumber(A[ao + 4])
local apps = tonumber(A[ao + 5])
local function keep(key, ms)
  if ms > 0 then
    redis.call('PEXPIRE', key, ms)
  else
    redis.call('DEL', key)
  end
end
local out = {{}}
for i = 1, apps do
  out[i] = redis.call('HSET', K[ko + i], 'last_trigger', value)
end
for i = 1, (nk - apps) / 3 do
  local k = ko + apps + 3 * i - 3
  local window, escalation, pending = K[k + 1], K[k + 2], K[k + 3]
  local flag, done = A[ao + 5 + i], 0
  if flag == '{ESCALATION}' then
    if redis.call('GET', escalation) == value then
      local opened = tonumber(redis.call('GET', window))
      if opened then
        keep(escalation, math.floor((opened + cooldown - now) * 1000))
      end
      redis.call('HDEL', pending, 'escalation')
      done = 1
    end
  elseif redis.call('GET', window) == value then
    keep(window, left)
    if flag == '{RISKY_WINDOW}' and redis.call('GET', escalation) == value then
      keep(escalation, left)
    end
    redis.call('HDEL', pending, 'window')
    done = 1
  end
  out[apps + i] = done
end
return out
"""
)

# Give back claims, each only while it still holds our value: a later claim must survive our
# failure. Then, optionally, keep a failed delivery's record. ARGV: our value, the count of
# release units, each one's WINDOW, RISKY_WINDOW or ESCALATION flag, then the record. KEYS: per
# release unit its cooldown, escalation and pending keys, then the failed list.
RELEASE = Script(
    f"""{PROLOGUE}
local value, releases = A[ao + 1], tonumber(A[ao + 2])
local out = {{}}
for i = 1, releases do
  local window, escalation, pending = K[ko + 3 * i - 2], K[ko + 3 * i - 1], K[ko + 3 * i]
  local flag, done = A[ao + 2 + i], 0
  if flag ~= '{ESCALATION}' and redis.call('GET', window) == value then
    done = done + redis.call('DEL', window)
    redis.call('HDEL', pending, 'window')
  end
  if flag ~= '{WINDOW}' and redis.call('GET', escalation) == value then
    done = done + redis.call('DEL', escalation)
    if flag == '{ESCALATION}' then
      redis.call('HDEL', pending, 'escalation')
    end
  end
  out[i] = done
end
if nk > 3 * releases then
  local failed = K[ko + 3 * releases + 1]
  redis.call('LPUSH', failed, A[ao + 3 + releases])
  redis.call('LTRIM', failed, 0, {FAILED_KEEP - 1})
  out[releases + 1] = 1
end
return out
"""
)

# The readiness probe. A script declared with a shebang and no flags is one Redis treats as a write
# before it runs: refused on a read-only replica (READONLY), over maxmemory (OOM), without
# +@scripting (NOPERM), so running it answers "would an ingest's writes succeed now" in one call.
READY = Script("#!lua\nreturn 1\n")


def decode(raw: bytes) -> float:
    """A stored number (bytes) back into an int or float; stored numbers are never negative."""
    return int(raw) if raw.isdigit() else float(raw)


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

    @property
    def sent(self) -> list[str]:
        """Every deployment won: the windows, then the escalations."""
        return self.claimed + self.escalated

    @property
    def value(self) -> str:
        """What the claims' keys hold while they are ours."""
        return str(int(self.now))

    def flags(self) -> list[tuple[str, str]]:
        """(name, WINDOW, RISKY_WINDOW or ESCALATION) for each deployment won."""
        return [(name, RISKY_WINDOW if name in self.risky else WINDOW) for name in self.claimed] + [
            (name, ESCALATION) for name in self.escalated
        ]


@dataclass
class SavedPayload:
    """What a payload left in Redis: the state of each deployment written, and those skipped."""

    states: dict[str, dict] = field(default_factory=dict)
    stale: list[str] = field(default_factory=list)
    cluster: dict[str, float | None] = field(default_factory=dict)


class StateRepository:
    """Reads and writes aggregator state in Redis; see the module docstring for the keys."""

    def __init__(
        self,
        redis,
        cooldown_seconds,
        history_half_life_seconds: float | None = DEFAULT_HALF_LIFE_SECONDS,
        claim_lease_seconds: float = DEFAULT_CLAIM_LEASE_SECONDS,
    ):
        """`history_half_life_seconds=None` keeps no usage history (the benchmark's baseline)."""
        self.redis = redis
        self.cooldown_seconds = cooldown_seconds
        self.history_half_life_seconds = history_half_life_seconds
        # A lease longer than the window would outlast it: then the window is the lease.
        self.claim_lease_ms = int(min(claim_lease_seconds, cooldown_seconds) * 1000)
        self.runner = runner_for(redis)

    # Key names live here and nowhere else.
    @staticmethod
    def app_key(namespace: str, name: str) -> str:
        """The hash holding one deployment's merged state."""
        return f"app:{namespace}:{name}"

    @classmethod
    def history_key(cls, namespace: str, name: str) -> str:
        """The usage history of one deployment, hash-tagged into the slot of its app key."""
        return f"{{{cls.app_key(namespace, name)}}}:history"

    @staticmethod
    def trigger_key(namespace: str, name: str) -> str:
        """The cooldown key of one deployment."""
        return f"trigger:{namespace}:{name}"

    @classmethod
    def escalation_key(cls, namespace: str, name: str) -> str:
        """The key marking that a risk rule was claimed in the deployment's window; in its slot."""
        return f"{{{cls.trigger_key(namespace, name)}}}:escalation"

    @classmethod
    def pending_key(cls, namespace: str, name: str) -> str:
        """The ids of the deployment's claims not yet settled or released; in its cooldown key's slot."""
        return f"{{{cls.trigger_key(namespace, name)}}}:pending"

    def claim_keys(self, namespace: str, name: str) -> tuple[str, str, str]:
        """The keys of one deployment's claims, all in one slot: cooldown, escalation, pending."""
        return (
            self.trigger_key(namespace, name),
            self.escalation_key(namespace, name),
            self.pending_key(namespace, name),
        )

    @staticmethod
    def failed_key(namespace: str) -> str:
        """The capped list of deliveries that failed for good."""
        return f"triggers:{namespace}:failed"

    @staticmethod
    def cluster_key(namespace: str, item: str) -> str:
        """One of the cluster-wide keys: cost, vm_count or req_cpu_total."""
        return f"cluster:{namespace}:{item}"

    @classmethod
    def cluster_timestamp_key(cls, namespace: str, item: str) -> str:
        """The key holding the payload time of a cluster key, hash-tagged into that key's slot."""
        return f"{{{cls.cluster_key(namespace, item)}}}:timestamp"

    def check_ready(self) -> None:
        """Raise the Redis error an ingest would meet now: down, read-only, out of memory, no permission,
        a cluster missing slots (the write probe runs on every primary)."""
        self.runner.probe(READY)

    def save_cost(self, payload: dict) -> "SavedPayload":
        """Store a loaded cost payload, cluster totals included; one script call (per node)."""
        namespace = payload["namespace"]
        totals = {
            "cost": payload["cluster_totals"]["current_hourly_cost_gbp"],
            "vm_count": payload["cluster_totals"]["vm_count"],
            "req_cpu_total": sum(row["req_cpu"] for row in payload["deployments"]),
            "req_mem_total": sum(row["req_mem"] for row in payload["deployments"]),
        }
        items = [
            Unit(
                (self.cluster_key(namespace, item), self.cluster_timestamp_key(namespace, item)),
                (totals[item],),
                ITEM,
            )
            for item in CLUSTER_ITEMS
        ]
        return self._save(payload, "cost_timestamp", COST_FIELDS, "set", items, history=True)

    def save_forecast(self, payload: dict) -> "SavedPayload":
        """Store a loaded forecast payload and read the cluster totals; one script call (per node)."""
        namespace = payload["namespace"]
        items = [Unit((self.cluster_key(namespace, item),), (), ITEM) for item in CLUSTER_ITEMS]
        return self._save(payload, "forecast_timestamp", FORECAST_FIELDS, "get", items)

    def _save(self, payload, ts_field, value_fields, item_mode, items, history=False):
        namespace, stamp = payload["namespace"], payload["timestamp"]
        deployments = payload["deployments"]
        read_back = READ_BACK[ts_field]
        app_key = self.app_key
        values = itemgetter(*value_fields)
        half_life = self.history_half_life_seconds if history else None
        # Numbers go as they are: the client writes an int with str() and a float with repr() (its
        # shortest exact form), which is how Redis stores them and decode() reads them back.
        usage: tuple[int | str, float]  # the history's UTC day and half-life; '' for no history
        if half_life is not None:
            # The worker, not Redis's one thread, works out each sample's bucket and day.
            history_key = self.history_key
            usage = (int(stamp // WINDOW_SECONDS), half_life)
            rows = [
                Unit(
                    (app_key(namespace, name), history_key(namespace, name)),
                    (*values(row), f"cpu:{bucket_index(row['usage_cpu_curr'])}", row["usage_mem_curr"]),
                )
                for row in deployments
                for name in (row["name"],)
            ]
        else:
            usage = ("", 0)
            rows = [Unit((app_key(namespace, row["name"]),), values(row)) for row in deployments]
        keys_per_row = 1 if half_life is None else 2

        def header(units):
            count = sum(unit.kind == ROW for unit in units)
            return [
                *(count, keys_per_row, len(units) - count, item_mode, ts_field, stamp),
                *(len(value_fields), *value_fields, len(read_back), *read_back, *usage),
            ]

        replies = self.runner.run(SAVE, rows + items, header)
        raise_first(replies)
        saved = SavedPayload()
        for row, reply in zip(deployments, replies):
            if reply == 0:
                saved.stale.append(row["name"])
                continue
            # What was written is the payload's own numbers; only the rest comes back from Redis.
            state = {name: row[name] for name in value_fields}
            state[ts_field] = stamp
            for name, raw in zip(read_back, reply.split(b",")):
                if raw:
                    state[name] = decode(raw)
            saved.states[row["name"]] = state
        saved.cluster = _cluster(replies[len(rows) :])
        return saved

    def histories(self, namespace: str, names: Sequence[str]) -> dict[str, History]:
        """The decoded usage history of each of `names` ({name: History}); one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(self.history_key(namespace, name))
        replies = pipe.execute() if names else []
        return {name: decode_history(flat) for name, flat in zip(names, replies)}

    def claim(
        self,
        namespace: str,
        names: Sequence[str],
        risky: Collection[str],
        now: float,
        ids: Mapping[str, str] | None = None,
    ) -> Claims:
        """For each of `names`, claim its cooldown window, or else escalate its running window when
        it is in `risky` (a risk rule fired); atomically per deployment, so that of any number of
        concurrent requests one wins each window and one each escalation. Each claim holds for the
        claim lease until settle_delivered() or release(). `ids` gives the trigger item id a
        deployment goes out with (a fresh one otherwise); a claim left unsettled before keeps its own.

        On a cluster, if some node's call fails, what the others claimed is released before raising.
        """
        ids = ids or {}
        units = [
            Unit(self.claim_keys(namespace, name), ("1" if name in risky else "0", ids.get(name) or str(uuid.uuid4())))
            for name in names
        ]
        started = time.monotonic()
        replies = self.runner.run(CLAIM, units, lambda _: [str(int(now)), self.claim_lease_ms, self.cooldown_seconds])
        claimed: list[str] = []
        escalated: list[str] = []
        won_ids: dict[str, str] = {}
        reclaimed: list[str] = []
        for name, reply in zip(names, replies):
            if isinstance(reply, list):
                kind, item_id, prior = reply
                (claimed if kind == CLAIMED else escalated).append(name)
                won_ids[name] = item_id.decode()
                if prior:
                    reclaimed.append(name)
        claims = Claims(now, started, claimed, escalated, frozenset(risky) & set(claimed), won_ids, reclaimed)
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
        units = [Unit(self.claim_keys(namespace, name), (flag,)) for name, flag in claims.flags()]
        if record is not None:
            units.append(Unit((self.failed_key(namespace),), (_record_json(record),), ITEM))
        if not units:
            return

        def header(subset):
            return [claims.value, sum(unit.kind == ROW for unit in subset)]

        raise_first(self.runner.run(RELEASE, units, header))

    def settle_delivered(self, namespace: str, claims: Claims) -> None:
        """After a delivery: note `last_trigger` for the windows claimed, and keep every claim still
        ours for the rest of its window."""
        units = [Unit((self.app_key(namespace, name),)) for name in claims.claimed]
        units += [Unit(self.claim_keys(namespace, name), (flag,), ITEM) for name, flag in claims.flags()]
        if not units:
            return
        elapsed = time.monotonic() - claims.started
        left_ms = int((self.cooldown_seconds - elapsed) * 1000)

        def header(subset):
            apps = sum(unit.kind == ROW for unit in subset)
            return [claims.value, left_ms, claims.now + elapsed, self.cooldown_seconds, apps]

        raise_first(self.runner.run(SETTLE, units, header))

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
