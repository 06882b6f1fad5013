import pytest

from shared.state import StateRepository

NS = "default"


def cost(ts, *rows, cost_gbp=1.25, vms=3):
    return {
        "namespace": NS,
        "timestamp": ts,
        "cluster_totals": {"vm_count": vms, "current_hourly_cost_gbp": cost_gbp},
        "deployments": [
            {"name": n, "req_cpu": r, "req_mem": 4096, "usage_cpu_curr": u, "usage_mem_curr": 512} for n, r, u in rows
        ],
    }


def forecast(ts, *rows):
    return {
        "namespace": NS,
        "timestamp": ts,
        "deployments": [{"name": n, "pred_cpu_peak": p, "pred_mem_peak": 600} for n, p in rows],
    }


@pytest.fixture
def redis_client(store):
    """Every test here runs against one redis-server and against a Redis Cluster."""
    return store[2]


@pytest.fixture
def repo(redis_client):
    return StateRepository(redis_client, cooldown_seconds=1800)


def stored(redis_client, key):
    return {k.decode(): v.decode() for k, v in redis_client.hgetall(key).items()}


def test_cost_fields_land_under_the_contract_key_names(repo, redis_client):
    saved = repo.save_cost(cost(1704110400, ("adservice", 2.0, 0.4)))
    assert stored(redis_client, "app:default:adservice") == {
        "req_cpu": "2.0",
        "req_mem": "4096",
        "usage_cpu_curr": "0.4",
        "usage_mem_curr": "512",
        "cost_timestamp": "1704110400",
    }
    assert saved.states["adservice"]["req_cpu"] == 2.0
    assert saved.cluster == {"hourly_cost_gbp": 1.25, "vm_count": 3}
    assert redis_client.get("cluster:default:cost") == b"1.25"
    assert redis_client.get("cluster:default:vm_count") == b"3"
    assert redis_client.get("{cluster:default:cost}:timestamp") == b"1704110400"
    assert redis_client.get("{cluster:default:vm_count}:timestamp") == b"1704110400"


def test_forecast_and_cost_merge_without_erasing_each_other(repo, redis_client):
    repo.save_cost(cost(100, ("adservice", 2.0, 0.4)))
    saved = repo.save_forecast(forecast(101, ("adservice", 0.55)))
    assert saved.states["adservice"] == {
        "req_cpu": 2.0,
        "req_mem": 4096,
        "usage_cpu_curr": 0.4,
        "usage_mem_curr": 512,
        "cost_timestamp": 100,
        "pred_cpu_peak": 0.55,
        "pred_mem_peak": 600,
        "forecast_timestamp": 101,
    }
    repo.save_cost(cost(102, ("adservice", 3.0, 0.5)))
    state = stored(redis_client, "app:default:adservice")
    assert state["pred_cpu_peak"] == "0.55" and state["req_cpu"] == "3.0"


def test_older_payload_does_not_overwrite_newer_fields(repo, redis_client):
    repo.save_cost(cost(200, ("adservice", 2.0, 0.4)))
    saved = repo.save_cost(cost(199, ("adservice", 9.0, 9.0), ("newapp", 1.0, 0.1)))
    assert saved.stale == ["adservice"]
    assert list(saved.states) == ["newapp"]
    assert stored(redis_client, "app:default:adservice")["req_cpu"] == "2.0"

    repo.save_forecast(forecast(300, ("adservice", 0.5)))
    saved = repo.save_forecast(forecast(299.5, ("adservice", 5.0)))
    assert saved.stale == ["adservice"]
    assert stored(redis_client, "app:default:adservice")["pred_cpu_peak"] == "0.5"


def test_same_timestamp_is_rewritten_idempotently(repo, redis_client):
    first = repo.save_cost(cost(200, ("adservice", 2.0, 0.4)))
    again = repo.save_cost(cost(200, ("adservice", 2.0, 0.4)))
    assert again.stale == [] and again.states == first.states


def test_cluster_totals_are_not_rolled_back(repo, redis_client):
    repo.save_cost(cost(200, ("a", 1.0, 0.5), cost_gbp=2.5, vms=5))
    older = repo.save_cost(cost(100, ("a", 1.0, 0.5), cost_gbp=1.0, vms=1))
    assert older.cluster == {"hourly_cost_gbp": 2.5, "vm_count": 5}
    assert redis_client.get("cluster:default:cost") == b"2.5"
    assert redis_client.get("cluster:default:vm_count") == b"5"


def test_claim_is_exclusive_and_expires_with_the_cooldown(repo, redis_client):
    assert repo.claim_cooldowns(NS, ["a", "b"], now=1000.7) == ["a", "b"]
    assert repo.claim_cooldowns(NS, ["a", "c"], now=1001) == ["c"]
    assert redis_client.get("trigger:default:a") == b"1000"
    assert 1790 < redis_client.ttl("trigger:default:a") <= 1800


def test_release_only_removes_our_own_claim(repo, redis_client):
    repo.claim_cooldowns(NS, ["a"], now=1000)
    repo.release_cooldowns(NS, ["a"], now=999)  # somebody else's claim value
    assert redis_client.exists("trigger:default:a")
    repo.release_cooldowns(NS, ["a"], now=1000)
    assert not redis_client.exists("trigger:default:a")


def test_record_delivery_sets_last_trigger(repo, redis_client):
    repo.save_cost(cost(100, ("a", 1.0, 0.1)))
    repo.record_delivery(NS, ["a"], now=5000.9)
    assert stored(redis_client, "app:default:a")["last_trigger"] == "5000"


def test_scripts_are_reloaded_after_redis_forgets_them(repo, redis_client):
    repo.save_cost(cost(100, ("a", 1.0, 0.1)))
    redis_client.script_flush()
    saved = repo.save_forecast(forecast(100, ("a", 0.5)))
    assert saved.states["a"]["pred_cpu_peak"] == 0.5


def test_round_trips_do_not_grow_with_the_payload(repo, redis_client, mocker):
    repo.save_cost(cost(1, ("warm", 1.0, 1.0)))  # loads the scripts once
    executes = mocker.spy(type(redis_client.pipeline()), "execute")
    repo.save_cost(cost(2, ("a", 1.0, 0.1)))
    small = executes.call_count
    repo.save_cost(cost(3, *[(f"app-{i}", 1.0, 0.1) for i in range(500)]))
    assert executes.call_count - small == small == 1
    repo.claim_cooldowns(NS, [f"app-{i}" for i in range(500)], now=10)
    assert executes.call_count == 3


def test_cluster_timestamp_keys_share_a_slot_with_the_keys_they_guard():
    from redis.crc import key_slot

    for item in ("cost", "vm_count"):
        guarded = StateRepository.cluster_key("default", item).encode()
        assert key_slot(StateRepository.cluster_timestamp_key("default", item).encode()) == key_slot(guarded)
