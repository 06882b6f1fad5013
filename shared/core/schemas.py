"""Marshmallow schemas for the two ingest payloads and the agent's decision.

A loaded payload is ready for the repository: `timestamp` becomes Unix seconds and each
deployment becomes a flat dict named by the app hash's fields (`req_cpu`, `pred_cpu_peak`, ...).
The deployment list is checked by one field in a single pass: nested schemas per entry cost
ten times the JSON parsing on payloads with thousands of deployments.
"""

import math
import re
import time
from collections.abc import Callable
from datetime import datetime
from functools import partial
from typing import Any, cast

from marshmallow import RAISE, Schema, ValidationError, fields, validate

from shared.core.episodes import DECISIONS

NOTE_MAX_CHARS = 1000
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_LABEL_MESSAGE = "Must be a DNS-1123 label: lowercase letters, digits and '-', at most 63 characters."
NOT_A_NUMBER = "Not a valid number."
NOT_AN_INTEGER = "Not a valid integer."
REQUIRED = "Missing data for required field."
UNKNOWN = "Unknown field."

# Far beyond any real cluster, yet small enough that no arithmetic on them overflows.
MAX_CPU_CORES = 1_000_000
MAX_MEMORY_MB = 1_000_000_000
MAX_HOURLY_COST = 1_000_000_000
MAX_VM_COUNT = 1_000_000
# The two quantities of every resource object in a deployment entry, with their upper bounds.
QUANTITY_LIMITS = {"cpu_cores": MAX_CPU_CORES, "memory_mb": MAX_MEMORY_MB}
# Below a millicore (Kubernetes' smallest CPU unit) and a byte, a quantity is noise, yet as a divisor
# it overflows a price or a ratio to Infinity: such values are loaded as zero (documented).
CPU_FLOOR, MEMORY_FLOOR = 0.001, 1 / (1024 * 1024)
QUANTITY_FLOORS = {"cpu_cores": CPU_FLOOR, "memory_mb": MEMORY_FLOOR}
# A timestamp from the future would make every later payload look stale; allow clock skew only.
MAX_FUTURE_SECONDS = 3600


def number_error(value: object, maximum: float, minimum: float = 0) -> str | None:
    """The message for a JSON value that is not a finite number in range, or None when it is."""
    # bool is an int in Python, but `true` is not a number in JSON.
    if type(value) is not int and type(value) is not float:
        return NOT_A_NUMBER
    if type(value) is float and not math.isfinite(value):
        return "Must be a finite number."
    if value < minimum:
        return f"Must be greater than or equal to {minimum}."
    if value > maximum:
        return f"Must be less than or equal to {maximum}."
    return None


def floored(key: str, value: float) -> float:
    """A quantity as stored: zero when it is below its key's floor (QUANTITY_FLOORS)."""
    return 0 if value < QUANTITY_FLOORS[key] else value


class StrictNumber(fields.Field):
    """A JSON number (never a string or boolean), finite and within [minimum, maximum]."""

    def __init__(self, *, maximum, minimum=0, integer=False, **kwargs):
        super().__init__(**kwargs)
        self.minimum, self.maximum, self.integer = minimum, maximum, integer

    def _deserialize(self, value, attr, data, **kwargs):
        if self.integer and type(value) is not int:
            raise ValidationError(NOT_AN_INTEGER)
        message = number_error(value, self.maximum, self.minimum)
        if message:
            raise ValidationError(message)
        return value


