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
number of deployments.
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

from shared.core.episodes import APPLIED, RESOLVED, EpisodePolicy, Mirror
from shared.core.history import RECORD_USAGE_LUA, WINDOW_SECONDS, History, bucket_index, decode_history
from shared.store.runner import PROLOGUE, Script, Unit, raise_first, runner_for

CLUSTER_ITEMS = ("cost", "vm_count", "req_cpu_total", "req_mem_total")
DEFAULT_HALF_LIFE_SECONDS = 24 * 3600
FAILED_KEEP = 1000
COST_FIELDS = ("req_cpu", "req_mem", "usage_cpu_curr", "usage_mem_curr")
FORECAST_FIELDS = ("pred_cpu_peak", "pred_mem_peak")
# What a save reads back of a deployment's hash besides what it writes: the other source's
# fields and last_trigger, so the rules see the state as stored after the write.
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

# Store one payload. Arguments: the counts of rows, keys per row and items; the item mode ('set'
# for cost, 'get' for forecast); the timestamp field and the payload's timestamp; the count and
# names of the value fields written, then of the fields read back; the history's UTC day number
# and half-life ('' and 0 for no history recorded); now (the service's clock), the app hash's
# lifetime (0: for ever), where last_trigger and quiet_since are among the fields read, the
# cooldown and '1' to send every mirror; each row's values in that order (with a history, then
# its CPU bucket field and memory); each written item's value. Keys: each row's keys (its app
# hash first, then its usage history when histories are kept), then each item's (the cluster
# key, and with 'set' its timestamp key). Per row: write unless the stored data from the same
# source is newer, count the sample in the usage history (record_usage skips a sample it counted
# already), and answer the read-back fields as one comma-joined string ('' where absent), or 0
# when skipped. A row whose app hash holds an episode mirror answers {that string} inside its
# running window (a waste rule is held there without it), else {that string, the mirror}, with
# the usage history's fields third once `watch` (the time from which the episode may need the
# recommendation) has come. The app hash's lifetime is renewed on the first sample of each hour
# of payload time. Per item: with 'set', write unless its timestamp key is newer; answer the
# value stored after. The per-row work is kept to one HMGET and one HSET (two more with a
# history): Redis time per deployment is what bounds a large payload.
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
read[nread + 2] = 'watch'
local h = ao + 9 + nfields + nread
local day, half_life = tonumber(A[h]), tonumber(A[h + 1])
local now, ttl = tonumber(A[h + 2]), tonumber(A[h + 3])
local last_at, quiet_at, cooldown, always = tonumber(A[h + 4]), tonumber(A[h + 5]), tonumber(A[h + 6]), A[h + 7] == '1'
local history = A[h] ~= ''
local per_values = history and nfields + 2 or nfields
local out, v, k = {{}}, h + 8, ko
for i = 1, rows do
  local key = K[k + 1]
  local got = redis.call('HMGET', key, unpack(read))
  local stored = tonumber(got[1])
  if not stored or stored <= stamp then
    for j = 1, nfields do
      hset[2 * j + 2] = A[v + j - 1]
    end
    redis.call('HSET', key, unpack(hset))
    if ttl > 0 and (not stored or math.floor(stored / 3600) ~= math.floor(stamp / 3600)) then
      redis.call('EXPIRE', key, ttl)
    end
    if history then
      record_usage(K[k + 2], stamp, ts, A[v + nfields], day, A[v + nfields + 1], half_life)
    end
    for j = 2, nread + 1 do
      if not got[j] then
        got[j] = ''
      end
    end
    local joined = table.concat(got, ',', 2, nread + 1)
    local watch = got[nread + 2]
    if not watch then
      out[i] = joined
    else
      -- Inside a running window a waste rule is held without the episode; past it, or with a
      -- quiet count running, the worker needs the mirror.
      local last = tonumber(got[last_at])
      if always or not last or last + cooldown <= now or got[quiet_at] ~= '' then
        local mirror = redis.call('HGET', key, 'episode') or ''
        watch = tonumber(watch)
        if per_row > 1 and watch and watch <= now then
          out[i] = {{joined, mirror, redis.call('HGETALL', K[k + 2])}}
        else
          out[i] = {{joined, mirror}}
        end
      else
        out[i] = {{joined}}
      end
    end
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

