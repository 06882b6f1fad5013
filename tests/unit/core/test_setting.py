import math

import pytest

from shared.core.episodes import EpisodePolicy
from shared.core.rules import Thresholds
from shared.core.setting import Setting, parse_bool

RATIO = Setting("RATIO", "a ratio", 0.5, float, 0, 1, below_high=True)
COUNT = Setting("COUNT", "a count", 5, int, 1, 10)
FLAG = Setting("FLAG", "a flag", True, bool)


@pytest.mark.parametrize(
    ("text", "value"), [("1", True), (" TRUE ", True), ("yes", True), ("On", True), ("0", False), ("off", False)]
)
def test_one_boolean_parser(text, value):
    assert parse_bool(text) is value


@pytest.mark.parametrize("text", ["", "maybe", "y", "2"])
def test_the_boolean_parser_refuses_other_words(text):
    with pytest.raises(ValueError):
        parse_bool(text)


def test_parse_reads_the_declared_type():
    assert (RATIO.parse("0.25"), COUNT.parse(" 7 "), FLAG.parse("no"), FLAG.parse("")) == (0.25, 7, False, False)


@pytest.mark.parametrize(
    ("setting", "raw", "message"),
    [
        (COUNT, "soon", "COUNT must be a int, got 'soon'"),
        (COUNT, "11", "COUNT must be between 1 and 10, got '11'"),
        (COUNT, True, "COUNT must be between 1 and 10, got True"),
        (RATIO, "nan", "RATIO must be between 0 and 1, got 'nan'"),
        (RATIO, "1", "RATIO must be below 1, got '1'"),
        (FLAG, "maybe", "FLAG must be true or false, got 'maybe'"),
    ],
)
def test_parse_names_the_variable(setting, raw, message):
    with pytest.raises(ValueError) as info:
        setting.parse(raw)
    assert str(info.value) == message


def test_env_default_and_bounds_as_the_docs_write_them():
    assert (RATIO.env_default, COUNT.env_default, FLAG.env_default) == ("0.5", "5", "true")
    assert (RATIO.bounds, COUNT.bounds) == ("0–1, below 1", "1–10")
    assert Setting("BIG", "big", 1, int, 0, 30 * 24 * 3600).bounds == "0–2592000"


def test_records_check_their_declared_bounds():
    for bad in ({"cpu_utilisation": 100.5}, {"max_state_skew_seconds": math.inf}, {"memory_rules": 1}):
        with pytest.raises(ValueError):
            Thresholds(**bad)
    for bad in ({"state_ttl_seconds": 60}, {"resolve_after_seconds": -1}, {"resolved_notifications": "yes"}):
        with pytest.raises(ValueError):
            EpisodePolicy(**bad)
