import contextlib
import time

import pytest
import redis
from redis.crc import key_slot

from devtools.harness import close_cluster_client, wait_until
from shared.store.repository import DEFAULT_CLAIM_LEASE_SECONDS, Claims, StateRepository
from shared.store.settings import RedisMode

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


def won(claims):
    """(windows claimed, windows escalated) of a claim step."""
    return claims.claimed, claims.escalated


def claims(now, claimed=(), escalated=(), risky=()):
    """Claims as a claim step at `now` would have won them, made by hand."""
    return Claims(now, time.monotonic(), list(claimed), list(escalated), frozenset(risky))


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
    assert saved.cluster == {"hourly_cost_gbp": 1.25, "vm_count": 3, "req_cpu_total": 2.0, "req_mem_total": 4096}
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
    assert older.cluster == {"hourly_cost_gbp": 2.5, "vm_count": 5, "req_cpu_total": 1.0, "req_mem_total": 4096}
    assert redis_client.get("cluster:default:cost") == b"2.5"
    assert redis_client.get("cluster:default:vm_count") == b"5"


def test_claim_is_exclusive_and_held_for_its_lease_until_settled_then_for_the_cooldown(repo, redis_client):
    first = repo.claim(NS, ["a", "b"], set(), now=1000.7)
    assert won(first) == (["a", "b"], [])
    assert won(repo.claim(NS, ["a", "c"], set(), now=1001)) == (["c"], [])
    assert redis_client.get("trigger:default:a") == b"1000"
    assert 0 < redis_client.pttl("trigger:default:a") <= DEFAULT_CLAIM_LEASE_SECONDS * 1000
    assert not redis_client.exists("{trigger:default:a}:escalation")
    repo.settle_delivered(NS, first)
    assert 1790 < redis_client.ttl("trigger:default:a") <= 1800
    assert redis_client.get("trigger:default:a") == b"1000"
    assert 0 < redis_client.pttl("trigger:default:c") <= DEFAULT_CLAIM_LEASE_SECONDS * 1000  # not settled


def test_risk_inside_a_window_is_escalated_once_and_lives_as_long_as_its_window(repo, redis_client):
    repo.settle_delivered(NS, repo.claim(NS, ["a"], set(), now=1000))
    escalation = repo.claim(NS, ["a", "b"], {"a"}, now=1700)
    assert won(escalation) == (["b"], ["a"])
    assert won(repo.claim(NS, ["a"], {"a"}, now=1701)) == ([], [])
    assert 0 < redis_client.pttl("{trigger:default:a}:escalation") <= DEFAULT_CLAIM_LEASE_SECONDS * 1000
    repo.settle_delivered(NS, escalation)
    # The window claimed at 1000 runs until 2800 on the claims' clock: 1100 s after the escalation.
    assert 1095 < redis_client.ttl("{trigger:default:a}:escalation") <= 1100
    assert won(repo.claim(NS, ["a"], {"a"}, now=1702)) == ([], [])


def test_a_window_opened_by_a_risk_rule_is_not_escalated_again(repo, redis_client):
    assert won(repo.claim(NS, ["a"], {"a"}, now=1000)) == (["a"], [])
    assert redis_client.get("{trigger:default:a}:escalation") == b"1000"
    assert won(repo.claim(NS, ["a"], {"a"}, now=1001)) == ([], [])


def test_an_unsettled_claim_frees_itself_and_its_item_goes_again_under_the_same_id(redis_client, mode):
    repo = StateRepository(redis_client, cooldown_seconds=1800, claim_lease_seconds=1, mode=mode)
    first = repo.claim(NS, ["a", "b"], {"b"}, now=1000)
    assert won(first) == (["a", "b"], []) and first.reclaimed == []
    # Nobody settles or releases: the request died, or its settle never reached Redis.
    assert wait_until(lambda: not redis_client.exists("trigger:default:a", "trigger:default:b"), timeout=5)
    assert not redis_client.exists("{trigger:default:b}:escalation")
    again = repo.claim(NS, ["a", "b"], set(), now=1002)
    assert won(again) == (["a", "b"], [])
    assert again.reclaimed == ["a", "b"]
    assert again.ids == first.ids and first.ids["a"] != first.ids["b"]
    repo.settle_delivered(NS, again)
    assert not redis_client.exists(StateRepository.pending_key(NS, "a"))
    assert 1790 < redis_client.ttl("trigger:default:a") <= 1800
    # The next window is news again: a fresh id, not a reclaim.
    redis_client.delete("trigger:default:a")
    later = repo.claim(NS, ["a"], set(), now=5000)
    assert later.reclaimed == [] and later.ids["a"] != first.ids["a"]


