"""Episodes: first, changed, reminder, escalation and resolved items, and the agent's decisions.

Ingest runs on a clock the tests set (Aggregator.ingest's `now`), against the session's real
redis-server and a real agent receiver.
"""

import uuid
from datetime import UTC, datetime

import pytest

from cost_service import create_app as create_cost_app
from forecast_service import create_app as create_forecast_app
from shared.web.services import COST, service_of
from tests.conftest import AGENT_TOKEN, COST_TOKEN, FORECAST_TOKEN, auth

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
MINUTE, HOUR, DAY = 60, 3600, 86400


def iso(seconds):
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


class Feed:
    """Sends cost and forecast samples through the services' own ingest, at times the test gives."""

    def __init__(self, cost_app, forecast_app):
        self.cost_service = service_of(cost_app)
        self.forecast_service = service_of(forecast_app)

    def cost(self, now, req_cpu=2.0, usage=0.4, req_mem=4096, usage_mem=512, name="adservice"):
        """One cost sample of `name` at `now`; the IngestResult."""
        payload = {
            "source": "cost-engine",
            "timestamp": iso(now),
            "namespace": "default",
            "cluster_totals": {"vm_count": 3, "current_hourly_cost_gbp": 1.25},
            "deployments": [
                {
                    "name": name,
                    "current_requests": {"cpu_cores": req_cpu, "memory_mb": req_mem},
                    "current_usage": {"cpu_cores": usage, "memory_mb": usage_mem},
                }
            ],
        }
        svc = self.cost_service
        return svc.aggregator.ingest(svc.source, svc.schema.load(payload), f"req-{now}", now=now)

    def forecast(self, now, peak, name="adservice", peak_mem=550):
        """One forecast sample of `name` at `now`; the IngestResult."""
        payload = {
            "source": "forecast",
            "timestamp": iso(now),
            "namespace": "default",
            "deployments": [{"name": name, "predict_peak_24h": {"cpu_cores": peak, "memory_mb": peak_mem}}],
        }
        svc = self.forecast_service
        return svc.aggregator.ingest(svc.source, svc.schema.load(payload), f"req-{now}", now=now)


def make_feed(base_config, **settings):
    config = {**base_config, **settings}
    return Feed(create_cost_app(config), create_forecast_app(config))


@pytest.fixture
def feed(base_config):
    return make_feed(base_config)


def items(receiver):
    """Every item the agent took, in order."""
    return [item for message in receiver.messages for item in message["triggers"]]


def notifies(receiver):
    return [(item["episode"]["notify"], item["episode"]["sequence"]) for item in items(receiver)]


def test_the_first_item_opens_an_episode(feed, receiver):
    result = feed.cost(T0)
    assert result.triggered == ["adservice"] and result.body["suppressed"] == []
    [item] = items(receiver)
    episode = item["episode"]
    assert uuid.UUID(episode["id"]).version == 4
    assert episode == {"id": episode["id"], "opened_at": iso(T0), "sequence": 1, "notify": "first", "changed": []}


def test_by_default_a_firing_deployment_is_reminded_each_cooldown_as_the_spec_says(feed, receiver):
    feed.cost(T0)
    assert feed.cost(T0 + 29 * MINUTE).cooldown == ["adservice"]
    assert feed.cost(T0 + 30 * MINUTE).triggered == ["adservice"]
    assert feed.cost(T0 + 45 * MINUTE).cooldown == ["adservice"]
    assert feed.cost(T0 + 60 * MINUTE).triggered == ["adservice"]
    assert notifies(receiver) == [("first", 1), ("reminder", 2), ("reminder", 3)]
    assert len({item["episode"]["id"] for item in items(receiver)}) == 1


