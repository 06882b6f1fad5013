"""The usage history kept beside each app hash: counted once, bounded, cluster-safe, expiring."""

import random

import pytest
from redis.crc import key_slot

from shared.core.history import HISTORY_TTL_SECONDS, MAX_FIELDS, bucket_start
from shared.store.repository import StateRepository

NS = "default"
DAY = 86400
T0 = 1704067200  # 2024-01-01T00:00:00Z
HISTORY = "{app:default:a}:history"


def cost(ts, *rows):
    return {
        "namespace": NS,
        "timestamp": ts,
        "cluster_totals": {"vm_count": 3, "current_hourly_cost_gbp": 1.25},
        "deployments": [
            {"name": n, "req_cpu": 2.0, "req_mem": 4096, "usage_cpu_curr": c, "usage_mem_curr": m} for n, c, m in rows
        ],
    }


def history(repo, name="a"):
    return repo.histories(NS, [name])[name]


def test_the_history_key_is_named_after_the_app_key_and_shares_its_slot(repo, redis_client, store):
    assert StateRepository.history_key(NS, "a") == HISTORY
    repo.save_cost(cost(T0, ("a", 0.4, 512)))
    assert redis_client.exists(HISTORY)
    assert key_slot(HISTORY.encode()) == key_slot(b"app:default:a")
    if store[1]:
        # The cluster itself agrees (the save script touching both keys would have failed otherwise).
        assert redis_client.cluster_keyslot(HISTORY) == redis_client.cluster_keyslot("app:default:a")


def test_the_same_payload_twice_counts_once(repo, redis_client):
    repo.save_cost(cost(T0, ("a", 0.4, 512)))
    before = redis_client.hgetall(HISTORY)
    repo.save_cost(cost(T0, ("a", 0.4, 512)))
    assert redis_client.hgetall(HISTORY) == before
    assert history(repo).samples == 1


def test_a_stale_payload_is_not_counted(repo, redis_client):
    repo.save_cost(cost(T0 + 600, ("a", 0.4, 512)))
    before = redis_client.hgetall(HISTORY)
    saved = repo.save_cost(cost(T0 + 300, ("a", 3.0, 3000), ("b", 0.1, 100)))
    assert saved.stale == ["a"]
    assert redis_client.hgetall(HISTORY) == before
    assert history(repo, "b").samples == 1  # a newcomer in the same payload still counts
    # Even when the app hash is gone (deleted by hand, say), the history itself refuses the older sample.
    redis_client.delete("app:default:a")
    assert repo.save_cost(cost(T0 + 300, ("a", 3.0, 3000))).stale == []
    assert redis_client.hgetall(HISTORY) == before


def test_a_forecast_payload_leaves_the_history_alone(repo, redis_client):
    repo.save_forecast(
        {"namespace": NS, "timestamp": T0, "deployments": [{"name": "a", "pred_cpu_peak": 1, "pred_mem_peak": 9}]}
    )
    assert not redis_client.exists(HISTORY)


