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
    assert saved.cluster == {"hourly_cost_gbp": 1.25, "vm_count": 3, "req_cpu_total": 2.0}
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
    assert older.cluster == {"hourly_cost_gbp": 2.5, "vm_count": 5, "req_cpu_total": 1.0}
    assert redis_client.get("cluster:default:cost") == b"2.5"
    assert redis_client.get("cluster:default:vm_count") == b"5"


def test_claim_is_exclusive_and_expires_with_the_cooldown(repo, redis_client):
    assert repo.claim(NS, ["a", "b"], {}, now=1000.7) == (["a", "b"], [])
    assert repo.claim(NS, ["a", "c"], {}, now=1001) == (["c"], [])
    assert redis_client.get("trigger:default:a") == b"1000"
    assert 1790 < redis_client.ttl("trigger:default:a") <= 1800


def test_escalation_is_claimed_once_and_lives_as_long_as_its_window(repo, redis_client):
    assert repo.claim(NS, [], {"a": 120.4}, now=1000) == ([], ["a"])
    assert repo.claim(NS, ["b"], {"a": 100}, now=1001) == (["b"], [])
    assert 115 < redis_client.ttl("trigger:default:a:escalation") <= 121


def test_failed_delivery_releases_only_our_own_claims_and_is_kept(repo, redis_client):
    repo.claim(NS, ["a", "b"], {"c": 60}, now=1000)
    redis_client.set("trigger:default:b", "999")  # somebody else's claim by now
    repo.settle_failed(NS, ["a", "b"], ["c"], now=1000, record={"error": "HTTP 500", "message": {"n": 1}})
    assert not redis_client.exists("trigger:default:a")
    assert redis_client.get("trigger:default:b") == b"999"
    assert not redis_client.exists("trigger:default:c:escalation")
    assert repo.failed_triggers(NS) == [{"error": "HTTP 500", "message": {"n": 1}}]


def test_failed_list_is_capped_newest_first(repo, redis_client):
    for i in range(1003):
        repo.settle_failed(NS, [], [], now=1, record={"i": i})
    assert redis_client.llen("triggers:default:failed") == 1000
    assert [r["i"] for r in repo.failed_triggers(NS, limit=2)] == [1002, 1001]


def test_delivery_sets_last_trigger_and_marks_risk_windows(repo, redis_client):
    repo.save_cost(cost(100, ("a", 1.0, 0.1), ("b", 1.0, 0.99)))
    repo.settle_delivered(NS, ["a", "b"], ["b"], now=5000.9)
    assert stored(redis_client, "app:default:a")["last_trigger"] == "5000"
    assert not redis_client.exists("trigger:default:a:escalation")
    assert redis_client.get("trigger:default:b:escalation") == b"5000"


def test_cluster_totals_include_the_requested_cpu(repo, redis_client):
    saved = repo.save_cost(cost(100, ("a", 1.5, 0.1), ("b", 2.0, 0.2)))
    assert saved.cluster == {"hourly_cost_gbp": 1.25, "vm_count": 3, "req_cpu_total": 3.5}
    assert repo.save_forecast(forecast(100, ("a", 1.0))).cluster == saved.cluster
    assert redis_client.get("cluster:default:req_cpu_total") == b"3.5"


def test_forecast_before_any_cost_payload_has_no_cluster_totals(repo):
    saved = repo.save_forecast(forecast(100, ("a", 1.0)))
    assert saved.cluster == {"hourly_cost_gbp": None, "vm_count": None, "req_cpu_total": None}


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
    repo.claim(NS, [f"app-{i}" for i in range(500)], {f"app-{i}": 60 for i in range(500, 900)}, now=10)
    assert executes.call_count == 3


def test_cluster_timestamp_keys_share_a_slot_with_the_keys_they_guard():
    from redis.crc import key_slot

    for item in ("cost", "vm_count", "req_cpu_total"):
        guarded = StateRepository.cluster_key("default", item).encode()
        assert key_slot(StateRepository.cluster_timestamp_key("default", item).encode()) == key_slot(guarded)


def test_running_windows_say_when_each_was_claimed_and_how_long_is_left(repo):
    repo.claim(NS, ["a"], {}, now=1000)
    windows = repo.running_windows(NS, ["a", "b"])
    assert list(windows) == ["a"]
    claimed_at, left = windows["a"]
    assert claimed_at == 1000 and 1790 < left <= 1800


def test_a_kept_record_is_removed_by_its_content(repo):
    first, second = {"webhook_id": "msg_1", "n": 1.5}, {"webhook_id": "msg_2", "n": 2}
    for record in (first, second):
        repo.settle_failed(NS, [], [], now=1, record=record)
    assert repo.remove_failed(NS, repo.failed_triggers(NS)[1]) is True
    assert repo.failed_triggers(NS) == [second]
    assert repo.remove_failed(NS, first) is False