def test_a_longer_reminder_interval_holds_unchanged_news_back(base_config, receiver):
    feed = make_feed(base_config, REMINDER_SECONDS=str(DAY))
    feed.cost(T0)
    assert feed.cost(T0 + 10 * MINUTE).cooldown == ["adservice"]
    held = feed.cost(T0 + 2 * HOUR)
    assert held.triggered == [] and held.suppressed == ["adservice"] and held.cooldown == []
    assert feed.cost(T0 + DAY).triggered == ["adservice"]
    assert notifies(receiver) == [("first", 1), ("reminder", 2)]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"req_cpu": 4.0}, ["requests"]),  # requests doubled, usage and so the targets the same
        ({"usage": 0.05}, ["cpu"]),  # the recommended CPU target drops from 0.46 to 0.06 cores
        ({"usage_mem": 2048}, ["memory"]),  # the recommended memory target goes from 589 to 2356 MiB
    ],
)
def test_a_material_change_is_sent_once_the_cooldown_allows_it(base_config, receiver, change, expected):
    feed = make_feed(base_config, REMINDER_SECONDS=str(DAY))
    feed.cost(T0)
    assert feed.cost(T0 + 10 * MINUTE, **change).cooldown == ["adservice"]  # the window still runs
    assert feed.cost(T0 + 30 * MINUTE, **change).triggered == ["adservice"]
    item = items(receiver)[-1]
    assert item["episode"]["notify"] == "changed" and item["episode"]["changed"] == expected
    # Now that is what the agent knows: the same numbers again are no news.
    assert feed.cost(T0 + 90 * MINUTE, **change).suppressed == ["adservice"]


def test_a_small_move_is_not_material(base_config, receiver):
    feed = make_feed(base_config, REMINDER_SECONDS=str(DAY))
    feed.cost(T0)
    # The target moves from 0.46 to 0.52 cores: 13 %, but under the 0.1 core floor.
    assert feed.cost(T0 + 40 * MINUTE, usage=0.45).suppressed == ["adservice"]


def test_a_rule_new_to_the_episode_is_a_change_but_the_other_services_rules_are_not(base_config, receiver):
    feed = make_feed(base_config, REMINDER_SECONDS=str(DAY))
    feed.cost(T0)
    # safe_downscale is new to the episode: changed, reasons.
    assert feed.forecast(T0 + 40 * MINUTE, peak=0.45).triggered == ["adservice"]
    assert items(receiver)[-1]["episode"]["changed"] == ["reasons"]
    # Both services' rules have been sent now: each firing again is no news.
    assert feed.cost(T0 + 80 * MINUTE).suppressed == ["adservice"]
    assert feed.forecast(T0 + 81 * MINUTE, peak=0.45).suppressed == ["adservice"]


def test_a_risk_rule_escalates_the_window_and_gets_through_any_hold(base_config, receiver):
    feed = make_feed(base_config, REMINDER_SECONDS=str(DAY))
    feed.cost(T0)
    escalated = feed.forecast(T0 + 5 * MINUTE, peak=1.9)  # predicted_cpu_spike inside the window
    assert escalated.triggered == ["adservice"]
    item = items(receiver)[-1]
    assert item["escalation"] is True and item["episode"]["notify"] == "escalation"
    # The predicted peak is new (reasons), and the recommendation follows it up (cpu).
    assert item["episode"]["sequence"] == 2 and item["episode"]["changed"] == ["reasons", "cpu"]
    # After the window, the risk still firing goes out at once (the reminder interval is for waste).
    assert feed.forecast(T0 + 31 * MINUTE, peak=1.9).triggered == ["adservice"]
    assert notifies(receiver)[-1] == ("reminder", 3)


def test_a_failed_delivery_uses_up_no_sequence_number(feed, receiver):
    feed.cost(T0)
    receiver.status = 503
    assert feed.cost(T0 + 30 * MINUTE).delivery_status == "failed"
    receiver.status = 202
    assert feed.cost(T0 + 35 * MINUTE).triggered == ["adservice"]
    assert notifies(receiver) == [("first", 1), ("reminder", 2)]


