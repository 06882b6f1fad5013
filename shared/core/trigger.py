"""The trigger: the message sent to the AI agent. Its schema builds it and is its documentation of record.

Adding a field to the trigger is adding it here (and to docs/api.md, which a test checks against
these schemas). The values come from elsewhere, already in their JSON form: the reasons from the
rules (shared.core.rules), the recommendation and cost from shared.core.recommend, the episode
block and everything else from the ingest flow. The schemas pick the fields, give them their
order and nesting, and fill in what the message itself adds: its type, the time it was built, a
missing item's id, a cluster figure not known yet. Dumping a trigger again changes nothing, so the
example in docs/api.md must come out of TRIGGER_SCHEMA as it went in.
"""

import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from marshmallow import Schema, fields, missing

from shared.core.clock import utc_now_iso

TRIGGER_TYPE = "deployments.thresholds_crossed"


class Number(fields.Raw):
    """A JSON number, dumped as it was computed: an int stays an int, a float a float."""


def _doc(description: str) -> dict[str, str]:
    return {"description": description}


class ReasonSchema(Schema):
    """One rule that fired, with the value it fired on (shared.core.rules builds it)."""

    rule = fields.String(metadata=_doc("the rule: cpu_waste, cpu_utilisation, predicted_cpu_spike, ..."))
    value = Number(metadata=_doc("what the rule compared, rounded to 6 decimals (decided on the exact value)"))
    threshold = Number(metadata=_doc("the setting it was compared with"))
    peak_ratio = Number(metadata=_doc("safe_downscale only: the forecast peak over the CPU request"))
    peak_threshold = Number(metadata=_doc("safe_downscale only: the peak ratio it must stay under"))


class BoundsSchema(Schema):
    """A recommended quantity: the target, and the range the history supports."""

    target = Number(metadata=_doc("the recommended request"))
    lower = Number(metadata=_doc("the lower bound (the target without history)"))
    upper = Number(metadata=_doc("the upper bound (the target without history)"))


class HistorySchema(Schema):
    """What a recommendation stands on: the deployment's usage history."""

    samples = Number(metadata=_doc("distinct cost samples counted"))
    first_sample = fields.String(allow_none=True, metadata=_doc("ISO-8601 UTC, null without history"))
    last_sample = fields.String(allow_none=True, metadata=_doc("ISO-8601 UTC, null without history"))
    span_hours = Number(metadata=_doc("from the first sample to the last, 1 decimal"))
    confidence = Number(metadata=_doc("0 to 1, 2 decimals: the hours of history over a week"))


class RecommendationSchema(Schema):
    """The rightsizing recommendation (shared.core.recommend.recommend builds it)."""

    cpu_cores = Number(metadata=_doc("the CPU target, in cores"))
    memory_mb = Number(metadata=_doc("the memory target, in MiB"))
    headroom = Number(metadata=_doc("RECOMMENDATION_HEADROOM"))
    kubectl = fields.String(metadata=_doc("the command that applies the targets"))
    basis = fields.String(metadata=_doc("history or single_sample"))
    cpu = fields.Nested(BoundsSchema, metadata=_doc("CPU bounds, in cores"))
    memory = fields.Nested(BoundsSchema, metadata=_doc("memory bounds, in MiB"))
    history = fields.Nested(HistorySchema, metadata=_doc("what the recommendation stands on"))


class CostFiguresSchema(Schema):
    """What requests cost an hour now, after the recommendation, and the difference."""

    current_gbp_per_hour = Number(metadata=_doc("the current requests, 6 decimals"))
    recommended_gbp_per_hour = Number(metadata=_doc("the recommended requests, 6 decimals"))
    delta_gbp_per_hour = Number(metadata=_doc("recommended minus current: negative is a saving"))


class ByResourceSchema(Schema):
    """The cost figures of each resource."""

    cpu = fields.Nested(CostFiguresSchema, metadata=_doc("the CPU requests' figures"))
    memory = fields.Nested(CostFiguresSchema, metadata=_doc("the memory requests' figures"))


class CostSchema(Schema):
    """The recommendation's price (shared.core.recommend.price builds it)."""

    price_per_cpu_core_hour_gbp = Number(metadata=_doc("the cluster cost's share per requested core-hour"))
    price_per_memory_gib_hour_gbp = Number(metadata=_doc("the same per GiB-hour: the core-hour over the ratio"))
    current_gbp_per_hour = Number(metadata=_doc("CPU and memory now, 6 decimals"))
    recommended_gbp_per_hour = Number(metadata=_doc("CPU and memory after, 6 decimals"))
    delta_gbp_per_hour = Number(metadata=_doc("recommended minus current: negative is a saving"))
    by_resource = fields.Nested(ByResourceSchema, metadata=_doc("the same figures for cpu and memory"))
    monthly_delta_gbp = Number(metadata=_doc("the hourly delta over 730 hours, 2 decimals"))
    basis = fields.String(metadata=_doc("how the price was worked out, in a sentence"))


