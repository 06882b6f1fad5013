"""Each setting is declared once: docs/operations.md's table and the k8s ConfigMap agree with the declarations."""

import re

import pytest
import yaml

from devtools.harness import ROOT
from shared.core.rules import Thresholds
from shared.core.setting import declared_settings
from shared.runtime.gunicorn_settings import GUNICORN_SETTINGS
from shared.runtime.settings import SETTINGS, THRESHOLD_SETTINGS

OPERATIONS = ROOT / "docs" / "operations.md"
CONFIG_MAP = ROOT / "deploy" / "k8s" / "base" / "configmap.yaml"
DECLARED = {setting.name: setting for setting in (*SETTINGS, *GUNICORN_SETTINGS)}
# Read by gunicorn.conf.py or the image's command as they are, with no bounds to declare.
UNDECLARED_ROWS = {"HOST", "PROMETHEUS_MULTIPROC_DIR", "APP_MODULE"}
# "(0.1–60)" in a row's meaning: the bounds the docs promise.
BOUNDS = re.compile(r"\((\d[\d.]*–\d[\d.]*(?:, below \d[\d.]*)?)\)")


def configuration_rows():
    """{variable: (meaning, default)} from the configuration table of docs/operations.md."""
    section = OPERATIONS.read_text().split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        if line.startswith("| `"):
            names, meaning, default = (cell.strip() for cell in line.strip().strip("|").split(" | "))
            for name in re.findall(r"`([A-Z][A-Z0-9_]*)`", names):
                rows[name] = (meaning, default)
    return rows


def config_map():
    """{key: (value, marked REPLACE)} of the ConfigMap; a REPLACE comment marks the key right under it."""
    data = yaml.safe_load(CONFIG_MAP.read_text())["data"]
    marked, replace = set(), False
    for line in CONFIG_MAP.read_text().split("\ndata:\n", 1)[1].splitlines():
        text = line.strip()
        if text.startswith("#"):
            replace = replace or "REPLACE" in text
        elif ":" in text:
            if replace:
                marked.add(text.split(":", 1)[0])
            replace = False
    return {key: (value, key in marked) for key, value in data.items()}


def test_the_tables_are_read():
    # Guards the parsers above: empty tables would make the tests below pass vacuously.
    rows, settings = configuration_rows(), config_map()
    assert {"REDIS_URL", "CPU_WASTE_THRESHOLD", "PORT", "COST_ENGINE_TOKEN_FILE"} <= set(rows)
    assert rows["COOLDOWN_SECONDS"][1] == "`1800`"
    assert settings["REDIS_URL"][1] and not settings["COOLDOWN_SECONDS"][1]


def test_every_threshold_is_a_setting():
    """A rule's threshold, declared on Thresholds, is read by the loader with no line of its own."""
    assert tuple(declared_settings(Thresholds).values()) == THRESHOLD_SETTINGS
    assert set(THRESHOLD_SETTINGS) <= set(SETTINGS)


def test_every_declared_setting_has_its_row_with_its_default():
    rows = configuration_rows()
    missing = sorted(set(DECLARED) - set(rows))
    assert not missing, f"add rows for {missing} to the configuration table in docs/operations.md"
    wrong = {}
    for name, setting in DECLARED.items():
        default = rows[name][1]
        if setting.default is None:
            ok = default.startswith(("unset", "**required"))
        elif setting.env_default == "":
            ok = default.startswith("empty")
        else:
            ok = default.startswith(f"`{setting.env_default}`")
        if not ok:
            wrong[name] = (setting.env_default, default)
    assert not wrong, f"defaults in docs/operations.md differ from the declarations (declared, documented): {wrong}"


def test_every_row_states_the_declared_bounds():
    rows = configuration_rows()
    wrong = {}
    for name, setting in DECLARED.items():
        if name not in rows:
            continue  # named by the test above
        documented = BOUNDS.findall(rows[name][0])
        if documented != ([setting.bounds] if setting.bounds else []):
            wrong[name] = (setting.bounds, documented)
    assert not wrong, f"bounds in docs/operations.md differ from the declarations (declared, documented): {wrong}"


def test_every_row_is_declared():
    files = {f"{setting.name}_FILE" for setting in DECLARED.values() if setting.secret}
    undeclared = sorted(set(configuration_rows()) - set(DECLARED) - files - UNDECLARED_ROWS)
    assert not undeclared, f"docs/operations.md documents settings nothing declares: {undeclared}"


def test_the_config_map_holds_every_plain_setting_at_its_default():
    """Every declared setting but the secrets, at its default unless marked REPLACE; nothing else."""
    settings = config_map()
    plain = {setting.name: setting for setting in SETTINGS if not setting.secret}
    missing = sorted(set(plain) - set(settings))
    assert not missing, f"add {missing} to deploy/k8s/base/configmap.yaml"
    undeclared = sorted(set(settings) - set(plain))
    assert not undeclared, f"deploy/k8s/base/configmap.yaml holds settings no declaration has: {undeclared}"
    wrong = {
        name: (setting.env_default or "", settings[name][0])
        for name, setting in plain.items()
        if not settings[name][1] and settings[name][0] != (setting.env_default or "")
    }
    assert not wrong, f"deploy/k8s/base/configmap.yaml differs from the defaults (declared, there): {wrong}"


@pytest.mark.parametrize("setting", [s for s in (*SETTINGS, *GUNICORN_SETTINGS)], ids=lambda s: s.name)
def test_each_declaration_is_complete(setting):
    """One line of doc, a default its own parser accepts, and bounds on every number."""
    assert setting.doc and "\n" not in setting.doc
    if setting.kind in (int, float):
        assert setting.low is not None or setting.name == "REMINDER_SECONDS"
        assert setting.high is not None
    if setting.env_default:
        assert setting.parse(setting.env_default) == setting.default