def test_a_failed_first_item_opens_no_episode(feed, receiver, redis_client):
    receiver.status = 503
    assert feed.cost(T0).delivery_status == "failed"
    assert not redis_client.exists("{trigger:default:adservice}:episode")
    receiver.status = 202
    feed.cost(T0 + MINUTE)
    assert notifies(receiver) == [("first", 1)]


def test_a_quiet_episode_resolves_once(base_config, receiver, redis_client):
    feed = make_feed(base_config, RESOLVE_AFTER_SECONDS=str(HOUR))
    feed.cost(T0)
    episode_id = items(receiver)[0]["episode"]["id"]
    assert feed.cost(T0 + 10 * MINUTE, usage=1.5).triggered == []  # quiet: the count starts
    assert feed.cost(T0 + 15 * MINUTE, usage=1.5).triggered == []
    assert feed.cost(T0 + 20 * MINUTE).cooldown == ["adservice"]  # firing again: the count stops
    assert feed.cost(T0 + 25 * MINUTE, usage=1.5).triggered == []  # and starts anew here
    assert feed.cost(T0 + 25 * MINUTE + HOUR - 1, usage=1.5).triggered == []
    resolved = feed.cost(T0 + 25 * MINUTE + HOUR, usage=1.5)
    assert resolved.triggered == ["adservice"] and resolved.cooldown == []
    item = items(receiver)[-1]
    assert item["reasons"] == [] and item["recommendation"] is None and item["cost"] is None
    assert item["state"]["usage_cpu_curr"] == 1.5
    assert item["episode"] == {
        "id": episode_id,
        "opened_at": iso(T0),
        "sequence": 2,
        "notify": "resolved",
        "changed": [],
    }
    assert feed.cost(T0 + 3 * HOUR, usage=1.5).triggered == []  # exactly one resolved item
    assert not redis_client.exists("{trigger:default:adservice}:episode")
    # The next firing opens a new episode, even inside the old window.
    feed.cost(T0 + 3 * HOUR + MINUTE)
    assert notifies(receiver)[-1] == ("first", 1) and items(receiver)[-1]["episode"]["id"] != episode_id


def test_resolve_after_zero_resolves_on_the_first_quiet_sample(base_config, receiver):
    feed = make_feed(base_config, RESOLVE_AFTER_SECONDS="0")
    feed.cost(T0)
    assert feed.cost(T0 + MINUTE, usage=1.5).triggered == ["adservice"]
    assert notifies(receiver) == [("first", 1), ("resolved", 2)]


def test_without_resolved_notifications_the_episode_ends_silently(base_config, receiver, redis_client):
    feed = make_feed(base_config, RESOLVE_AFTER_SECONDS="0", RESOLVED_NOTIFICATIONS="false")
    feed.cost(T0)
    assert feed.cost(T0 + MINUTE, usage=1.5).triggered == []
    assert not redis_client.exists("{trigger:default:adservice}:episode")
    assert notifies(receiver) == [("first", 1)]


def test_state_no_payload_writes_expires(base_config, redis_client):
    feed = make_feed(base_config, STATE_TTL_SECONDS=str(2 * DAY))
    feed.cost(T0, usage=1.5)
    assert 2 * DAY < redis_client.ttl("app:default:adservice") <= 2 * DAY + HOUR


# The agent's side: its read and its decisions, over HTTP.


@pytest.fixture
def agent_config(base_config):
    return {**base_config, "AGENT_TOKEN": AGENT_TOKEN, "REMINDER_SECONDS": str(DAY)}


@pytest.fixture
def agent(agent_config):
    return create_cost_app(agent_config).test_client()


def decide(agent, episode_id, decision, name="adservice", **extra):
    body = {"episode_id": episode_id, "decision": decision, **extra}
    return agent.post(f"/deployments/default/{name}/decision", json=body, headers=auth(AGENT_TOKEN))