class EpisodeSchema(Schema):
    """Where an item stands in its deployment's episode, and whether it is news."""

    id = fields.String(metadata=_doc("a UUID4, the same for every item of the episode"))
    opened_at = fields.String(metadata=_doc("when its first item was claimed, ISO-8601 to the second"))
    sequence = Number(metadata=_doc("the items sent in the episode, from 1, no gap and no repeat"))
    notify = fields.String(metadata=_doc("first, changed, reminder, escalation or resolved"))
    changed = fields.List(fields.String(), metadata=_doc("what is material: reasons, requests, cpu, memory"))


def new_item_id() -> str:
    """A fresh item id (UUID4), for an item that was not given one."""
    return str(uuid.uuid4())


class TriggerItemSchema(Schema):
    """One deployment in a trigger."""

    id = fields.String(dump_default=new_item_id, metadata=_doc("the item's id: the same when sent again"))
    deployment = fields.String(metadata=_doc("the deployment's name"))
    reasons = fields.Nested(ReasonSchema, many=True, metadata=_doc("every rule that fired; [] when resolved"))
    state = fields.Dict(metadata=_doc("the whole app hash, as numbers"))
    recommendation = fields.Nested(RecommendationSchema, allow_none=True, metadata=_doc("null when resolved"))
    cost = fields.Nested(CostSchema, allow_none=True, metadata=_doc("null when no price is known, or resolved"))
    episode = fields.Nested(EpisodeSchema, metadata=_doc("where the item stands in its episode"))
    escalation = fields.Boolean(metadata=_doc("true on an escalated item; other items have no such field"))


class ClusterSchema(Schema):
    """The cluster as the newest cost payload gave it: null while no cost payload has arrived."""

    hourly_cost_gbp = Number(dump_default=None, allow_none=True, metadata=_doc("the cluster's hourly cost"))
    vm_count = Number(dump_default=None, allow_none=True, metadata=_doc("its node count"))


class TriggerSchema(Schema):
    """The webhook body: what one ingest sends the agent."""

    type = fields.Constant(TRIGGER_TYPE, metadata=_doc("always deployments.thresholds_crossed"))
    source = fields.String(metadata=_doc("cost or forecast: the service that sent it"))
    namespace = fields.String(metadata=_doc("the namespace of every item"))
    sent_at = fields.String(dump_default=utc_now_iso, metadata=_doc("when the message was built, ISO-8601 UTC"))
    cluster = fields.Nested(ClusterSchema, metadata=_doc("the cluster's cost and size"))
    triggers = fields.Nested(TriggerItemSchema, many=True, metadata=_doc("the items, one per deployment"))


TRIGGER_SCHEMA = TriggerSchema()

# Fields whose value goes into the message as given.
_AS_GIVEN = (Number, fields.String, fields.Boolean)


def dumper(schema: Schema) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    """schema.dump for these schemas' kinds of field, about ten times faster: the same dict, key for key.

    marshmallow spends a microsecond or two on each field, and a 50-item trigger has some 3,000 of
    them. The fields, their order, nesting and defaults are still the schema's; a field of another
    kind (one that would format its value) is refused here, rather than dumped differently.
    """
    plan: list[tuple[str, str, Any, Any]] = []  # (key, how, default or constant, nested dumper)
    for name, field in schema.dump_fields.items():
        if field.attribute not in (None, name) or field.data_key not in (None, name):
            raise TypeError(f"{type(schema).__name__}.{name}: a renamed field is not supported")
        if isinstance(field, fields.Constant):
            plan.append((name, "constant", field.constant, None))
        elif isinstance(field, fields.Nested):
            plan.append((name, "many" if field.many else "one", field.dump_default, dumper(field.schema)))
        elif type(field) in _AS_GIVEN:
            plan.append((name, "given", field.dump_default, None))
        elif (type(field) is fields.Dict and field.key_field is None and field.value_field is None) or (
            type(field) is fields.List and type(field.inner) in _AS_GIVEN
        ):
            # A new dict or list, as marshmallow's Dict and List make.
            plan.append((name, "copied", field.dump_default, None))
        else:
            raise TypeError(f"{type(schema).__name__}.{name}: {type(field).__name__} is not supported")

    if all(how == "given" and default is missing for _, how, default, _ in plan):
        names = [name for name, *_ in plan]

        def dump_given(obj: Mapping[str, Any]) -> dict[str, Any]:
            return {name: obj[name] for name in names if name in obj}

        return dump_given

    def dump(obj: Mapping[str, Any]) -> dict[str, Any]:
        out = {}
        for name, how, default, inner in plan:
            if how == "constant":
                out[name] = default
                continue
            value = obj.get(name, missing)
            if value is missing:
                if default is missing:
                    continue
                value = default() if callable(default) else default
            if value is None or how == "given":
                out[name] = value
            elif how == "one":
                out[name] = inner(value)
            elif how == "many":
                out[name] = [inner(each) for each in value]
            else:
                out[name] = dict(value) if isinstance(value, Mapping) else list(value)
        return out

    return dump


_dump_trigger = dumper(TRIGGER_SCHEMA)


def build_trigger(
    source: str, namespace: str, cluster: Mapping[str, Any], items: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """The webhook body for `items` (each as TriggerItemSchema names its fields), built now."""
    return _dump_trigger({"source": source, "namespace": namespace, "cluster": cluster, "triggers": items})
