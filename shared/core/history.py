"""A deployment's usage history: its layout, and its pure-Python reading.

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

The Lua that records a cost sample in it is shared/store/scripts/record_usage.lua; the constants
below that it names are given to it from here when the scripts are loaded (shared/store/lua.py).
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
    # Slot pairs from before mem_today, until the next new day carries them over (see record_usage.lua).
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