# Decide, per firing deployment, what goes to the agent, and claim it, in one atomic step over
# the deployment's trigger slot: its window, escalation, pending ids, episode and the block after
# `applied`. With the window free: the first item of a new episode (unless `applied` blocks a
# waste-only one), or in an open episode a `changed` item, a `reminder` once the reminder
# interval has run since the last window's item, or with a risk rule always; a snooze holds
# every waste item back, `no_change` the reminders. With the window running: a risk rule
# escalates it once (a window opened by a risk rule is marked escalated at once). What is won is
# taken for the lease only (SETTLE gives it the rest of the window), and counts the episode's next
# sequence number, unless an earlier claim of the same slot was left unsettled: then its item id,
# sequence and notify are sent again. KEYS: per deployment its cooldown, escalation, pending,
# episode and applied keys (one slot). ARGV: now, the lease in ms, the cooldown, the reminder
# interval, the episode's lifetime, then per deployment '1' when a risk rule fired, '1' when
# something material changed, the item id and the id a new episode would get. Answers per
# deployment 0 (held by the window), 3 (held by the reminder interval, a decision or `applied`),
# or {1 (window) or 2 (escalation), item id, 1 when re-sent for an unsettled claim (else 0),
# episode id, its opened_at, sequence, notify, the decision in force ('' if none), its until,
# the reminder interval in force}. After `no_change`, reminders come at most once per the span the
# agent gave (`until` - when it decided), also once that span is over.
CLAIM = Script(
    f"""{PROLOGUE}
local now, lease, cooldown = A[ao + 1], tonumber(A[ao + 2]), tonumber(A[ao + 3])
local clock, reminder, episode_ttl = tonumber(A[ao + 1]), tonumber(A[ao + 4]), A[ao + 5]
if ko == 1 then
  -- Keys of several slots on one cluster node: read each first, so that a key the node no longer
  -- serves fails the script before it claims anything, and the retry key by key finds no claim
  -- of its own to lose to.
  for i = 1, nk do
    redis.call('EXISTS', K[ko + i])
  end
end
local out = {{}}
for i = 1, nk / 5 do
  local b, a = ko + 5 * i - 5, ao + 5 + 4 * i - 4
  local window, escalation, pending, episode, applied = K[b + 1], K[b + 2], K[b + 3], K[b + 4], K[b + 5]
  local risk, changed, item_id, new_episode = A[a + 1] == '1', A[a + 2] == '1', A[a + 3], A[a + 4]
  local ep = redis.call('HMGET', episode, 'id', 'opened_at', 'window_at', 'decision', 'until', 'decided_at')
  local until_ = tonumber(ep[5]) or 0
  local decision = (ep[1] and until_ > clock) and ep[4] or ''
  -- After `no_change` the agent is reminded at most as often as the span it asked for.
  local every = reminder
  if ep[4] == 'no_change' and tonumber(ep[6]) then
    every = math.max(reminder, until_ - tonumber(ep[6]))
  end
  local slot, notify = nil, nil
  -- The window runs on the claims' clock: its key's TTL only tidies up after it (and frees a
  -- claim whose lease ran out).
  local opened = tonumber(redis.call('GET', window))
  if not opened or opened + cooldown <= clock then
    if not ep[1] then
      if risk or redis.call('EXISTS', applied) == 0 then
        notify = 'first'
      end
    elseif risk then
      notify = changed and 'changed' or 'reminder'
    elseif decision ~= 'snooze' then
      if changed then
        notify = 'changed'
      elseif decision ~= 'no_change' and (not ep[3] or tonumber(ep[3]) + every <= clock) then
        notify = 'reminder'
      end
    end
    if notify then
      redis.call('SET', window, now, 'PX', lease)
      if risk then
        redis.call('SET', escalation, now, 'PX', lease)
      end
      -- A new window: an escalation left pending belongs to the one before.
      redis.call('HDEL', pending, 'escalation')
      slot = 'window'
    else
      out[i] = 3
    end
  elseif risk then
    -- An escalation key older than the window belongs to an earlier one.
    local taken = tonumber(redis.call('GET', escalation))
    if not taken or taken < opened then
      local left = math.floor((opened + cooldown - clock) * 1000)
      redis.call('SET', escalation, now, 'PX', math.max(1, math.min(lease, left)))
      slot, notify = 'escalation', ep[1] and 'escalation' or 'first'
    end
  end
  if slot then
    if not ep[1] then
      ep[1], ep[2] = new_episode, now
      redis.call('HSET', episode, 'id', new_episode, 'opened_at', now, 'sequence', 0)
    end
    local prior, id, sequence, reclaimed = redis.call('HGET', pending, slot), item_id, nil, 0
    if prior then
      local p1, p2 = string.find(prior, ' ', 1, true)
      local p3 = string.find(prior, ' ', p2 + 1, true)
      id, sequence, notify, reclaimed = string.sub(prior, 1, p1 - 1), tonumber(string.sub(prior, p2 + 1, p3 - 1)),
        string.sub(prior, p3 + 1), 1
    else
      sequence = redis.call('HINCRBY', episode, 'sequence', 1)
      redis.call('HSET', pending, slot, id .. ' ' .. sequence .. ' ' .. notify)
    end
    redis.call('EXPIRE', pending, cooldown)
    redis.call('EXPIRE', episode, episode_ttl)
    out[i] = {{slot == 'window' and 1 or 2, id, reclaimed, ep[1], ep[2], sequence, notify, decision, until_, every}}
  elseif not out[i] then
    out[i] = 0
  end
end
return out
"""
)

