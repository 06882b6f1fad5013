"""Where a steady-state ingest's CPU goes: the worker's steps and Redis's calls (`make profile`).

`make bench` says how far the CPU ratio is from its goal; this says where the CPU goes and what is
left at the floor. It runs each service and the ceiling in this process through Flask's test client,
against a redis-server of its own, on the benchmark's payloads in the benchmark's steady state (every
firing deployment in its cooldown), and times:

- the worker's steps, in CPU time of this thread (`time.thread_time`): each step is the service's own
  code, wrapped on the instance that runs it (the app's `wsgi_app`, the aggregator's, repository's and
  runner's methods); the JSON parse and the schema are timed on their own over the same body;
- Redis: its CPU (from /proc) and its time inside the save script (INFO commandstats), then the floor
  of that script, its per-deployment Redis calls run one more at a time on copies of the same keys.

A round trip of an empty script through a service's own client shows what any request that writes
Redis pays before its first deployment. It prints a table per endpoint and size (2 and 500
deployments by default) and writes bench/PROFILE.md (or `--output`). Figures are microseconds of
CPU per request and per deployment; the goal's budget is the ceiling's CPU over the goal.
"""

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from importlib import import_module
from pathlib import Path

from bench.ceiling import create_app as create_ceiling
from bench.payloads import COST, FORECAST, case_bodies, firing_count
from bench.report import CPU_RATIO_GOALS, machine
from bench.stack import BenchError, cpu_seconds, run_until_done, service_settings
from devtools.agent_receiver import AgentReceiver
from devtools.harness import RedisServer
from shared.store.repository import COST_FIELDS, FORECAST_FIELDS, READ_BACK, StateRepository
from shared.web.services import SERVICES, service_of

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "bench" / "PROFILE.md"
SIZES = (2, 500)
ROUNDS = 5
# Enough calls per batch for redis-server's CPU, read from /proc in 10 ms clock ticks, to count.
ROUND_TRIP_BATCHES, ROUND_TRIP_CALLS = 5, 2000
# What each endpoint's save reads and writes of a deployment (shared/store/repository.py's lists):
# its timestamp field, the fields it writes, and whether it reads the usage history.
SAVES = {
    COST.name: ("cost_timestamp", COST_FIELDS, True),
    FORECAST.name: ("forecast_timestamp", FORECAST_FIELDS, False),
}
# The usage history's fields a cost sample reads (scripts/record_usage.lua), its CPU bucket last.
HISTORY_READ = ("last_sample", "reference", "samples", "mem_today", "cpu:0")


class StepTimer:
    """CPU time of this thread spent in wrapped callables, by label."""

    def __init__(self):
        self.seconds = defaultdict(float)

    def wrap(self, label, function):
        """`function`, counting the CPU time of each call under `label`."""

        def timed(*args, **kwargs):
            started = time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[label] += time.thread_time() - started

        return timed


@dataclass
class Profile:
    """One endpoint at one size, in µs of CPU per request."""

    endpoint: str
    deployments: int
    requests: int
    worker: dict[str, float] = field(default_factory=dict)  # step -> µs, in order
    redis: dict[str, float] = field(default_factory=dict)  # part -> µs, in order
    ceiling: float = 0.0  # the ceiling's whole request

    @property
    def worker_total(self):
        """The worker's whole request."""
        return self.worker["whole request"]

    @property
    def redis_total(self):
        """redis-server's CPU for the request."""
        return self.redis["redis-server CPU"]


def _create_app(spec, settings):
    """The service of `spec` built by its own create_app() with `settings` (environment variable values)."""
    return import_module(spec.package).create_app(settings)


def _post(client, endpoint, body):
    response = client.post(
        endpoint.path,
        data=body,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {endpoint.token}"},
    )
    if response.status_code != 201:
        raise BenchError(f"{endpoint.path} answered {response.status_code}: {response.get_data(as_text=True)[:300]}")
    return response.get_json()


def _per_request(seconds, requests):
    return 1e6 * seconds / requests