class Timestamp(fields.Field):
    """An ISO-8601 date-time with a timezone, loaded as Unix seconds."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, str) or len(value) > 64:
            raise ValidationError("Not a valid ISO-8601 date-time.")
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise ValidationError("Not a valid ISO-8601 date-time.") from None
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise ValidationError("Must include a timezone, e.g. 2024-01-01T12:00:00Z.")
        seconds = moment.timestamp()
        if seconds > time.time() + MAX_FUTURE_SECONDS:
            raise ValidationError("Must not be more than an hour in the future.")
        if seconds < 0:
            raise ValidationError("Must not be before 1970-01-01T00:00:00Z.")
        return int(seconds) if seconds.is_integer() else seconds


class DeploymentList(fields.Field):
    """A non-empty list of uniquely named deployments, each checked in one pass.

    `groups` maps each nested object of an entry to the (cpu_cores, memory_mb) hash fields it
    fills; errors come back in marshmallow's shape, keyed by list index.
    """

    def __init__(self, *, groups, max_items=5000, **kwargs):
        super().__init__(**kwargs)
        self.groups = groups
        self.max_items = max_items
        self.allowed_keys = frozenset(("name", *groups))
        self.entry_keys = len(self.allowed_keys)
        self.group_fields = tuple((group, cpu_field, mem_field) for group, (cpu_field, mem_field) in groups.items())

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, list):
            raise ValidationError("Not a valid list.")
        if not value:
            raise ValidationError("Must contain at least one deployment.")
        if len(value) > self.max_items:
            raise ValidationError(f"Must contain at most {self.max_items} deployments.")
        loaded: list[dict[str, Any]] = []
        errors: dict[int, Any] = {}
        seen: set[str] = set()
        for index, entry in enumerate(value):
            row, entry_errors = self._load_entry(entry, seen)
            if entry_errors:
                errors[index] = entry_errors
            else:
                loaded.append(row)
        if errors:
            raise ValidationError(errors)
        return loaded

    def _load_entry(self, entry, seen):
        # Nearly every entry is well formed: check that cheaply, and only spell out errors when not.
        row = self._load_valid_entry(entry, seen)
        if row is not None:
            return row, None
        return self._entry_errors(entry, seen)

    def _load_valid_entry(self, entry, seen):
        """The loaded row when the entry is valid in every respect, else None."""
        # Written out rather than looped over QUANTITY_LIMITS: this runs once per deployment, and
        # on a payload of thousands it is a large share of a request's time.
        # The exact key count plus every expected key present means no unknown keys.
        if type(entry) is not dict or len(entry) != self.entry_keys:
            return None
        name = entry.get("name")
        if type(name) is not str or name in seen or not DNS_LABEL.match(name):
            return None
        row: dict[str, Any] = {"name": name}
        for group, cpu_field, mem_field in self.group_fields:
            values = entry.get(group)
            if type(values) is not dict or len(values) != len(QUANTITY_LIMITS):
                return None
            cpu, memory = values.get("cpu_cores"), values.get("memory_mb")
            # A comparison with NaN is false, and infinities are out of range: both fail here.
            if (
                (type(cpu) is not float and type(cpu) is not int)
                or (type(memory) is not float and type(memory) is not int)
                or not 0 <= cpu <= MAX_CPU_CORES
                or not 0 <= memory <= MAX_MEMORY_MB
            ):
                return None
            row[cpu_field] = cpu if cpu >= CPU_FLOOR else 0
            row[mem_field] = memory if memory >= MEMORY_FLOOR else 0
        seen.add(name)
        return row

    def _entry_errors(self, entry, seen):
        """marshmallow-style errors for an entry the fast check refused."""
        if not isinstance(entry, dict):
            return None, {"_schema": ["Invalid input type."]}
        errors: dict[str, Any] = {key: [UNKNOWN] for key in entry if key not in self.allowed_keys}
        name = entry.get("name")
        if name is None:
            errors["name"] = [REQUIRED]
        elif not isinstance(name, str) or not DNS_LABEL.match(name):
            errors["name"] = [DNS_LABEL_MESSAGE]
        elif name in seen:
            errors["name"] = ["Duplicate deployment name in this payload."]
        else:
            seen.add(name)
        row: dict[str, Any] = {"name": name}
        for group, (cpu_field, mem_field) in self.groups.items():
            values = entry.get(group)
            if values is None:
                errors[group] = [REQUIRED]
                continue
            if not isinstance(values, dict):
                errors[group] = {"_schema": ["Invalid input type."]}
                continue
            group_errors = {key: [UNKNOWN] for key in values if key not in QUANTITY_LIMITS}
            for (key, maximum), target in zip(QUANTITY_LIMITS.items(), (cpu_field, mem_field)):
                if key not in values:
                    group_errors[key] = [REQUIRED]
                    continue
                message = number_error(values[key], maximum)
                if message:
                    group_errors[key] = [message]
                else:
                    row[target] = floored(key, values[key])
            if group_errors:
                errors[group] = group_errors
        return row, errors


def quick_loader(field: fields.Field) -> Callable[[Any], Any]:
    """A plain function that loads a valid value as `field` does, and raises ValidationError on anything else.

    Made from the field's declaration, so marshmallow stays the one statement of the rules: its
    type and limits, and its validators, read when called (PayloadSchema adds one after
    construction). A field of a kind not known here is called through marshmallow.
    """
    if field.allow_none:
        return partial(field.deserialize, attr=None, data=None)
    message = "invalid"  # never shown: the caller loads the input again through marshmallow
    if isinstance(field, StrictNumber):
        minimum, maximum, integer = field.minimum, field.maximum, field.integer

        def check(value):
            if (integer and type(value) is not int) or number_error(value, maximum, minimum):
                raise ValidationError(message)
            return value

    elif isinstance(field, Timestamp | DeploymentList):
        check = partial(field._deserialize, attr=None, data=None)
    elif type(field) is fields.String:

        def check(value):
            if type(value) is not str:
                raise ValidationError(message)
            return value

    elif isinstance(field, fields.Nested) and isinstance(field.schema, StrictSchema):
        check = field.schema.load
    else:
        return partial(field.deserialize, attr=None, data=None)

    def load(value):
        loaded = check(value)
        for validator in field.validators:
            if validator(loaded) is False:
                raise ValidationError(message)
        return loaded

    return load


class StrictSchema(Schema):
    """A schema whose fields are all required and whose unknown keys are refused, loaded quickly when valid.

    marshmallow's own load spends tens of microseconds a call on machinery (an error store, hooks,
    partial loading, a call into each field object) that valid input never needs: on a small
    payload that is most of the validation. The quick path runs a plain function per field, made
    from the field's declaration (quick_loader), on input with exactly the declared keys; at the
    first error the input goes through marshmallow's load, which reports every error in its usual
    shape.
    """

    class Meta:
        unknown = RAISE

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._keys = frozenset(self.load_fields)
        self._quick_fields = tuple((name, quick_loader(field)) for name, field in self.load_fields.items())
        # The quick path assumes what the subclasses declare; a schema that does not is loaded by marshmallow alone.
        self._quick = (
            not self.many
            and not any(self._hooks.values())
            and all(
                field.required and field.data_key is None and field.attribute is None
                for field in self.load_fields.values()
            )
        )

    def load(self, data, *, many=None, partial=None, unknown=None):
        """Deserialize `data` as marshmallow's Schema.load does (same result, same errors), faster when it is valid."""
        if self._quick and many is None and partial is None and type(data) is dict and data.keys() == self._keys:
            try:
                return {name: load(data[name]) for name, load in self._quick_fields}
            except ValidationError:
                pass  # marshmallow's load below collects every error, not just this first one
        return super().load(data, many=many, partial=partial, unknown=unknown)


