"""The trigger's schema: it builds the message as the contract shows it, and docs/api.md agrees with it."""

import json
import re

import pytest
from marshmallow import Schema, fields

from devtools.harness import ROOT
from shared.core.recommend import price, recommend
from shared.core.rules import Thresholds, evaluate_cost, evaluate_forecast
from shared.core.trigger import TRIGGER_SCHEMA, TRIGGER_TYPE, TriggerSchema, build_trigger, dumper

API_DOC = ROOT / "docs" / "api.md"
CLUSTER = {"hourly_cost_gbp": 1.25, "vm_count": 3, "req_cpu_total": 3.5, "req_mem_total": 6144}
EPISODE = {"id": "3f2c", "opened_at": "2026-11-23T16:54:35Z", "sequence": 2, "notify": "escalation", "changed": []}
# Memory rules on, and a forecast well below the request: every kind of reason, extras included.
STATE = {
    "cost_timestamp": 1704110400,
    "req_cpu": 2.0,
    "req_mem": 4096,
    "usage_cpu_curr": 0.4,
    "usage_mem_curr": 3900,
    "pred_cpu_peak": 0.55,
    "pred_mem_peak": 4000,
    "forecast_timestamp": 1704110400,
}


def item(**changes):
    """A trigger item as the ingest flow gives it, from the real rules, recommendation and price."""
    thresholds = Thresholds(memory_rules=True)
    recommendation = recommend("default", "adservice", STATE, 0.15)
    given = {
        "id": "0aec",
        "deployment": "adservice",
        "reasons": evaluate_cost(STATE, thresholds) + evaluate_forecast(STATE, thresholds),
        "state": STATE,
        "recommendation": recommendation,
        "cost": price(CLUSTER, STATE, recommendation),
        "episode": EPISODE,
        "escalation": True,
    }
    return {**given, **changes}


def same_json(built, expected):
    """Equal as JSON text: the same keys, values and types, in the same order."""
    return json.dumps(built) == json.dumps(expected)


def test_build_trigger_has_the_contract_shape():
    body = build_trigger(
        "cost",
        "default",
        {"hourly_cost_gbp": 1.25, "vm_count": 3, "req_cpu_total": 3.5},
        [{"deployment": "adservice", "reasons": [{"rule": "cpu_waste", "value": 0.8, "threshold": 0.5}], "state": {}}],
    )
    assert body["type"] == TRIGGER_TYPE == "deployments.thresholds_crossed"
    assert body["source"] == "cost" and body["namespace"] == "default"
    assert body["cluster"] == {"hourly_cost_gbp": 1.25, "vm_count": 3}
    assert body["sent_at"].endswith("Z")
    [trigger] = body["triggers"]
    assert list(trigger) == ["id", "deployment", "reasons", "state"]
    assert len(trigger["id"]) == 36


def test_an_item_goes_out_as_the_rules_and_the_recommendation_made_it():
    given = item()
    assert {reason["rule"] for reason in given["reasons"]} >= {"cpu_waste", "safe_downscale", "memory_utilisation"}
    [built] = build_trigger("forecast", "default", CLUSTER, [given])["triggers"]
    # Nothing the rules, recommend() or price() put in is lost, reordered or retyped.
    assert same_json(built, given)


def test_a_resolved_item_and_an_unknown_cluster_keep_their_nulls():
    resolved = item(reasons=[], recommendation=None, cost=None, episode={**EPISODE, "notify": "resolved"})
    del resolved["escalation"]
    body = build_trigger("cost", "default", {}, [resolved])
    assert body["cluster"] == {"hourly_cost_gbp": None, "vm_count": None}
    assert same_json(body["triggers"], [resolved])


@pytest.mark.parametrize("changes", [{}, {"recommendation": None, "cost": None}, {"id": None}])
def test_the_fast_dump_is_marshmallows_dump(changes):
    message = {
        "source": "forecast",
        "namespace": "default",
        "sent_at": "2026-11-23T16:54:35.794Z",
        "cluster": CLUSTER,
        "triggers": [item(**changes), item(deployment="cartservice")],
    }
    assert same_json(dumper(TRIGGER_SCHEMA)(message), TRIGGER_SCHEMA.dump(message))


def test_the_fast_dump_fills_the_same_defaults():
    message = {"source": "cost", "namespace": "default", "cluster": {}, "triggers": [{"deployment": "adservice"}]}
    fast, reference = dumper(TRIGGER_SCHEMA)(message), TRIGGER_SCHEMA.dump(message)
    assert list(fast) == list(reference) and fast["cluster"] == reference["cluster"]
    assert list(fast["triggers"][0]) == list(reference["triggers"][0]) == ["id", "deployment"]


def test_a_field_the_fast_dump_would_not_copy_as_marshmallow_formats_it_is_refused():
    class Formatting(Schema):
        value = fields.Float()

    with pytest.raises(TypeError, match="Float"):
        dumper(Formatting())


def test_dumping_a_trigger_again_changes_nothing():
    body = build_trigger("cost", "default", CLUSTER, [item()])
    assert same_json(TRIGGER_SCHEMA.dump(body), body)


def contract_section():
    """docs/api.md from "## Trigger contract" to the agent's headers: the trigger as the agent reads it."""
    text = API_DOC.read_text()
    return text[text.index("## Trigger contract") : text.index("### Headers and signatures")]


def test_the_contract_example_in_the_docs_is_what_the_schema_builds():
    section = contract_section()
    example = json.loads(re.search(r"```json\n(.*?)```", section, re.S).group(1))
    assert same_json(TRIGGER_SCHEMA.dump(example), example)
    [downscale] = re.findall(r'`(\{"rule": "safe_downscale".*?\})`', section)
    [reason] = TRIGGER_SCHEMA.dump({"triggers": [{"reasons": [json.loads(downscale)]}]})["triggers"][0]["reasons"]
    assert same_json(reason, json.loads(downscale))
    episodes = [json.loads(line) for line in section.splitlines() if line.startswith('{"id": "3f2c')]
    assert len(episodes) == 5
    for episode in episodes:
        assert same_json(TRIGGER_SCHEMA.dump({"triggers": [{"episode": episode}]})["triggers"][0]["episode"], episode)


def schema_fields(schema, path=""):
    """(dotted path, field) for every field of `schema` and of the schemas nested in it."""
    for name, field in schema.fields.items():
        yield path + name, field
        if isinstance(field, fields.Nested):
            yield from schema_fields(field.schema, f"{path}{name}.")


def test_every_field_of_the_trigger_is_described_and_documented():
    section = contract_section()
    for path, field in schema_fields(TriggerSchema()):
        name = path.rsplit(".", 1)[-1]
        assert field.metadata.get("description"), f"{path} has no description"
        assert f'"{name}"' in section or f"`{name}`" in section, f"docs/api.md does not mention {path}"