# Claim the resolved item of each open episode that has gone quiet, once per episode: the
# `resolving` key is its lease, its pending id and sequence survive it. KEYS: per deployment its
# resolving, pending and episode keys. ARGV: our value, the lease in ms, then per deployment the
# episode id the mirror names and the item id. Answers per deployment 0 (no such episode open, or
# its resolution in flight) or {item id, 1 when re-sent for an unsettled claim (else 0), opened_at,
# sequence}.
RESOLVE = Script(
    f"""{PROLOGUE}
local value, lease = A[ao + 1], tonumber(A[ao + 2])
local out = {{}}
for i = 1, nk / 3 do
  local resolving, pending, episode = K[ko + 3 * i - 2], K[ko + 3 * i - 1], K[ko + 3 * i]
  local episode_id, item_id = A[ao + 2 * i + 1], A[ao + 2 * i + 2]
  local ep = redis.call('HMGET', episode, 'id', 'opened_at')
  if ep[1] == episode_id and redis.call('SET', resolving, value, 'NX', 'PX', lease) then
    local prior = redis.call('HGET', pending, 'resolved')
    if prior then
      local p1 = string.find(prior, ' ', 1, true)
      out[i] = {{string.sub(prior, 1, p1 - 1), 1, ep[2], tonumber(string.sub(prior, p1 + 1))}}
    else
      local sequence = redis.call('HINCRBY', episode, 'sequence', 1)
      redis.call('HSET', pending, 'resolved', item_id .. ' ' .. sequence)
      out[i] = {{item_id, 0, ep[2], sequence}}
    end
  else
    out[i] = 0
  end
end
return out
"""
)

