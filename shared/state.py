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
- ``trigger:{namespace}:{name}``: Unix seconds of the last trigger claim; expires after the
  cooldown. Setting it (``SET NX EX``) is what claims a deployment's cooldown window.
- ``trigger:{namespace}:{name}:escalation``: set when a risk rule has been sent inside the current
  window, so that a window a waste rule opened is escalated by a risk rule at most once.
- ``triggers:{namespace}:failed``: list of JSON records of deliveries that failed for good,
  newest first, capped at 1000 entries.

Every atomic step touches one key (or a key and its hash-tagged timestamp), so the layout works
unchanged on Redis Cluster, where ``app:`` and ``trigger:`` keys of one deployment live on
different nodes. The Redis work of one request is a constant number of pipelined round trips,
whatever the number of deployments.
"""

import json
import math
from dataclasses import dataclass, field

from redis.exceptions import NoScriptError

CLUSTER_ITEMS = ("cost", "vm_count", "req_cpu_total")
FAILED_KEEP = 1000
COST_FIELDS = ("req_cpu", "req_mem", "usage_cpu_curr", "usage_mem_curr")
FORECAST_FIELDS = ("pred_cpu_peak", "pred_mem_peak")
# Field names as Redis returns them, so that thousands of replies need no decoding of names.
FIELD_NAMES = {
    name.encode(): name
    for name in (*COST_FIELDS, *FORECAST_FIELDS, "cost_timestamp", "forecast_timestamp", "last_trigger")
}

# Per deployment: write the payload's fields unless the stored data from the same source is
# newer, then return the whole hash, so rules always see what is stored after the write.
SAVE_APP_FIELDS = """
local stored = tonumber(redis.call('HGET', KEYS[1], ARGV[1]))
local written = 0
if not stored or stored <= tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2], unpack(ARGV, 3))
  written = 1
end
return {written, redis.call('HGETALL', KEYS[1])}
"""

# Set a cluster value (KEYS[1]) unless its timestamp key (KEYS[2], same slot) holds a newer
# payload's time; return the value stored afterwards.
SET_IF_NEWER = """
local stored = tonumber(redis.call('GET', KEYS[2]))
if not stored or stored <= tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[2])
  redis.call('SET', KEYS[2], ARGV[1])
end
return redis.call('GET', KEYS[1])
"""

# Release a cooldown claim only if it is still ours: a later claim must survive our failure.
RELEASE_CLAIM = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


SCRIPTS = {"save": SAVE_APP_FIELDS, "set_if_newer": SET_IF_NEWER, "release": RELEASE_CLAIM}


def encode(value):
    """A number as Redis stores it: ints stay ints, floats keep their shortest exact form."""
    return str(value) if isinstance(value, int) else repr(float(value))


def decode(raw):
    """A stored number (bytes) back into an int or float; stored numbers are never negative."""
    return int(raw) if raw.isdigit() else float(raw)


def _hash_to_state(flat):
    """HGETALL's flat [field, value, ...] reply as a dict of numbers."""
    return {FIELD_NAMES.get(flat[i]) or flat[i].decode(): decode(flat[i + 1]) for i in range(0, len(flat), 2)}


@dataclass
class SavedPayload:
    """What a payload left in Redis: the state of each deployment written, and those skipped."""

    states: dict = field(default_factory=dict)
    stale: list = field(default_factory=list)
    cluster: dict = field(default_factory=dict)