def default_requests(size):
    """Steady-state requests timed per endpoint: more for small payloads, whose requests are short."""
    return max(200, min(4000, 200_000 // size))


def _instrument(app, timer):
    """Wrap the app's steps, each on the instance that runs it, with `timer`."""
    svc = service_of(app)
    aggregator, repository = svc.aggregator, svc.aggregator.repository
    app.wsgi_app = timer.wrap("request", app.wsgi_app)
    aggregator.ingest = timer.wrap("ingest", aggregator.ingest)
    svc.source = replace(svc.source, save=timer.wrap("save", svc.source.save))
    repository.runner.run = timer.wrap("script call", repository.runner.run)
    repository._saved = timer.wrap("replies to states", repository._saved)
    aggregator._evaluate = timer.wrap("rules", aggregator._evaluate)
    aggregator._screen = timer.wrap("screen", aggregator._screen)


def _worker_steps(seconds, parse, schema):
    """The steps as the reader wants them: each one's own time, the wrapping steps' rest derived."""
    save, ingest, request = seconds["save"], seconds["ingest"], seconds["request"]
    own = {name: seconds[name] for name in ("script call", "replies to states", "rules", "screen")}
    steps = {
        "JSON parse (orjson)": parse,
        "schema (quick loader)": schema,
        "save arguments (keys, joined rows)": save - own["script call"] - own["replies to states"],
        "script call (redis-py: pack, send, read)": own["script call"],
        "replies to states": own["replies to states"],
        "rules": own["rules"],
        "screen (cooldowns, episodes)": own["screen"],
        "rest of ingest (quiet counts, result)": ingest - save - own["rules"] - own["screen"],
        "Flask, auth, reading the body, response, metrics": request - ingest - parse - schema,
    }
    steps["whole request"] = request
    return steps


def _time_calls(function, argument, repeat):
    started = time.thread_time()
    for _ in range(repeat):
        function(argument)
    return time.thread_time() - started


def _floor_script(calls):
    """A script running `calls` (Lua) for each deployment's pair of keys."""
    lines = ["local out, a = {}, 0", "for i = 1, #KEYS / 2 do", "  local app, history = KEYS[2 * i - 1], KEYS[2 * i]"]
    lines += [f"  {call}" for call in calls]
    lines += ["  out[i] = 0", "end", "return out"]
    return "\n".join(lines)


def _lua_strings(names):
    return ", ".join(f"'{name}'" for name in names)


def _floor_steps(endpoint):
    """[(label, the Lua calls per deployment)]: the save's Redis calls, one more at each step."""
    stamp_field, written, history = SAVES[endpoint.name]
    read = (stamp_field, *READ_BACK[stamp_field], "watch")
    # The written values come in ARGV, one argument each, after the timestamp (ARGV[1]).
    pairs = ", ".join(f"'{name}', ARGV[{2 + index}]" for index, name in enumerate(written))
    hmget = f"redis.call('HMGET', app, {_lua_strings(read)})"
    hset = f"redis.call('HSET', app, '{stamp_field}', ARGV[1], {pairs})"
    steps = [
        ("the loop, its keys and arguments", ["a = a + 1"]),
        ("HMGET of the guard field alone", [f"redis.call('HMGET', app, '{stamp_field}')"]),
        (f"HMGET of the {len(read)} fields the save reads", [hmget]),
        (f"that HMGET + HSET of {1 + len(written)} fields", [hmget, hset]),
    ]
    if history:
        read_history = f"redis.call('HMGET', history, {_lua_strings(HISTORY_READ)})"
        steps.append((f"those + HMGET of {len(HISTORY_READ)} usage history fields", [hmget, hset, read_history]))
    return steps


def _redis_floor(client, endpoint, payload, repeat):
    """µs of script time per request for each step of _floor_steps, on copies of the payload's keys."""
    keys = []
    originals = StateRepository.app_and_history_keys(payload["namespace"], payload["deployments"])
    for index, pair in enumerate(originals):
        copies = (f"profile:{index}:app", f"profile:{index}:history")
        for original, copy in zip(pair, copies):
            # A key the save did not write would make the floor that of an empty hash.
            if not client.copy(original, copy, replace=True):
                raise BenchError(f"{original} does not exist: the floor needs the keys the save wrote")
        keys += copies
    stamp_field, written, _ = SAVES[endpoint.name]
    argv = [value or b"0" for value in client.hmget(keys[0], stamp_field, *written)]
    floors = {}
    for label, calls in _floor_steps(endpoint):
        script = client.register_script(_floor_script(calls))
        script(keys, argv)
        before = _script_usec(client)
        for _ in range(repeat):
            script(keys, argv)
        floors[label] = (_script_usec(client) - before) / repeat
    client.delete(*keys)
    return floors


def _script_usec(client):
    return client.info("commandstats").get("cmdstat_evalsha", {}).get("usec", 0)


def profile_endpoint(redis_server, receiver_url, endpoint, size, repeat):
    """Prime one endpoint at `size` deployments in-process, then time `repeat` steady-state requests."""
    settings = service_settings(redis_server.url, receiver_url, sizes=(size,))
    apps = {spec.name: _create_app(spec, settings) for spec in SERVICES}
    bodies = case_bodies(endpoint, size)
    if "seed" in bodies:
        _post(apps[COST.name].test_client(), COST, bodies["seed"])
    app = apps[endpoint.name]
    client = app.test_client()
    answer = _post(client, endpoint, bodies["payload"])
    if len(answer["triggered"]) != firing_count(size) or answer["delivery"] != "ok":
        raise BenchError(f"priming {endpoint.name} at {size}: {answer}")
    for _ in range(3):  # the scripts loaded, the connections open
        _post(client, endpoint, bodies["payload"])

    timer = StepTimer()
    _instrument(app, timer)
    ceiling = create_ceiling()
    ceiling.wsgi_app = timer.wrap("ceiling", ceiling.wsgi_app)
    ceiling_client = ceiling.test_client()
    for _ in range(3):
        _post(ceiling_client, endpoint, bodies["payload"])
    timer.seconds.clear()
    redis_client = redis_server.client()
    redis_pid = [redis_server.process.pid]
    redis_seconds = usec = 0.0
    # In alternating rounds, as `make bench` times them: the machine's drift (other tenants, CPU
    # boost) then weighs on the service and the ceiling alike.
    per_round = max(1, repeat // ROUNDS)
    for _ in range(ROUNDS):
        redis_before, usec_before = cpu_seconds(redis_pid), _script_usec(redis_client)
        for _ in range(per_round):
            answer = _post(client, endpoint, bodies["payload"])
            if answer["triggered"] or len(answer["cooldown"]) != firing_count(size):
                raise BenchError(f"{endpoint.name} at {size} is not in steady state: {answer}")
        redis_seconds += cpu_seconds(redis_pid) - redis_before
        usec += _script_usec(redis_client) - usec_before
        for _ in range(per_round):
            _post(ceiling_client, endpoint, bodies["payload"])
    done = per_round * ROUNDS

    svc = service_of(app)
    raw = bodies["payload"].encode()
    parsed = app.json.loads(raw)
    parse = _time_calls(app.json.loads, raw, done)
    schema = _time_calls(svc.schema.load, parsed, done)
    steps = _worker_steps(timer.seconds, parse, schema)

    result = Profile(endpoint.name, size, done)
    result.worker = {name: _per_request(seconds, done) for name, seconds in steps.items()}
    result.redis = {
        "redis-server CPU": _per_request(redis_seconds, done),
        "of which the save script": usec / done,
        **_redis_floor(redis_client, endpoint, parsed, done),
    }
    result.ceiling = _per_request(timer.seconds["ceiling"], done)
    return result


def round_trip(redis_server, receiver_url, batches=ROUND_TRIP_BATCHES, calls=ROUND_TRIP_CALLS):
    """An empty script called through a service's own client: µs of this thread's CPU and of redis-server's
    per call, each the least over `batches` batches (the one other work on the machine disturbed least)."""
    app = _create_app(COST.spec, service_settings(redis_server.url, receiver_url))
    script = service_of(app).aggregator.repository.redis.register_script("return 1")
    script()
    client, server = [], []
    for _ in range(batches):
        started, redis_before = time.thread_time(), cpu_seconds([redis_server.process.pid])
        for _ in range(calls):
            script()
        client.append(_per_request(time.thread_time() - started, calls))
        server.append(_per_request(cpu_seconds([redis_server.process.pid]) - redis_before, calls))
    return min(client), min(server)


def _rows(figures, deployments):
    return [f"| {name} | {value:.1f} | {value / deployments:.2f} |" for name, value in figures.items()]


def report(profiles, trip):
    """The tables, as markdown; `trip` is round_trip()'s answer."""
    lines = [
        f"One round trip, an empty script through a service's own client: {trip[0]:.1f} µs of the worker's CPU "
        f"and {trip[1]:.1f} µs of redis-server's (the least of {ROUND_TRIP_BATCHES} batches of {ROUND_TRIP_CALLS}).",
        "",
    ]
    for result in profiles:
        size = result.deployments
        goal = CPU_RATIO_GOALS.get(size)
        total = result.worker_total + result.redis_total
        lines += [
            f"### {result.endpoint} at {size} deployments ({result.requests} requests)",
            "",
            "| worker step | µs CPU per request | per deployment |",
            "|---|---:|---:|",
            *_rows(result.worker, size),
            "",
            "| Redis | µs per request | per deployment |",
            "|---|---:|---:|",
            *_rows(result.redis, size),
            "",
            f"- the ceiling's whole request: {result.ceiling:.1f} µs ({result.ceiling / size:.2f} per deployment);",
            f"- worker and redis-server together: {total:.1f} µs ({total / size:.2f} per deployment), a CPU ratio "
            f"in-process of {result.ceiling / total:.3f}",
        ]
        if goal:
            allowed = result.ceiling / goal
            lines[-1] += f"; the goal ({goal}) allows {allowed:.1f} µs ({allowed / size:.2f} per deployment)."
        else:
            lines[-1] += "."
        lines.append("")
    return "\n".join(lines)


def run(sizes, requests, output):
    """Profile both endpoints at each size; print the report and write it to `output` (None: print only).

    `requests`: how many steady-state requests per endpoint and size; None for default_requests(size).
    """
    started = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="aggregator-profile-") as tmp:
        redis_server = RedisServer(Path(tmp)).start()
        receiver = AgentReceiver().start()
        try:
            trip = round_trip(redis_server, receiver.url)
            profiles = [
                profile_endpoint(redis_server, receiver.url, endpoint, size, requests or default_requests(size))
                for size in sizes
                for endpoint in (COST, FORECAST)
            ]
        finally:
            receiver.stop()
            redis_server.stop()
    text = report(profiles, trip)
    print(text)
    if output:
        output.write_text(
            "# Ingest profile\n\n"
            f"Written by `make profile` (bench/profile.py) on {started:%Y-%m-%d %H:%M} UTC, in-process, "
            f"in the benchmark's steady state.\nMachine: {machine()}.\n\n{text}"
        )
        print(f"profile: wrote {output}")
    return profiles


def _sizes(text):
    """An argparse type: comma-separated payload sizes, each 1 to 2000."""
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if not sizes or not all(1 <= size <= 2000 for size in sizes):
        raise argparse.ArgumentTypeError("give sizes of 1 to 2000 deployments")
    return sizes


def main(argv=None):
    """`python -m bench.profile [--sizes 2,500] [--requests N] [--output PATH]`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=_sizes, default=SIZES, help="deployments per payload, comma-separated")
    parser.add_argument("--requests", type=int, help="steady-state requests timed per endpoint and size")
    parser.add_argument("--output", default=str(OUTPUT), help="where to write the report ('': nowhere)")
    args = parser.parse_args(argv)
    if args.requests is not None and args.requests < 1:
        parser.error("--requests must be at least 1")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    return run_until_done("profile", lambda: run(args.sizes, args.requests, Path(args.output) if args.output else None))


if __name__ == "__main__":
    sys.exit(main())