# After a delivery. App units (KEYS: the app key; ARGV: last_trigger ('' for none), the episode
# mirror ('' to drop it with `watch` and `quiet_since`: the episode ended), `watch`): note them.
# Claim units (KEYS: cooldown, escalation, pending, episode, resolving keys; ARGV: the WINDOW,
# RISKY_WINDOW, ESCALATION or RESOLUTION flag, the episode id, the item's notify and its reasons
# as JSON): each
# claim still ours (its key holds our value) is kept for the rest of its window instead of its
# lease and its pending id dropped, and the episode notes the item (a window item also restarts the
# reminder clock); a resolution ends the episode. ARGV first: our value, the window's milliseconds
# left, now, the cooldown, the count of app units, the episode's lifetime. An escalation ends with
# its window: the window's value is when it was claimed.
SETTLE = Script(
    f"""{PROLOGUE}
local value, left, now, cooldown = A[ao + 1], tonumber(A[ao + 2]), tonumber(A[ao + 3]), tonumber(A[ao + 4])
local apps, episode_ttl = tonumber(A[ao + 5]), A[ao + 6]
local function keep(key, ms)
  if ms > 0 then
    redis.call('PEXPIRE', key, ms)
  else
    redis.call('DEL', key)
  end
end
local out, a = {{}}, ao + 6
for i = 1, apps do
  local key, last, mirror, watch = K[ko + i], A[a + 1], A[a + 2], A[a + 3]
  if last ~= '' then
    redis.call('HSET', key, 'last_trigger', last)
  end
  if mirror ~= '' then
    redis.call('HSET', key, 'episode', mirror, 'watch', watch)
  else
    redis.call('HDEL', key, 'episode', 'watch', 'quiet_since')
  end
  out[i], a = 1, a + 3
end
for i = 1, (nk - apps) / 5 do
  local k = ko + apps + 5 * i - 5
  local window, escalation, pending, episode, resolving = K[k + 1], K[k + 2], K[k + 3], K[k + 4], K[k + 5]
  local flag, episode_id, notify, reasons, done = A[a + 1], A[a + 2], A[a + 3], A[a + 4], 0
  local ours = redis.call('HGET', episode, 'id') == episode_id
  if flag == '{RESOLUTION}' then
    if redis.call('GET', resolving) == value then
      redis.call('DEL', resolving, pending)
      if ours then
        redis.call('DEL', episode)
      end
      done = 1
    end
  elseif flag == '{ESCALATION}' then
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
    if ours then
      redis.call('HSET', episode, 'window_at', value)
    end
    done = 1
  end
  if done == 1 and ours and flag ~= '{RESOLUTION}' then
    redis.call('HSET', episode, 'last_sent_at', value, 'notify', notify, 'reasons', reasons)
    redis.call('EXPIRE', episode, episode_ttl)
  end
  out[apps + i], a = done, a + 4
end
return out
"""
)

# Give back claims, each only while it still holds our value: a later claim must survive our
# failure. A claim's sequence number is given back while it is still the episode's last, and an
# episode whose first item failed is gone again. Then, optionally, keep a failed delivery's
# record. ARGV: our value, the count of release units, each one's WINDOW, RISKY_WINDOW,
# ESCALATION or RESOLUTION flag, then the record. KEYS: per release unit its cooldown,
# escalation, pending, episode and resolving keys, then the failed list.
RELEASE = Script(
    f"""{PROLOGUE}
local value, releases = A[ao + 1], tonumber(A[ao + 2])
local function give_back(pending, episode, slot)
  local prior = redis.call('HGET', pending, slot)
  redis.call('HDEL', pending, slot)
  if not prior then
    return
  end
  local p1 = string.find(prior, ' ', 1, true)
  local p2 = string.find(prior, ' ', p1 + 1, true)
  local sequence = tonumber(string.sub(prior, p1 + 1, p2 and p2 - 1 or nil))
  if tonumber(redis.call('HGET', episode, 'sequence')) == sequence then
    if sequence == 1 then
      redis.call('DEL', episode)
    else
      redis.call('HINCRBY', episode, 'sequence', -1)
    end
  end
end
local out = {{}}
for i = 1, releases do
  local b = ko + 5 * i - 5
  local window, escalation, pending, episode, resolving = K[b + 1], K[b + 2], K[b + 3], K[b + 4], K[b + 5]
  local flag, done = A[ao + 2 + i], 0
  if flag == '{RESOLUTION}' then
    if redis.call('GET', resolving) == value then
      done = redis.call('DEL', resolving)
      give_back(pending, episode, 'resolved')
    end
  else
    if flag ~= '{ESCALATION}' and redis.call('GET', window) == value then
      done = done + redis.call('DEL', window)
      give_back(pending, episode, 'window')
    end
    if flag ~= '{WINDOW}' and redis.call('GET', escalation) == value then
      done = done + redis.call('DEL', escalation)
      if flag == '{ESCALATION}' then
        give_back(pending, episode, 'escalation')
      end
    end
  end
  out[i] = done
end
if nk > 5 * releases then
  local failed = K[ko + 5 * releases + 1]
  redis.call('LPUSH', failed, A[ao + 3 + releases])
  redis.call('LTRIM', failed, 0, {FAILED_KEEP - 1})
  out[releases + 1] = 1
end
return out
"""
)

