"""One setting's declaration: the variable, its type, default, bounds and one line of doc.

Core records carry it on their fields (`declared`), so a rule's threshold is declared next to the
rule; shared.runtime.settings reads every variable through these declarations, and
tests/project/test_settings_declared.py checks docs/operations.md's table and the k8s ConfigMap against them.
"""

import math
from dataclasses import dataclass, field, fields
from typing import Any

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")
# The key of a dataclass field's metadata that holds its Setting.
SETTING = "setting"


def parse_bool(text: str) -> bool:
    """true/false, 1/0, yes/no or on/off, in any case; ValueError for anything else."""
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(text)


def _shown(bound: float) -> str:
    """A bound as the docs write it: 2592000, not 2592000.0."""
    return str(int(bound)) if float(bound).is_integer() else str(bound)


@dataclass(frozen=True)
class Setting:
    """One environment variable: its name, type, default, bounds and one line of doc."""

    name: str
    doc: str
    # The value when the variable is unset; None: there is none (required, or unset means off).
    default: Any = None
    kind: type = str  # str, int, float or bool: what parse() returns (str is returned as given)
    low: float | None = None
    high: float | None = None
    # `high` itself is refused too (a waste fraction of 1 could never fire).
    below_high: bool = False
    # A credential: may come from the file NAME_FILE names instead, is never echoed, never in the ConfigMap.
    secret: bool = False

    @property
    def env_default(self) -> str | None:
        """The default as the environment spells it (what DEFAULTS, the docs and the ConfigMap hold)."""
        if isinstance(self.default, bool):
            return "true" if self.default else "false"
        return None if self.default is None else str(self.default)

    @property
    def bounds(self) -> str | None:
        """The bounds as the docs' table writes them ("0–1, below 1"), None when there are none."""
        if self.low is None or self.high is None:
            return None
        shown = f"{_shown(self.low)}–{_shown(self.high)}"
        return f"{shown}, below {_shown(self.high)}" if self.below_high else shown

    def out_of_bounds(self, value: float) -> str | None:
        """What is wrong with a number for this setting, or None."""
        low = -math.inf if self.low is None else self.low
        high = math.inf if self.high is None else self.high
        if not math.isfinite(value) or not low <= value <= high:
            return f"must be between {self.low} and {self.high}"
        if self.below_high and value == high:
            return f"must be below {self.high}"
        return None

    def parse(self, raw: Any) -> Any:
        """The value of a raw setting (text, or a value given in code); ValueError naming the variable."""
        if self.kind is bool:
            text = str(raw).strip()
            try:
                # An empty variable is off.
                return parse_bool(text) if text else False
            except ValueError:
                raise ValueError(f"{self.name} must be true or false, got {raw!r}") from None
        if self.kind not in (int, float):
            return raw
        try:
            value = self.kind(raw)
        except (TypeError, ValueError):
            raise ValueError(f"{self.name} must be a {self.kind.__name__}, got {raw!r}") from None
        # True and False are ints to Python, never a number of seconds to us.
        problem = self.out_of_bounds(math.nan if isinstance(raw, bool) else value)
        if problem:
            raise ValueError(f"{self.name} {problem}, got {raw!r}")
        return value

    def check(self, value: Any, label: str) -> None:
        """Raise ValueError (naming `label`) unless a value given in code has this setting's type and bounds."""
        if self.kind is bool:
            if not isinstance(value, bool):
                raise ValueError(f"{label} must be a bool, got {value!r}")
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{label} must be a finite number, got {value!r}")
        problem = self.out_of_bounds(value)
        if problem:
            raise ValueError(f"{label} {problem}, got {value!r}")


def declared(setting: Setting) -> Any:
    """A dataclass field whose default and bounds are those of the setting that configures it."""
    return field(default=setting.default, metadata={SETTING: setting})


def declared_settings(record: Any) -> dict[str, Setting]:
    """The settings a dataclass's fields declare, by field name, in field order."""
    return {f.name: f.metadata[SETTING] for f in fields(record) if SETTING in f.metadata}


def check_declared(record: Any) -> None:
    """Raise ValueError unless each declared field of a dataclass instance has its setting's type and bounds."""
    for f in fields(record):
        if SETTING in f.metadata:
            f.metadata[SETTING].check(getattr(record, f.name), f.name)