class StateRepository:
    """Reads and writes aggregator state in Redis; see the module docstring for the keys."""

    def __init__(self, redis, cooldown_seconds):
        self.redis = redis
        self.cooldown_seconds = cooldown_seconds
        self._shas = None

    # Key names live here and nowhere else.
    @staticmethod
    def app_key(namespace, name):
        """The hash holding one deployment's merged state."""
        return f"app:{namespace}:{name}"

    @staticmethod
    def trigger_key(namespace, name):
        """The cooldown key of one deployment."""
        return f"trigger:{namespace}:{name}"

    @classmethod
    def escalation_key(cls, namespace, name):
        """The key marking that a risk rule was sent in the deployment's current window."""
        return f"{cls.trigger_key(namespace, name)}:escalation"

    @staticmethod
    def failed_key(namespace):
        """The capped list of deliveries that failed for good."""
        return f"triggers:{namespace}:failed"

    @staticmethod
    def cluster_key(namespace, item):
        """One of the cluster-wide keys: cost, vm_count or req_cpu_total."""
        return f"cluster:{namespace}:{item}"

    @classmethod
    def cluster_timestamp_key(cls, namespace, item):
        """The key holding the payload time of a cluster key, hash-tagged into that key's slot."""
        return f"{{{cls.cluster_key(namespace, item)}}}:timestamp"

    def ping(self):
        """Raise a redis error unless Redis answers."""
        self.redis.ping()

    def save_cost(self, payload):
        """Store a loaded cost payload, cluster totals included; one round trip."""
        namespace, ts = payload["namespace"], encode(payload["timestamp"])
        totals = {
            "cost": payload["cluster_totals"]["current_hourly_cost_gbp"],
            "vm_count": payload["cluster_totals"]["vm_count"],
            "req_cpu_total": sum(row["req_cpu"] for row in payload["deployments"]),
        }

        def build(pipe, shas):
            self._queue_app_writes(pipe, shas, payload, "cost_timestamp", COST_FIELDS)
            for item in CLUSTER_ITEMS:
                keys = (self.cluster_key(namespace, item), self.cluster_timestamp_key(namespace, item))
                _evalsha(pipe, shas["set_if_newer"], keys, ts, encode(totals[item]))

        replies = self._run(build)
        saved = self._collect(payload["deployments"], replies)
        saved.cluster = _cluster(replies[-len(CLUSTER_ITEMS) :])
        return saved

    def save_forecast(self, payload):
        """Store a loaded forecast payload and read the cluster totals; one round trip."""
        namespace = payload["namespace"]

        def build(pipe, shas):
            self._queue_app_writes(pipe, shas, payload, "forecast_timestamp", FORECAST_FIELDS)
            for item in CLUSTER_ITEMS:
                pipe.get(self.cluster_key(namespace, item))

        replies = self._run(build)
        saved = self._collect(payload["deployments"], replies)
        saved.cluster = _cluster(replies[-len(CLUSTER_ITEMS) :])
        return saved

    def claim(self, namespace, names, escalations, now):
        """Claim cooldown windows for `names` and escalations for `escalations` ({name: seconds}).

        Both are SET NX EX, so of any number of concurrent requests one wins each key. An
        escalation lives only as long as the window it escalates. Returns (claimed, escalated).
        """
        value = str(int(now))

        def build(pipe, shas):
            for name in names:
                pipe.set(self.trigger_key(namespace, name), value, nx=True, ex=self.cooldown_seconds)
            for name, seconds in escalations.items():
                pipe.set(self.escalation_key(namespace, name), value, nx=True, ex=max(1, math.ceil(seconds)))

        replies = self._run(build) if names or escalations else []
        claimed = [name for name, won in zip(names, replies) if won]
        escalated = [name for name, won in zip(escalations, replies[len(names) :]) if won]
        return claimed, escalated

    def settle_delivered(self, namespace, claimed, risk, now):
        """After a delivery: note `last_trigger` for the windows claimed at `now`, and mark the ones
        opened by a risk rule (`risk`) as escalated already, so that no second risk trigger follows."""
        value = str(int(now))

        def build(pipe, shas):
            for name in claimed:
                pipe.hset(self.app_key(namespace, name), "last_trigger", value)
            for name in risk:
                pipe.set(self.escalation_key(namespace, name), value, nx=True, ex=self.cooldown_seconds)

        self._run(build)

    def settle_failed(self, namespace, claimed, escalated, now, record):
        """After a failed delivery: give back the claims made at `now` and keep `record` for people to read."""
        value = str(int(now))
        keys = [self.trigger_key(namespace, n) for n in claimed]
        keys += [self.escalation_key(namespace, n) for n in escalated]

        def build(pipe, shas):
            for key in keys:
                _evalsha(pipe, shas["release"], (key,), value)
            pipe.lpush(self.failed_key(namespace), _record_json(record))
            pipe.ltrim(self.failed_key(namespace), 0, FAILED_KEEP - 1)

        self._run(build)

    def failed_triggers(self, namespace, limit=FAILED_KEEP):
        """The records of failed deliveries, newest first."""
        return [json.loads(raw) for raw in self.redis.lrange(self.failed_key(namespace), 0, limit - 1)]

    def remove_failed(self, namespace, record):
        """Drop one record, as failed_triggers returned it, from the failed list; True when it was there."""
        return bool(self.redis.lrem(self.failed_key(namespace), 1, _record_json(record)))

    def running_windows(self, namespace, names):
        """{name: (claimed at, seconds left)} for the deployments of `names` whose cooldown window is claimed."""

        def build(pipe, shas):
            for name in names:
                pipe.get(self.trigger_key(namespace, name))
                pipe.pttl(self.trigger_key(namespace, name))

        replies = self._run(build) if names else []
        windows = {}
        for name, claimed_at, left_ms in zip(names, replies[::2], replies[1::2]):
            if claimed_at is not None and left_ms > 0:
                windows[name] = (int(claimed_at), left_ms / 1000)
        return windows

    def _queue_app_writes(self, pipe, shas, payload, ts_field, value_fields):
        namespace, ts = payload["namespace"], encode(payload["timestamp"])
        for row in payload["deployments"]:
            args = [ts_field, ts]
            for name in value_fields:
                args += (name, encode(row[name]))
            _evalsha(pipe, shas["save"], (self.app_key(namespace, row["name"]),), *args)

    @staticmethod
    def _collect(deployments, replies):
        saved = SavedPayload()
        for row, (written, flat) in zip(deployments, replies):
            if written:
                saved.states[row["name"]] = _hash_to_state(flat)
            else:
                saved.stale.append(row["name"])
        return saved

    def _run(self, build):
        """Send what `build` queues in one pipeline; reload the Lua scripts once if Redis lost them."""
        if self._shas is None:
            self._load_scripts()
        replies = self._execute(build)
        if any(isinstance(reply, NoScriptError) for reply in replies):
            # Redis restarted or flushed its script cache; the scripts are idempotent, so rerun.
            self._load_scripts()
            replies = self._execute(build)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    def _execute(self, build):
        pipe = self.redis.pipeline(transaction=False)
        build(pipe, self._shas)
        return pipe.execute(raise_on_error=False)

    def _load_scripts(self):
        self._shas = {name: self.redis.script_load(body) for name, body in SCRIPTS.items()}


def _record_json(record):
    """A failed-delivery record as the list stores it; LREM finds a record by this exact text."""
    return json.dumps(record, separators=(",", ":"))


def _evalsha(pipe, sha, keys, *args):
    # Through execute_command: redis-py's cluster pipeline blocks its evalsha() method, yet routes
    # an EVALSHA by its keys (all in one slot here) like any other command.
    pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args)


def _cluster(replies):
    """The stored cluster totals (None where no cost payload has set them yet)."""
    cost, vm_count, req_cpu_total = (None if raw is None else decode(raw) for raw in replies)
    return {"hourly_cost_gbp": cost, "vm_count": vm_count, "req_cpu_total": req_cpu_total}
