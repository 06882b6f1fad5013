"""A deployment's usage history: the Lua that records a cost sample, and its pure-Python reading.

CPU goes into a decaying histogram like the Kubernetes VPA recommender's: exponential buckets,
each 5 % wider than the one before (the first is 0.01 cores wide), where a sample weighs
2^((t - reference) / half-life). Weighting new samples up instead of decaying old ones down
means one bucket changes per sample; when the weights grow too big, the reference moves to the
sample's time and every bucket is divided by the same factor (buckets that reach 0 go).
Memory keeps the peak of each UTC day, for the last 8 days (the VPA's 8 daily windows), so
memory is sized from peaks, never from a percentile of samples.

The history hash (its key is named by StateRepository.history_key) holds:
``last_sample``, ``first_sample`` (Unix seconds of the newest and oldest sample counted),
``samples`` (distinct samples counted), ``reference`` (Unix seconds the weights are relative
to), ``cpu:<i>`` (integer weight of CPU bucket i), ``mem_today`` (the peak memory in MiB seen on
``last_sample``'s UTC day) and ``mem:<d>`` (the same for an earlier UTC day d, days since the
epoch; days before the last 8 are deleted when a new day starts).
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

FIRST_BUCKET_CORES = 0.01
BUCKET_GROWTH = 0.05
# A new sample weighs this much at the reference time; integers keep every field a small listpack int.
WEIGHT_SCALE = 1024
# Weights are rescaled past 2^20 so that a bucket's sum stays exact in Lua's doubles (< 2^53).
MAX_DECAY_EXPONENT = 20
# A new bucket that takes the hash past this many fields merges another away. Memory days
# filled later add at most 7 more, so the hash stays within Redis's default
# hash-max-listpack-entries (128): the compact encoding that holds a history under 4 KiB.
MAX_FIELDS = 112
MEMORY_WINDOWS = 8
WINDOW_SECONDS = 24 * 3600
# The key outlives its last sample by the memory windows' span.
HISTORY_TTL_SECONDS = MEMORY_WINDOWS * WINDOW_SECONDS
# Full confidence takes a week of samples at the cost engine's usual 5-minute cadence.
FULL_CONFIDENCE_HOURS = 7 * 24
NOMINAL_SAMPLE_SECONDS = 300
# Below this much history the recommendation falls back to the latest sample.
MIN_HISTORY_HOURS = 24

# record_usage(key, ts, ts_raw, cpu_field, day, mem_raw, half_life): count a cost sample in the
# history hash `key`, unless a sample at least as new was counted already. ts is the sample's Unix
# seconds and ts_raw the same as a string; cpu_field its bucket (`cpu:<i>`, bucket_index), day its
# UTC day number (a number), mem_raw the memory in MiB (a string, stored as it is), half_life in
# seconds. The caller works out what a whole payload shares once. Returns 1 when counted, 0 when
# not. A sample costs two redis.call (HMGET, HSET) of fields near the front of the hash but for its
# bucket (a listpack finds a field by scanning, so a field's position is part of its cost: today's
# peak therefore has a field of its own, made with the key, and moves to `mem:<day>` once its day
# is over). The rest runs only on a key's first sample, the first sample of a day (the day before
# is kept, older days go), of an hour (EXPIRE), a new bucket (HLEN), a rescale (every 20
# half-lives) or a merge.
RECORD_USAGE_LUA = f"""
local function record_usage(key, ts, ts_raw, cpu_field, day, mem_raw, half_life)
  local h = redis.call('HMGET', key, 'last_sample', 'reference', 'samples', 'mem_today', cpu_field)
  local last = tonumber(h[1])
  if last and ts <= last then
    return 0
  end
  local reference = tonumber(h[2])
  local current = tonumber(h[5])
  if not reference then
    reference = ts
    redis.call('HSET', key, 'first_sample', ts_raw, 'reference', ts_raw)
  elseif (ts - reference) / half_life > {MAX_DECAY_EXPONENT} then
    local factor = 2 ^ ((ts - reference) / half_life)
    local all = redis.call('HGETALL', key)
    for i = 1, #all, 2 do
      if string.sub(all[i], 1, 4) == 'cpu:' then
        local w = math.floor(tonumber(all[i + 1]) / factor)
        if w > 0 then
          redis.call('HSET', key, all[i], w)
        else
          redis.call('HDEL', key, all[i])
        end
      end
    end
    current = tonumber(redis.call('HGET', key, cpu_field))
    reference = ts
    redis.call('HSET', key, 'reference', ts_raw)
  end
  local weight = (current or 0) + math.floor({WEIGHT_SCALE} * 2 ^ ((ts - reference) / half_life) + 0.5)
  local samples = (tonumber(h[3]) or 0) + 1
  local peak = tonumber(h[4])
  local last_day = last and math.floor(last / {WINDOW_SECONDS})
  if last_day and last_day ~= day then
    -- A new day (once a day, not per sample): the last sample's day keeps its peak under its own
    -- number, and the days that fell out of the last {MEMORY_WINDOWS} go. Histories written before
    -- mem_today kept their days in slot pairs (mem_day:<s>, mem_peak:<s>): those carry over too.
    local all, peaks, pairs_by_slot, gone = redis.call('HGETALL', key), {{}}, {{}}, {{}}
    local function keep(d, raw)
      if d and raw and d > day - {MEMORY_WINDOWS} and (not peaks[d] or tonumber(raw) > tonumber(peaks[d])) then
        peaks[d] = raw
      end
    end
    for i = 1, #all, 2 do
      local name = all[i]
      local kind, rest = string.match(name, '^(mem[^:]*):(%d+)$')
      if kind == 'mem' then
        keep(tonumber(rest), all[i + 1])
        gone[#gone + 1] = name
      elseif kind == 'mem_day' or kind == 'mem_peak' then
        pairs_by_slot[rest] = pairs_by_slot[rest] or {{}}
        pairs_by_slot[rest][kind] = all[i + 1]
        gone[#gone + 1] = name
      end
    end
    for _, pair in pairs(pairs_by_slot) do
      keep(tonumber(pair.mem_day), pair.mem_peak)
    end
    keep(last_day, h[4])
    if #gone > 0 then
      redis.call('HDEL', key, unpack(gone))
    end
    for d, raw in pairs(peaks) do
      redis.call('HSET', key, 'mem:' .. d, raw)
    end
    peak = nil
  end
  if not peak or tonumber(mem_raw) > peak then
    redis.call('HSET', key, 'last_sample', ts_raw, 'samples', samples, 'mem_today', mem_raw, cpu_field, weight)
  else
    redis.call('HSET', key, 'last_sample', ts_raw, 'samples', samples, cpu_field, weight)
  end
  if not current and redis.call('HLEN', key) > {MAX_FIELDS} then
    -- Merge the lightest other bucket into the nearest one above it (below when none is): the size
    -- stays bounded, and weight only moves up, so percentiles can only err on the safe side.
    local all = redis.call('HGETALL', key)
    local bucket = tonumber(string.sub(cpu_field, 5))
    local lightest, lightest_w, indexes = nil, nil, {{}}
    for i = 1, #all, 2 do
      if string.sub(all[i], 1, 4) == 'cpu:' then
        local index, w = tonumber(string.sub(all[i], 5)), tonumber(all[i + 1])
        indexes[#indexes + 1] = index
        if index ~= bucket and (not lightest_w or w < lightest_w) then
          lightest, lightest_w = index, w
        end
      end
    end
    local above, below = nil, nil
    for _, index in ipairs(indexes) do
      if index > lightest and (not above or index < above) then above = index end
      if index < lightest and (not below or index > below) then below = index end
    end
    redis.call('HINCRBY', key, 'cpu:' .. (above or below), lightest_w)
    redis.call('HDEL', key, 'cpu:' .. lightest)
  end
  -- Once per hour of samples, not per sample: the key then outlives its last sample by 8 days plus
  -- at most an hour, for a third less Redis time per sample.
  if not last or math.floor(ts / 3600) ~= math.floor(last / 3600) then
    redis.call('EXPIRE', key, {HISTORY_TTL_SECONDS + 3600})
  end
  return 1
end
"""


# bucket_index runs for every deployment of every cost payload: its constants are worked out once.
_BUCKET_SCALE = BUCKET_GROWTH / FIRST_BUCKET_CORES
_LOG_BUCKET_RATIO = math.log(1 + BUCKET_GROWTH)


def bucket_index(cpu: float) -> int:
    """The CPU bucket a value (cores) falls into."""
    if cpu < FIRST_BUCKET_CORES:
        return 0
    return math.floor(math.log(cpu * _BUCKET_SCALE + 1) / _LOG_BUCKET_RATIO)


def bucket_start(index: int) -> float:
    """The lowest CPU value (cores) that falls into bucket `index`."""
    return FIRST_BUCKET_CORES * ((1 + BUCKET_GROWTH) ** index - 1) / BUCKET_GROWTH


def _number(raw):
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    value = float(text)
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


@dataclass(frozen=True)
class History:
    """One deployment's decoded usage history."""

    samples: int = 0
    first_sample: float | None = None
    last_sample: float | None = None
    cpu_buckets: dict[int, float] = field(default_factory=dict)  # bucket index -> weight
    memory_peaks: tuple[tuple[int, float], ...] = ()  # (UTC day number, peak MiB), oldest first, last 8 days

    @property
    def span_hours(self) -> float:
        """Hours from the first to the last sample counted."""
        if self.first_sample is None or self.last_sample is None:
            return 0.0
        return (self.last_sample - self.first_sample) / 3600

    @property
    def confidence(self) -> float:
        """How far the history is from a full week of 5-minute samples, in [0, 1] (see the README)."""
        covered = min(self.span_hours, self.samples * NOMINAL_SAMPLE_SECONDS / 3600)
        return min(1.0, covered / FULL_CONFIDENCE_HOURS)

    @property
    def enough(self) -> bool:
        """True when the history spans at least MIN_HISTORY_HOURS and has CPU and memory data."""
        return self.span_hours >= MIN_HISTORY_HOURS and bool(self.cpu_buckets) and bool(self.memory_peaks)

    def cpu_percentile(self, fraction: float) -> float:
        """The CPU value (cores) under which `fraction` of the decayed sample weight lies: a bucket's end."""
        total = sum(self.cpu_buckets.values())
        running = 0.0
        for index in sorted(self.cpu_buckets):
            running += self.cpu_buckets[index]
            if running >= fraction * total:
                return bucket_start(index + 1)
        return 0.0

    def memory_percentile(self, fraction: float) -> float:
        """The `fraction` percentile of the daily peaks (MiB), interpolated between order statistics."""
        peaks = sorted(peak for _, peak in self.memory_peaks)
        if not peaks:
            return 0.0
        position = fraction * (len(peaks) - 1)
        low = math.floor(position)
        high = min(low + 1, len(peaks) - 1)
        return peaks[low] + (peaks[high] - peaks[low]) * (position - low)

    def memory_peak(self) -> float:
        """The highest daily peak kept (MiB)."""
        return max((peak for _, peak in self.memory_peaks), default=0.0)


def decode_history(flat: Mapping[bytes | str, bytes | str]) -> History:
    """A History from the history hash as HGETALL returns it (a dict of bytes, or of str)."""
    raw = {(k.decode() if isinstance(k, bytes) else k): v for k, v in flat.items()}
    if "last_sample" not in raw:
        return History()
    buckets = {int(name[4:]): _number(value) for name, value in raw.items() if name.startswith("cpu:")}
    last_day = math.floor(_number(raw["last_sample"]) / WINDOW_SECONDS)
    found = [(int(name[4:]), _number(value)) for name, value in raw.items() if name.startswith("mem:")]
    if "mem_today" in raw:
        found.append((last_day, _number(raw["mem_today"])))
    # Slot pairs from before mem_today, until the next new day carries them over (see RECORD_USAGE_LUA).
    for slot in range(MEMORY_WINDOWS):
        slot_day, slot_peak = raw.get(f"mem_day:{slot}"), raw.get(f"mem_peak:{slot}")
        if slot_day is not None and slot_peak is not None:
            found.append((int(_number(slot_day)), _number(slot_peak)))
    peaks: dict[int, float] = {}
    # Days older than the last 8 are deleted only when the next sample starts a new day.
    for day, peak in found:
        if last_day - MEMORY_WINDOWS < day <= last_day:
            peaks[day] = max(peak, peaks.get(day, peak))
    return History(
        samples=int(_number(raw.get("samples", b"0"))),
        first_sample=_number(raw["first_sample"]) if "first_sample" in raw else None,
        last_sample=_number(raw["last_sample"]),
        cpu_buckets=buckets,
        memory_peaks=tuple(sorted(peaks.items())),
    )
