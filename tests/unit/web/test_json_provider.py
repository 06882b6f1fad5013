"""The apps parse bodies with orjson, yet accept, refuse and report every body as the json module reads it."""

import json

import pytest

from shared.web.json_provider import FastJSONProvider


@pytest.fixture
def provider(cost_app):
    return cost_app.json


def test_the_apps_use_it(cost_app, forecast_app):
    assert isinstance(cost_app.json, FastJSONProvider)
    assert isinstance(forecast_app.json, FastJSONProvider)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"a": 1, "b": [1.5, -0.0, 1e5, "\\u00e4"], "c": {"d": null, "e": true}}',
        b'{"a": 1, "a": 2}',  # the last of duplicate keys wins, as in the json module
        b' {"a": 18446744073709551615} \n',  # the largest integer orjson reads as an integer
    ],
)
def test_what_orjson_reads_it_reads_as_the_json_module_does(provider, raw):
    parsed = provider.loads(raw)
    assert parsed == json.loads(raw)
    assert [type(value) for value in parsed.values()] == [type(value) for value in json.loads(raw).values()]


@pytest.mark.parametrize(
    "raw",
    [
        b'{"a": NaN}',
        b'{"a": 1e999}',
        b'\xef\xbb\xbf{"a": 1}',  # a UTF-8 byte order mark
        b'{"a": "\xed\xa0\x80"}',  # a lone surrogate, encoded
        '{"a": 1}'.encode("utf-16"),
    ],
)
def test_what_orjson_refuses_goes_to_the_json_module(provider, raw):
    assert provider.loads(raw) == json.loads(raw) or repr(provider.loads(raw)) == repr(json.loads(raw))


def test_a_refused_body_is_refused_with_the_json_modules_reason(provider):
    with pytest.raises(json.JSONDecodeError) as caught:
        provider.loads(b'{"a": 1,}')
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(b'{"a": 1,}')
    assert str(caught.value) == str(expected.value)


def test_an_integer_beyond_64_bits_gets_the_error_of_the_json_modules_reading(cost_client, cost_headers, cost_payload):
    # orjson reads 10**30 as a float: "Not a valid integer."; as an integer it is out of range.
    cost_payload["cluster_totals"]["vm_count"] = 10**30
    response = cost_client.post("/metrics/cost", json=cost_payload, headers=cost_headers)
    assert response.status_code == 422
    assert response.get_json()["error"]["details"]["fields"] == {
        "cluster_totals": {"vm_count": ["Must be less than or equal to 1000000."]}
    }