def test_a_week_of_five_minute_samples(repo, redis_client):
    rnd = random.Random(7)
    steps = 7 * 288
    for i in range(steps):
        repo.save_cost(cost(T0 + 300 * i, ("a", rnd.uniform(0.2, 0.6), 400 + (i % 288) // 2)))
    got = history(repo)
    assert got.samples == steps
    assert round(got.span_hours, 1) == 167.9 and got.confidence == pytest.approx(167.9167 / 168, abs=1e-4)
    # Uniform on [0.2, 0.6] with recent samples weighing more still has its p90 near 0.56: within a bucket.
    assert 0.54 <= got.cpu_percentile(0.9) <= 0.6 * 1.05
    assert (
        got.cpu_percentile(0.5)
        < got.cpu_percentile(0.9)
        <= got.cpu_percentile(0.95)
        <= bucket_start(max(got.cpu_buckets) + 1)
    )
    # Seven UTC days, each peaking at 400 + 287 // 2.
    assert [peak for _, peak in got.memory_peaks] == [543] * 7
    assert redis_client.memory_usage(HISTORY) <= 4096


def test_the_history_stays_under_4_kib_whatever_its_length(repo, redis_client):
    # Usage sweeping 0.01 to 40 cores, over and over: far more buckets than are kept.
    for i in range(3 * 170):
        repo.save_cost(cost(T0 + 300 * i, ("a", 0.01 * 1.05 ** (i % 170), 100 + i)))
    assert redis_client.hlen(HISTORY) <= MAX_FIELDS + 7 < 128
    assert redis_client.object("encoding", HISTORY) == b"listpack"
    assert redis_client.memory_usage(HISTORY) <= 4096
    # Merging moves weight upwards only: the top of the range is still there.
    assert history(repo).cpu_percentile(1.0) >= 0.01 * 1.05**169


def test_the_key_expires_8_days_after_its_last_sample(repo, redis_client):
    repo.save_cost(cost(T0, ("a", 0.4, 512)))
    assert HISTORY_TTL_SECONDS == 8 * DAY
    # Refreshed with the first sample of each hour, by 8 days and an hour: never less than 8 days.
    assert HISTORY_TTL_SECONDS + 3600 - 5 <= redis_client.ttl(HISTORY) <= HISTORY_TTL_SECONDS + 3600
    redis_client.expire(HISTORY, 100)
    repo.save_cost(cost(T0, ("a", 0.4, 512)))  # a replay counts nothing, so it extends nothing
    assert redis_client.ttl(HISTORY) <= 100
    repo.save_cost(cost(T0 + 3600, ("a", 0.4, 512)))
    assert redis_client.ttl(HISTORY) > HISTORY_TTL_SECONDS + 3600 - 5


def test_old_weight_is_rescaled_away_and_old_days_drop_out(repo, redis_client):
    for day in range(9):
        repo.save_cost(cost(T0 + day * DAY, ("a", 0.1, 300 + day)))
    # Nine days seen, the last 8 kept: the first day's peak is deleted when the ninth day starts.
    assert sorted(f for f in redis_client.hkeys(HISTORY) if f.startswith(b"mem:"))[0] == f"mem:{T0 // DAY + 1}".encode()
    assert [peak for _, peak in history(repo).memory_peaks] == [301 + day for day in range(8)]
    repo.save_cost(cost(T0 + 30 * DAY, ("a", 1.0, 500)))
    # Three weeks later: every earlier day has gone, and only today's peak is left.
    assert [f for f in redis_client.hkeys(HISTORY) if f.startswith(b"mem")] == [b"mem_today"]
    got = history(repo)
    # After 30 half-lives the first sample weighs 2^-30 of the second: rounded to nothing, it goes.
    assert len(got.cpu_buckets) == 1 and got.cpu_percentile(0.01) > 1.0
    assert [peak for _, peak in got.memory_peaks] == [500]
    assert got.samples == 10


def test_day_slots_of_the_earlier_layout_carry_over_to_a_field_per_day(repo, redis_client):
    # A history written before mem_today: its days sat in (mem_day:<slot>, mem_peak:<slot>) pairs.
    day0 = T0 // DAY
    redis_client.hset(
        HISTORY,
        mapping={
            "first_sample": T0 - 3 * DAY,
            "reference": T0 - 3 * DAY,
            "last_sample": T0 + 3600,
            "samples": 3,
            "cpu:20": 1024,
            **{f"mem_day:{(day0 - i) % 8}": day0 - i for i in range(3)},
            **{f"mem_peak:{(day0 - i) % 8}": 900 + i for i in range(3)},
            f"mem_day:{(day0 - 12) % 8}": day0 - 12,  # a day long gone
            f"mem_peak:{(day0 - 12) % 8}": 5000,
        },
    )
    # Read as it is, the old days still count: memory is never sized from today's samples alone.
    assert history(repo).memory_peaks == ((day0 - 2, 902), (day0 - 1, 901), (day0, 900))
    repo.save_cost(cost(T0 + 7200, ("a", 0.4, 950)))  # the same day: today's peak goes up
    assert history(repo).memory_peaks == ((day0 - 2, 902), (day0 - 1, 901), (day0, 950))
    repo.save_cost(cost(T0 + DAY, ("a", 0.4, 300)))  # a new day carries the pairs over, once
    fields = {name.decode() for name in redis_client.hkeys(HISTORY)}
    assert not {name for name in fields if name.startswith(("mem_day:", "mem_peak:"))}
    assert {name for name in fields if name.startswith("mem:")} == {f"mem:{day0 - 2}", f"mem:{day0 - 1}", f"mem:{day0}"}
    assert history(repo).memory_peaks == ((day0 - 2, 902), (day0 - 1, 901), (day0, 950), (day0 + 1, 300))