def test_a_released_claim_leaves_no_pending_id(repo, redis_client):
    first = repo.claim(NS, ["a"], set(), now=1000)
    repo.release(NS, first)
    again = repo.claim(NS, ["a"], set(), now=1001)
    assert again.reclaimed == [] and again.ids["a"] != first.ids["a"]


def test_an_unsettled_escalation_frees_itself_within_the_lease(redis_client, mode):
    repo = StateRepository(redis_client, cooldown_seconds=1800, claim_lease_seconds=1, mode=mode)
    repo.settle_delivered(NS, repo.claim(NS, ["a"], set(), now=1000))
    lost = repo.claim(NS, ["a"], {"a"}, now=1010)
    assert won(lost) == ([], ["a"])
    assert wait_until(lambda: not redis_client.exists("{trigger:default:a}:escalation"), timeout=5)
    again = repo.claim(NS, ["a"], {"a"}, now=1012)
    assert won(again) == ([], ["a"]) and again.reclaimed == ["a"] and again.ids == lost.ids
    repo.settle_delivered(NS, again)
    assert won(repo.claim(NS, ["a"], {"a"}, now=1013)) == ([], [])
    assert 1770 < redis_client.ttl("{trigger:default:a}:escalation") <= 1790


def test_settling_a_window_keeps_only_the_escalation_its_own_risk_took(repo, redis_client):
    plain = repo.claim(NS, ["a"], set(), now=1000)
    escalation = repo.claim(NS, ["a"], {"a"}, now=1000)  # another request, the same second
    assert won(escalation) == ([], ["a"])
    repo.settle_delivered(NS, plain)
    assert 1790 < redis_client.ttl("trigger:default:a") <= 1800
    # The escalation is still the other request's, in flight: its lease, not the window.
    assert 0 < redis_client.pttl("{trigger:default:a}:escalation") <= DEFAULT_CLAIM_LEASE_SECONDS * 1000
    risky = repo.claim(NS, ["b"], {"b"}, now=1000)
    repo.settle_delivered(NS, risky)
    assert 1790 < redis_client.ttl("{trigger:default:b}:escalation") <= 1800


def test_a_settle_after_the_lease_ran_out_does_not_extend_a_later_claim(redis_client, mode):
    repo = StateRepository(redis_client, cooldown_seconds=1800, claim_lease_seconds=1, mode=mode)
    slow = repo.claim(NS, ["a"], set(), now=1000)
    assert wait_until(lambda: not redis_client.exists("trigger:default:a"), timeout=5)
    newer = repo.claim(NS, ["a"], set(), now=1003)
    repo.settle_delivered(NS, slow)
    assert redis_client.get("trigger:default:a") == b"1003"
    assert 0 < redis_client.pttl("trigger:default:a") <= 1000  # still the newer claim's lease
    assert redis_client.hget(StateRepository.pending_key(NS, "a"), "window").split()[0] == newer.ids["a"].encode()


def test_pending_ids_share_the_cooldown_key_slot():
    window = StateRepository.trigger_key("default", "adservice")
    assert key_slot(StateRepository.pending_key("default", "adservice").encode()) == key_slot(window.encode())


def test_escalation_key_shares_the_cooldown_key_slot():
    from redis.crc import key_slot

    window = StateRepository.trigger_key("default", "adservice")
    escalation = StateRepository.escalation_key("default", "adservice")
    assert escalation == "{trigger:default:adservice}:escalation"
    assert key_slot(escalation.encode()) == key_slot(window.encode())