def test_the_agent_reads_a_deployment_and_its_episode(agent_config, agent, receiver):
    now = datetime.now(UTC).timestamp()
    feed = make_feed(agent_config)
    feed.cost(now - 60)
    response = agent.get("/deployments/default/adservice", headers=auth(AGENT_TOKEN))
    assert response.status_code == 200
    body = response.get_json()
    episode = items(receiver)[0]["episode"]
    assert body["namespace"] == "default" and body["deployment"] == "adservice"
    assert body["state"]["req_cpu"] == 2.0 and body["state"]["last_trigger"] == int(now - 60)
    assert body["episode"]["id"] == episode["id"] and body["episode"]["sequence"] == 1
    assert body["episode"]["notify"] == "first" and body["episode"]["decision"] is None
    assert body["episode"]["reasons"] == items(receiver)[0]["reasons"]
    assert 1700 < body["cooldown_seconds_left"] <= 1800
    assert agent.get("/deployments/default/nothing", headers=auth(AGENT_TOKEN)).status_code == 404


def test_no_change_holds_reminders_but_not_changes(agent_config, agent, receiver, redis_client):
    now = datetime.now(UTC).timestamp()
    feed = make_feed(agent_config, REMINDER_SECONDS="")
    feed.cost(now - 2 * HOUR)
    episode_id = items(receiver)[0]["episode"]["id"]
    response = decide(agent, episode_id, "no_change", note="looked; fine")
    assert response.status_code == 200
    decision = response.get_json()["episode"]["decision"]
    assert decision["decision"] == "no_change" and decision["note"] == "looked; fine"
    assert decision["until"] > iso(now + 7 * DAY - 60)
    assert feed.cost(now - HOUR).suppressed == ["adservice"]  # a reminder would be due
    assert feed.cost(now - HOUR + MINUTE, usage=0.05).triggered == ["adservice"]  # the CPU target moved
    assert notifies(receiver)[-1] == ("changed", 2)


def test_snooze_holds_every_waste_item_but_risk_gets_through(agent_config, agent, receiver):
    now = datetime.now(UTC).timestamp()
    feed = make_feed(agent_config)
    feed.cost(now - 2 * HOUR)
    episode_id = items(receiver)[0]["episode"]["id"]
    assert decide(agent, episode_id, "snooze", until=iso(now + DAY)).status_code == 200
    assert feed.cost(now - HOUR, usage=0.05).suppressed == ["adservice"]  # changed, but snoozed
    assert feed.forecast(now - HOUR + MINUTE, peak=1.9).triggered == ["adservice"]  # risk
    assert notifies(receiver)[-1][0] == "changed"


def test_applied_ends_the_episode_and_keeps_waste_from_reopening_it(agent_config, agent, receiver, redis_client):
    now = datetime.now(UTC).timestamp()
    feed = make_feed(agent_config)
    feed.cost(now - 2 * HOUR)
    episode_id = items(receiver)[0]["episode"]["id"]
    response = decide(agent, episode_id, "applied")
    assert response.status_code == 200 and response.get_json()["episode"] is None
    assert feed.cost(now - HOUR).suppressed == ["adservice"]
    assert feed.cost(now - HOUR + MINUTE, usage=1.9).triggered == ["adservice"]  # cpu_utilisation: risk
    assert notifies(receiver)[-1] == ("first", 1) and items(receiver)[-1]["episode"]["id"] != episode_id
    # A decision about the old episode changes nothing.
    stale = decide(agent, episode_id, "no_change")
    assert stale.status_code == 409 and stale.get_json()["error"]["code"] == "EPISODE_MISMATCH"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"decision": "snooze"}, "until"),
        ({"decision": "snooze", "until": "2020-01-01T00:00:00Z"}, "until"),
        ({"decision": "snooze", "until": "2999-01-01T00:00:00Z"}, "until"),
        ({"decision": "maybe"}, "decision"),
        ({"decision": "no_change", "note": "x" * 1001}, "note"),
        ({"decision": "no_change", "colour": "blue"}, "colour"),
        ({"decision": "applied", "until": "2999-01-01T00:00:00Z"}, "until"),
    ],
)
def test_a_bad_decision_is_refused_and_changes_nothing(agent_config, agent, receiver, redis_client, body, field):
    make_feed(agent_config).cost(datetime.now(UTC).timestamp() - 60)
    episode_id = items(receiver)[0]["episode"]["id"]
    before = redis_client.hgetall("{trigger:default:adservice}:episode")
    response = decide(agent, episode_id, **body)
    assert response.status_code == 422 and field in response.get_json()["error"]["details"]["fields"]
    assert redis_client.hgetall("{trigger:default:adservice}:episode") == before