# The agent's decision about an open episode, atomic with the claims of its slot. KEYS: episode
# and applied keys. ARGV: the episode id the agent names, the decision, its until (Unix seconds,
# '' for none), the note, now, the block after `applied` in ms (0: none), the episode's lifetime.
# Answers {0} when that episode is not the open one; else {1}. `applied` ends the episode; the
# others are kept with it.
DECIDE = Script(
    f"""{PROLOGUE}
local episode, applied = K[ko + 1], K[ko + 2]
local episode_id, decision, until_, note, now = A[ao + 1], A[ao + 2], A[ao + 3], A[ao + 4], A[ao + 5]
local block, episode_ttl = tonumber(A[ao + 6]), A[ao + 7]
if redis.call('HGET', episode, 'id') ~= episode_id then
  return {{0}}
end
if decision == 'applied' then
  redis.call('DEL', episode)
  if block > 0 then
    redis.call('SET', applied, now, 'PX', block)
  end
else
  redis.call('HSET', episode, 'decision', decision, 'until', until_, 'note', note, 'decided_at', now)
  redis.call('EXPIRE', episode, episode_ttl)
end
return {{1}}
"""
)

# Start or stop each deployment's quiet count. KEYS: app keys. ARGV: the time a quiet run starts
# at, then per key '1' (quiet: start the count unless it runs) or '0' (firing: stop it).
MARK_QUIET = Script(
    f"""{PROLOGUE}
local out = {{}}
for i = 1, nk do
  if A[ao + 1 + i] == '1' then
    out[i] = redis.call('HSETNX', K[ko + i], 'quiet_since', A[ao + 1])
  else
    out[i] = redis.call('HDEL', K[ko + i], 'quiet_since')
  end
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
        claim_lease_seconds: float = DEFAULT_CLAIM_LEASE_SECONDS,
        episodes: EpisodePolicy | None = None,
    ):
        """`history_half_life_seconds=None` keeps no usage history (the benchmark's baseline)."""
        self.redis = redis
        self.cooldown_seconds = cooldown_seconds
        self.episodes = episodes or EpisodePolicy(cooldown_seconds, cooldown_seconds)
        self.history_half_life_seconds = history_half_life_seconds
        # A lease longer than the window would outlast it: then the window is the lease.
        self.claim_lease_ms = int(min(claim_lease_seconds, cooldown_seconds) * 1000)
        self.runner = runner_for(redis)

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
        """One of the cluster-wide keys: cost, vm_count or req_cpu_total."""
        return f"cluster:{namespace}:{item}"

    @classmethod
    def cluster_timestamp_key(cls, namespace: str, item: str) -> str:
        """The key holding the payload time of a cluster key, hash-tagged into that key's slot."""
        return cls._companion(cls.cluster_key(namespace, item), "timestamp")

    def check_ready(self) -> None:
        """Raise the Redis error an ingest would meet now: down, read-only, out of memory, no permission,
        a cluster missing slots (the write probe runs on every primary)."""
        self.runner.probe(READY)

    def save_cost(self, payload: dict, now: float | None = None) -> "SavedPayload":
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
        return self._save(payload, "cost_timestamp", COST_FIELDS, "set", items, now, history=True)

    def save_forecast(self, payload: dict, now: float | None = None) -> "SavedPayload":
        """Store a loaded forecast payload and read the cluster totals; one script call (per node)."""
        namespace = payload["namespace"]
        items = [Unit((self.cluster_key(namespace, item),), (), ITEM) for item in CLUSTER_ITEMS]
        return self._save(payload, "forecast_timestamp", FORECAST_FIELDS, "get", items, now)

    def _save(self, payload, ts_field, value_fields, item_mode, items, now, history=False):
        namespace, stamp = payload["namespace"], payload["timestamp"]
        deployments = payload["deployments"]
        read_back = READ_BACK[ts_field]
        app_key = self.app_key
        values = itemgetter(*value_fields)
        kept = self.history_half_life_seconds is not None
        half_life = self.history_half_life_seconds if history else None
        history_key = self.history_key
        # Numbers go as they are: the client writes an int with str() and a float with repr() (its
        # shortest exact form), which is how Redis stores them and decode() reads them back.
        usage: tuple[int | str, float]  # the history's UTC day and half-life; '' for no history
        if half_life is not None:
            # The worker, not Redis's one thread, works out each sample's bucket and day.
            usage = (int(stamp // WINDOW_SECONDS), half_life)
            rows = [
                Unit(
                    (app_key(namespace, name), history_key(namespace, name)),
                    (*values(row), f"cpu:{bucket_index(row['usage_cpu_curr'])}", row["usage_mem_curr"]),
                )
                for row in deployments
                for name in (row["name"],)
            ]
        elif kept:
            # Not recorded here, but read back with the state when an episode may need it (`watch`).
            usage = ("", 0)
            rows = [
                Unit((app_key(namespace, name), history_key(namespace, name)), values(row))
                for row in deployments
                for name in (row["name"],)
            ]
        else:
            usage = ("", 0)
            rows = [Unit((app_key(namespace, row["name"]),), values(row)) for row in deployments]
        keys_per_row = 2 if kept else 1
        policy = self.episodes
        # Where last_trigger and quiet_since are in the script's HMGET; with RESOLVE_AFTER_SECONDS=0
        # every quiet sample may resolve, so the mirror always comes.
        episode = (
            read_back.index("last_trigger") + 2,
            read_back.index("quiet_since") + 2,
            self.cooldown_seconds,
            "1" if policy.resolve_after_seconds == 0 else "0",
        )
        clock = (time.time() if now is None else now, policy.state_ttl_seconds + 3600, *episode)

        def header(units):
            count = sum(unit.kind == ROW for unit in units)
            return [
                *(count, keys_per_row, len(units) - count, item_mode, ts_field, stamp),
                *(len(value_fields), *value_fields, len(read_back), *read_back, *usage, *clock),
            ]

        replies = self.runner.run(SAVE, rows + items, header)
        raise_first(replies)
        saved = SavedPayload()
        for row, reply in zip(deployments, replies):
            if reply == 0:
                saved.stale.append(row["name"])
                continue
            if isinstance(reply, list):
                if len(reply) == 1:
                    saved.unfetched.add(row["name"])
                else:
                    saved.raw_mirrors[row["name"]] = reply[1]
                if len(reply) > 2:
                    saved.raw_histories[row["name"]] = reply[2]
                reply = reply[0]
            # What was written is the payload's own numbers; only the rest comes back from Redis.
            state = {name: row[name] for name in value_fields}
            state[ts_field] = stamp
            for name, raw in zip(read_back, reply.split(b",")):
                if raw:
                    state[name] = decode(raw)
            if "quiet_since" in state:
                saved.quiet[row["name"]] = state.pop("quiet_since")
            saved.states[row["name"]] = state
        saved.cluster = _cluster(replies[len(rows) :])
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

        replies = self.runner.run(CLAIM, units, header)
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
        replies = self.runner.run(RESOLVE, units, lambda _: [value, self.claim_lease_ms])
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

        raise_first(self.runner.run(RELEASE, units, header))

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

        raise_first(self.runner.run(SETTLE, units, header))

    def mark_quiet(self, namespace: str, quiet: Collection[str], firing: Collection[str], now: float) -> None:
        """Start the quiet count of the deployments in `quiet` (unless it runs) and stop it for those in `firing`."""
        units = [Unit((self.app_key(namespace, name),), ("1",)) for name in quiet]
        units += [Unit((self.app_key(namespace, name),), ("0",)) for name in firing]
        if units:
            raise_first(self.runner.run(MARK_QUIET, units, lambda _: [now]))

    def decide(
        self, namespace: str, name: str, episode_id: str, decision: str, until: float | None, note: str, now: float
    ) -> bool:
        """Record the agent's decision about the deployment's open episode; False when `episode_id` is not it."""
        policy = self.episodes
        block_ms = policy.resolve_after_seconds * 1000 if decision == APPLIED else 0
        keys = (self.episode_key(namespace, name), self.applied_key(namespace, name))
        args = (episode_id, decision, "" if until is None else until, note, now, block_ms, policy.episode_ttl_seconds)
        [reply] = self.runner.run(DECIDE, [Unit(keys, args)], lambda _: [])
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