def test_failed_delivery_releases_only_our_own_claims_and_is_kept(repo, redis_client):
    repo.claim(NS, ["a", "b"], {"a"}, now=1000)
    repo.claim(NS, ["c"], set(), now=990)
    assert won(repo.claim(NS, ["c"], {"c"}, now=1000)) == ([], ["c"])
    redis_client.set("trigger:default:b", "999")  # somebody else's claim by now
    ours = claims(1000, ["a", "b"], ["c"], risky=["a"])
    repo.settle_failed(NS, ours, record={"error": "HTTP 500", "message": {"n": 1}})
    assert not redis_client.exists("trigger:default:a", "{trigger:default:a}:escalation")
    assert redis_client.get("trigger:default:b") == b"999"
    assert not redis_client.exists("{trigger:default:c}:escalation")
    assert redis_client.get("trigger:default:c") == b"990"  # the window we escalated is not ours
    assert repo.failed_triggers(NS) == [{"error": "HTTP 500", "message": {"n": 1}}]


def test_failed_list_is_capped_newest_first(repo, redis_client):
    for i in range(1003):
        repo.settle_failed(NS, claims(1), record={"i": i})
    assert redis_client.llen("triggers:default:failed") == 1000
    assert [r["i"] for r in repo.failed_triggers(NS, limit=2)] == [1002, 1001]


def test_delivery_sets_last_trigger(repo, redis_client):
    repo.save_cost(cost(100, ("a", 1.0, 0.1), ("b", 1.0, 0.99)))
    repo.settle_delivered(NS, claims(5000.9, ["a", "b"]))
    assert stored(redis_client, "app:default:a")["last_trigger"] == "5000"
    assert stored(redis_client, "app:default:b")["last_trigger"] == "5000"


def test_cluster_totals_include_the_requested_cpu(repo, redis_client):
    saved = repo.save_cost(cost(100, ("a", 1.5, 0.1), ("b", 2.0, 0.2)))
    assert saved.cluster == {"hourly_cost_gbp": 1.25, "vm_count": 3, "req_cpu_total": 3.5, "req_mem_total": 8192}
    assert repo.save_forecast(forecast(100, ("a", 1.0))).cluster == saved.cluster
    assert redis_client.get("cluster:default:req_cpu_total") == b"3.5"
    assert redis_client.get("cluster:default:req_mem_total") == b"8192"
    assert redis_client.get("{cluster:default:req_mem_total}:timestamp") == b"100"


def test_forecast_before_any_cost_payload_has_no_cluster_totals(repo):
    saved = repo.save_forecast(forecast(100, ("a", 1.0)))
    assert saved.cluster == {"hourly_cost_gbp": None, "vm_count": None, "req_cpu_total": None, "req_mem_total": None}


def test_scripts_are_reloaded_after_redis_forgets_them(repo, redis_client):
    repo.save_cost(cost(100, ("a", 1.0, 0.1)))
    redis_client.script_flush()
    saved = repo.save_forecast(forecast(100, ("a", 0.5)))
    assert saved.states["a"]["pred_cpu_peak"] == 0.5


def _nodes(redis_client):
    """A client per primary: the one server, or each primary of the cluster."""
    if isinstance(redis_client, redis.RedisCluster):
        return [redis_client.get_redis_connection(node) for node in redis_client.get_primaries()]
    return [redis_client]


def _client_calls(nodes):
    """Per node, the calls of the commands a client sends itself (script calls' inner commands aside)."""
    counted = ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_command", "cmdstat_cluster", "cmdstat_script|load")
    return [
        {name: stats["calls"] for name, stats in node.info("commandstats").items() if name in counted} for node in nodes
    ]


@pytest.mark.parametrize("size", [2, 500])
def test_each_step_is_one_script_call_per_node_whatever_the_payload(repo, redis_client, size):
    names = [f"app-{i}" for i in range(size)]
    rows = [(name, 1.0, 0.1) for name in names]
    nodes = _nodes(redis_client)
    steps = (
        lambda: repo.save_cost(cost(2, *rows)),
        lambda: repo.save_forecast(forecast(2, *[(name, 0.5) for name in names])),
        lambda: repo.claim(NS, names, set(names[::2]), now=10),
        lambda: repo.settle_delivered(NS, claims(10, names[::2], names[1::2], risky=names[::4])),
        lambda: repo.settle_failed(NS, claims(10, names[::2], names[1::2]), record={"n": size}),
    )
    for step in steps:
        step()  # the first call of a script on a node loads it there (NOSCRIPT, then SCRIPT LOAD)
    for step in steps:
        for node in nodes:
            node.config_resetstat()
        step()
        calls = _client_calls(nodes)
        # One EVALSHA on each node that serves some of the keys (at most every primary), and
        # nothing else: no COMMAND GETKEYS, no slot map reads, no SCRIPT LOAD.
        assert all(set(node_calls) <= {"cmdstat_evalsha"} for node_calls in calls), calls
        per_node = [node_calls.get("cmdstat_evalsha", 0) for node_calls in calls]
        assert max(per_node) == 1 and 1 <= sum(per_node) <= len(nodes)
        if size == 500:
            assert sum(per_node) == len(nodes)  # 500 deployments' keys reach every node