def test_each_caller_is_refused_on_the_others_paths(agent_config, agent, cost_payload):
    assert agent.get("/deployments/default/adservice", headers=auth(COST_TOKEN)).status_code == 401
    assert agent.get("/deployments/default/adservice").status_code == 401
    refused = agent.post(COST.path, json=cost_payload, headers=auth(AGENT_TOKEN))
    assert refused.status_code == 401
    forecast = create_forecast_app(agent_config).test_client()
    assert forecast.get("/deployments/default/adservice", headers=auth(FORECAST_TOKEN)).status_code == 401
    assert decide(agent, "x", "no_change").status_code == 404  # nothing stored yet


def test_without_an_agent_token_the_paths_are_not_served(cost_client):
    assert cost_client.get("/deployments/default/adservice", headers=auth(COST_TOKEN)).status_code == 404


def test_the_agent_token_must_differ_from_the_callers(base_config):
    with pytest.raises(RuntimeError, match="AGENT_TOKEN must differ"):
        create_cost_app({**base_config, "AGENT_TOKEN": COST_TOKEN})


def test_a_decision_and_the_claims_are_one_atomic_step(agent_config, agent, receiver, redis_client):
    """The decision script checks the episode in the claims' slot: an episode that ended is not decided."""
    now = datetime.now(UTC).timestamp()
    feed = make_feed(agent_config)
    feed.cost(now - 2 * HOUR)
    episode_id = items(receiver)[0]["episode"]["id"]
    redis_client.delete("{trigger:default:adservice}:episode")  # ended meanwhile
    assert decide(agent, episode_id, "no_change").status_code == 409
    assert not redis_client.exists("{trigger:default:adservice}:episode")


def test_keys_of_an_episode_share_the_cooldown_key_slot():
    from redis.crc import key_slot

    from shared.store.repository import StateRepository

    window = key_slot(StateRepository.trigger_key("default", "a").encode())
    for key in (
        StateRepository.episode_key("default", "a"),
        StateRepository.applied_key("default", "a"),
        StateRepository.resolving_key("default", "a"),
    ):
        assert key_slot(key.encode()) == window


def test_after_no_change_reminders_come_at_most_once_per_the_span_the_agent_gave(feed, receiver):
    feed.cost(T0)
    episode_id = items(receiver)[0]["episode"]["id"]
    assert feed.cost_service.aggregator.decide("default", "adservice", episode_id, "no_change", T0 + DAY, "", T0 + 60)
    assert feed.cost(T0 + HOUR).suppressed == ["adservice"]
    assert feed.cost(T0 + DAY - MINUTE).suppressed == ["adservice"]
    assert feed.cost(T0 + DAY + MINUTE).triggered == ["adservice"]  # the span is over: one reminder
    assert feed.cost(T0 + DAY + HOUR).suppressed == ["adservice"]  # and not one per cooldown after it
    assert feed.cost(T0 + 2 * DAY + 2 * MINUTE).triggered == ["adservice"]
    assert notifies(receiver) == [("first", 1), ("reminder", 2), ("reminder", 3)]
