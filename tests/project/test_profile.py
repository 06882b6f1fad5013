"""bench/profile.py (`make profile`): every step it reports is on the request's path, and the report says so."""

from bench import profile
from bench.payloads import COST, FORECAST


def test_every_step_is_timed_on_the_request_path_and_reported(tmp_path):
    output = tmp_path / "PROFILE.md"
    profiles = profile.run(sizes=(5,), requests=5, output=output)

    assert [(result.endpoint, result.deployments) for result in profiles] == [(COST.name, 5), (FORECAST.name, 5)]
    for result in profiles:
        # A wrapper left off the path would leave its step at zero and the step around it negative.
        assert all(value > 0 for value in result.worker.values()), result.worker
        assert result.worker_total == max(result.worker.values())
        floors = list(result.redis.values())[2:]
        assert len(floors) == len(profile._floor_steps(COST if result.endpoint == COST.name else FORECAST))
        # redis-server's CPU comes from /proc in clock ticks (10 ms): a few small requests may read 0.
        assert result.redis["redis-server CPU"] >= 0
        assert all(value > 0 for value in list(result.redis.values())[1:]), result.redis
        assert result.ceiling > 0
    text = output.read_text()
    assert "### cost at 5 deployments (5 requests)" in text and "### forecast at 5 deployments (5 requests)" in text
    assert "those + HMGET of 5 usage history fields" in text  # the cost save reads the history; the forecast's does not
    assert text.count("usage history fields") == 1