def test_cluster_timestamp_keys_share_a_slot_with_the_keys_they_guard():
    from redis.crc import key_slot

    for item in ("cost", "vm_count", "req_cpu_total", "req_mem_total"):
        guarded = StateRepository.cluster_key("default", item).encode()
        assert key_slot(StateRepository.cluster_timestamp_key("default", item).encode()) == key_slot(guarded)


def test_running_windows_say_when_each_was_claimed_and_how_long_is_left(repo):
    repo.settle_delivered(NS, repo.claim(NS, ["a"], set(), now=1000))
    windows = repo.running_windows(NS, ["a", "b"])
    assert list(windows) == ["a"]
    claimed_at, left = windows["a"]
    assert claimed_at == 1000 and 1790 < left <= 1800


def test_a_kept_record_is_removed_by_its_content(repo):
    first, second = {"webhook_id": "msg_1", "n": 1.5}, {"webhook_id": "msg_2", "n": 2}
    for record in (first, second):
        repo.settle_failed(NS, claims(1), record=record)
    assert repo.remove_failed(NS, repo.failed_triggers(NS)[1]) is True
    assert repo.failed_triggers(NS) == [second]
    assert repo.remove_failed(NS, first) is False


def test_a_claim_refused_on_one_node_leaves_no_claim_held_anywhere(repo, redis_client):
    names = [f"app-{i}" for i in range(50)]
    nodes = _nodes(redis_client)
    full = nodes[-1]  # on a cluster, the other nodes take their share of the claims
    full.config_set("maxmemory-policy", "noeviction")
    full.config_set("maxmemory", "1")  # whatever is stored is over the limit: every write is refused
    try:
        with pytest.raises(redis.ResponseError, match="maxmemory"):
            repo.claim(NS, names, set(names[::3]), now=1000)
    finally:
        full.config_set("maxmemory", "0")
    held = [key for node in nodes for key in node.keys("*trigger*")]
    assert held == []
    assert won(repo.claim(NS, names, set(), now=1001)) == (names, [])


@contextlib.contextmanager
def slot_moved_behind_the_clients_back(url, key, warm_up):
    """A cluster client and repository whose slot map is stale for `key`: once `warm_up(repo)` has
    made it read the map, `key`'s (empty) slot moves to another primary. Yields (client, repo,
    the new owner); afterwards the slot goes back, `key` and its companions are deleted, and the
    stale client is closed."""
    client = redis.RedisCluster.from_url(url)
    client.flushall()
    repo = StateRepository(client, cooldown_seconds=1800, mode=RedisMode.CLUSTER)
    warm_up(repo)
    slot = key_slot(key.encode())
    source = client.nodes_manager.get_node_from_slot(slot)
    target = next(node for node in client.get_primaries() if node.name != source.name)
    node_ids = {node.name: client.get_redis_connection(node).cluster("myid") for node in client.get_primaries()}

    def assign(node):
        for primary in client.get_primaries():
            client.get_redis_connection(primary).execute_command(
                "CLUSTER", "SETSLOT", slot, "NODE", node_ids[node.name]
            )

    assign(target)  # the slot is empty, so it can move without MIGRATE; the map still names `source`
    try:
        yield client, repo, target
    finally:
        # A slot holding keys cannot be assigned back: empty it on its new owner first.
        owner = client.get_redis_connection(target)
        for found in owner.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            owner.delete(found)
        assign(source)
        close_cluster_client(client)
        fresh = redis.RedisCluster.from_url(url)
        fresh.flushall()
        close_cluster_client(fresh)