class ClusterTotalsSchema(StrictSchema):
    """The cost engine's view of the whole cluster."""

    vm_count = StrictNumber(required=True, integer=True, minimum=1, maximum=MAX_VM_COUNT)
    current_hourly_cost_gbp = StrictNumber(required=True, maximum=MAX_HOURLY_COST)


class PayloadSchema(StrictSchema):
    """Fields and limits common to both payloads."""

    timestamp = Timestamp(required=True)
    namespace = fields.String(required=True, validate=validate.Regexp(DNS_LABEL, error=DNS_LABEL_MESSAGE))

    def __init__(self, *, allowed_namespaces=frozenset({"default"}), max_deployments=5000, **kwargs):
        super().__init__(**kwargs)
        cast(DeploymentList, self.fields["deployments"]).max_items = max_deployments
        namespace = self.fields["namespace"]
        # A new list: the field's validators list is shared with the class and other instances.
        namespace.validators = [
            *namespace.validators,
            validate.OneOf(
                sorted(allowed_namespaces), error="Namespace {input!r} is not accepted here; allowed: {choices}."
            ),
        ]


class CostPayloadSchema(PayloadSchema):
    """POST /metrics/cost: requests and usage per deployment, plus cluster totals."""

    source = fields.String(required=True, validate=validate.Equal("cost-engine"))
    cluster_totals = fields.Nested(ClusterTotalsSchema, required=True)
    deployments = DeploymentList(
        required=True,
        groups={
            "current_requests": ("req_cpu", "req_mem"),
            "current_usage": ("usage_cpu_curr", "usage_mem_curr"),
        },
    )


class ForecastPayloadSchema(PayloadSchema):
    """POST /metrics/forecast: the predicted 24-hour peak per deployment."""

    source = fields.String(required=True, validate=validate.Equal("forecast"))
    deployments = DeploymentList(
        required=True,
        groups={"predict_peak_24h": ("pred_cpu_peak", "pred_mem_peak")},
    )


class DecisionSchema(Schema):
    """The AI agent's decision about a deployment's open episode (POST .../decision)."""

    class Meta:
        unknown = RAISE

    episode_id = fields.String(required=True, validate=validate.Length(min=1, max=64))
    decision = fields.String(required=True, validate=validate.OneOf(DECISIONS))
    # Checked against the decision and the clock by the view: snooze needs it, at most 30 days ahead.
    until = fields.AwareDateTime(format="iso", load_default=None)
    note = fields.String(load_default="", validate=validate.Length(max=NOTE_MAX_CHARS))