@pytest.mark.cluster
def test_a_slot_moved_since_the_map_was_read_is_followed_key_by_key(redis_cluster):
    def warm_up(repo):
        repo.save_cost(cost(100, ("a", 1.0, 0.1)))

    with slot_moved_behind_the_clients_back(redis_cluster.url, "app:default:moved", warm_up) as (client, repo, target):
        saved = repo.save_cost(cost(200, *[(f"app-{i}", 1.0, 0.1) for i in range(30)], ("moved", 2.0, 0.5)))
        assert saved.states["moved"]["req_cpu"] == 2.0 and saved.stale == []
        assert client.get_redis_connection(target).hget("app:default:moved", "req_cpu") == b"2.0"
        slot = key_slot(b"app:default:moved")
        assert client.nodes_manager.get_node_from_slot(slot).name == target.name  # the map was read again


@pytest.mark.cluster
def test_a_claim_meeting_a_moved_slot_still_wins_every_window(redis_cluster):
    names = [f"app-{i}" for i in range(60)]

    def warm_up(repo):
        repo.claim(NS, ["warm"], set(), now=1)

    with slot_moved_behind_the_clients_back(redis_cluster.url, f"trigger:default:{names[-1]}", warm_up) as moved:
        _, repo, _ = moved
        # Claims of the moved slot's node come after others in its group: none may be lost.
        assert won(repo.claim(NS, names, set(), now=1000)) == (names, [])


def test_episodes_decisions_and_resolutions_on_every_store(repo, redis_client):
    """The episode scripts (claim, decide, resolve, quiet count) on one Redis, a Cluster and Valkey."""
    first = repo.claim(NS, ["a", "b"], set(), now=1000)
    assert {name: item.notify for name, item in first.episodes.items()} == {"a": "first", "b": "first"}
    repo.settle_delivered(NS, first, {"a": [], "b": []})
    episode_a = first.episodes["a"].episode_id
    assert repo.decide(NS, "a", "not-the-episode", "no_change", 1000 + 86400, "", 1001) is False
    assert repo.decide(NS, "a", episode_a, "no_change", 1000 + 86400, "looked", 1001) is True
    assert repo.decide(NS, "b", first.episodes["b"].episode_id, "applied", None, "", 1001) is True
    # An hour on: a's reminder is held by the decision, b's episode is over and waste cannot reopen it.
    later = repo.claim(NS, ["a", "b"], set(), now=1000 + 3600)
    assert later.suppressed == ["a", "b"] and won(later) == ([], [])
    # A risk rule gets through both: a as a reminder of its episode, b as a new episode's first item.
    risk = repo.claim(NS, ["a", "b"], {"a", "b"}, now=1000 + 3601)
    assert {name: (item.notify, item.sequence) for name, item in risk.episodes.items()} == {
        "a": ("reminder", 2),
        "b": ("first", 1),
    }
    repo.settle_delivered(NS, risk, {"a": [], "b": []})
    # a goes quiet: its count starts, and its episode resolves once, with the next number.
    repo.mark_quiet(NS, ["a"], [], now=9000)
    assert redis_client.hget("app:default:a", "quiet_since") == b"9000"
    resolved = repo.resolve(NS, {"a": episode_a}, now=9000 + 3600)
    assert resolved.resolved == ["a"] and resolved.episodes["a"].sequence == 3
    assert repo.resolve(NS, {"a": episode_a}, now=9000 + 3601).resolved == []  # in flight: not twice
    repo.settle_delivered(NS, resolved, mirrors={"a": None})
    assert not redis_client.exists(StateRepository.episode_key(NS, "a"))
    assert not redis_client.hexists("app:default:a", "quiet_since")
    assert repo.resolve(NS, {"a": episode_a}, now=9000 + 3602).resolved == []  # over: not again


def test_after_no_change_the_claim_script_reminds_at_most_once_per_the_span(repo):
    first = repo.claim(NS, ["a"], set(), now=1000)
    repo.settle_delivered(NS, first, {"a": []})
    assert repo.decide(NS, "a", first.episodes["a"].episode_id, "no_change", 1000 + 86400, "", 1000)
    reminder = repo.claim(NS, ["a"], set(), now=1000 + 86400 + 60)  # the span is over: one reminder
    assert won(reminder) == (["a"], []) and reminder.episodes["a"].notify == "reminder"
    assert reminder.episodes["a"].reminder_every == 86400
    repo.settle_delivered(NS, reminder, {"a": []})
    # Past the window and the usual reminder interval, but not the span: held by the script itself.
    assert repo.claim(NS, ["a"], set(), now=1000 + 86400 + 60 + 3600).suppressed == ["a"]
