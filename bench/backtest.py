"""The recommendation backtest: replay usage through the real cost service, score the next 24 hours.

`make backtest` runs this on synthetic 14-day traces of 200 deployments in five shapes (see
bench/traces.py); `make backtest CSV=path` (or `bench/backtest.py path.csv`) on samples of
`timestamp,namespace,name,cpu,memory_mb`.

Recommendations are asked for at up to seven cuts, 24 hours apart, each with at least 7 days of
history before it and a day after it to score on; on the synthetic traces the scored days are
the seven weekdays, so no result hangs on where the weekend falls. Samples are sent, one cost
payload per timestamp and in time order, through the cost service's own app
(cost_service.create_app) against a throwaway redis-server, with rules that cannot fire. At each
cut, each deployment's last sample is sent through a second app of the same service whose rules
always fire, so every deployment reaches the agent receiver: the recommendation scored is the
one in the trigger the agent receives. The single-sample method is the same service given only
that last sample (its Redis database emptied first). A third, offline method recomputes the VPA
recommender's own estimate from the raw samples, as the yardstick.

Each recommendation is scored on the 24 hours after its cut: the share of time CPU usage is
above it, whether memory usage ever is, and how much of it goes unused (over-provisioning). One
table per method, printed and written to bench/BACKTEST.md.
"""

import argparse
import math
import sys
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import redis

from bench import history_cost
from bench.traces import SHAPES, STEP_SECONDS, from_csv, synthetic
from cost_service import create_app
from devtools.agent_receiver import AgentReceiver
from devtools.harness import RedisServer
from shared.web.services import COST

ROOT = Path(__file__).resolve().parent.parent

TOKEN = "backtest-token-0123456789abcdef"
HEADROOM = 0.15
HALF_LIFE_SECONDS = 24 * 3600
DAY = 86400
WINDOWS = 8


def _iso(seconds):
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def _payloads(rows):
    """Cost payloads, one per (namespace, timestamp), in time order; rows are (deployment, sample)."""
    groups = defaultdict(list)
    for deployment, (ts, cpu, mem) in rows:
        groups[(ts, deployment.namespace)].append(
            {
                "name": deployment.name,
                "current_requests": {"cpu_cores": deployment.req_cpu, "memory_mb": deployment.req_mem},
                "current_usage": {"cpu_cores": cpu, "memory_mb": mem},
            }
        )
    for (ts, namespace), deployments in sorted(groups.items()):
        yield {
            "source": "cost-engine",
            "timestamp": _iso(ts),
            "namespace": namespace,
            "cluster_totals": {"vm_count": 10, "current_hourly_cost_gbp": 12.5},
            "deployments": deployments,
        }


def _post_all(client, payloads):
    for payload in payloads:
        response = client.post(COST.path, json=payload, headers={"Authorization": f"Bearer {TOKEN}"})
        if response.status_code != 201:
            raise RuntimeError(f"the cost service answered {response.status_code}: {response.get_data(as_text=True)}")


def _apps(redis_url, receiver_url, namespaces, deployments):
    base = {
        "REDIS_URL": redis_url,
        "AGENT_WEBHOOK_URL": receiver_url,
        COST.token_setting: TOKEN,
        "ALLOWED_NAMESPACES": ",".join(sorted(namespaces)),
        "MAX_DEPLOYMENTS": str(max(deployments, 1)),
        "RECOMMENDATION_HEADROOM": str(HEADROOM),
        "LOG_LEVEL": "WARNING",
    }
    # Replay: no rule can fire (waste above 99.9999 %, utilisation above 100x), so no cooldown starts.
    quiet = create_app({**base, "CPU_WASTE_THRESHOLD": "0.999999", "CPU_UTILISATION_THRESHOLD": "100"})
    # Ask: any usage fires a rule, so every deployment of the payload is in the trigger.
    loud = create_app({**base, "CPU_WASTE_THRESHOLD": "0", "CPU_UTILISATION_THRESHOLD": "0", "COOLDOWN_SECONDS": "1"})
    return quiet.test_client(), loud.test_client()


def _recommendations(receiver, since):
    """{(namespace, name): trigger item} from the messages the receiver accepted after index `since`."""
    items = {}
    for message in receiver.messages[since:]:
        for item in message["triggers"]:
            items[(message["namespace"], item["deployment"])] = item
    return items


def _segments(traces, cuts):
    """Per cut: the rows to replay quietly, and each deployment's last row up to the cut (the ask)."""
    previous = -math.inf
    for cut in cuts:
        rows = [(d, s) for d in traces for s in d.samples if previous < s[0] <= cut]
        last = {}
        for deployment, sample in rows:
            last[(deployment.namespace, deployment.name)] = (deployment, sample)
        asks = list(last.values())
        quiet = [(d, s) for d, s in rows if s[0] < last[(d.namespace, d.name)][1][0]]
        yield cut, quiet, asks
        previous = cut


def through_the_service(traces, cuts):
    """Recommendations from the real cost service at each cut: {method: {cut: {key: item}}}, and replay seconds."""
    namespaces = {d.namespace for d in traces}
    found = {"history": {}, "single sample": {}}
    replay_seconds = 0.0
    with tempfile.TemporaryDirectory() as workdir:
        server = RedisServer(workdir).start()
        receiver = AgentReceiver().start()
        try:
            quiet, loud = _apps(server.url, receiver.url, namespaces, len(traces))
            # The single-sample service keeps its state in database 1, emptied before each ask.
            _, alone = _apps(server.url.rsplit("/", 1)[0] + "/1", receiver.url, namespaces, len(traces))
            alone_redis = redis.Redis.from_url(server.url.rsplit("/", 1)[0] + "/1")
            for cut, replay, asks in _segments(traces, cuts):
                started, asked = time.monotonic(), len(receiver.messages)
                _post_all(quiet, _payloads(replay))
                replay_seconds += time.monotonic() - started
                if len(receiver.messages) != asked:
                    raise RuntimeError("a rule fired during the replay: its cooldown would hide a recommendation")
                # Cooldown windows are 1 s long: make sure the last ask's have run out.
                time.sleep(max(0.0, 1.1 - (time.monotonic() - started)))
                _post_all(loud, _payloads(asks))
                found["history"][cut] = _recommendations(receiver, asked)
                alone_redis.flushdb()
                asked = len(receiver.messages)
                _post_all(alone, _payloads(asks))
                found["single sample"][cut] = _recommendations(receiver, asked)
        finally:
            receiver.stop()
            server.stop()
    return found, replay_seconds


def _vpa_percentile(weighted, fraction, first_bucket, growth=0.05):
    """The VPA histogram's percentile: the end of the bucket where `fraction` of the weight is reached."""
    buckets = defaultdict(float)
    for value, weight in weighted:
        index = 0 if value < first_bucket else int(math.log(value * growth / first_bucket + 1) / math.log(1 + growth))
        buckets[index] += weight
    total, running = sum(buckets.values()), 0.0
    for index in sorted(buckets):
        running += buckets[index]
        if running >= fraction * total:
            return first_bucket * ((1 + growth) ** (index + 1) - 1) / growth
    return 0.0


def vpa_reference(traces, cut):
    """The VPA recommender's estimate, offline: CPU p90 of the decaying sample histogram and memory
    p90 of the decaying histogram of daily peaks (last 8 days), each plus 15 %."""
    result = {}
    for deployment in traces:
        samples = [s for s in deployment.samples if s[0] <= cut]
        end = samples[-1][0]
        cpu = [(c, 2 ** ((ts - end) / HALF_LIFE_SECONDS)) for ts, c, _ in samples]
        peaks = defaultdict(float)
        for ts, _, mem in samples:
            if ts > end - WINDOWS * DAY:
                peaks[int(ts // DAY)] = max(peaks[int(ts // DAY)], mem)
        memory = [(peak, 2 ** ((day * DAY - end) / HALF_LIFE_SECONDS)) for day, peak in peaks.items()]
        result[(deployment.namespace, deployment.name)] = {
            "recommendation": {
                "cpu_cores": math.ceil(_vpa_percentile(cpu, 0.9, 0.01) * (1 + HEADROOM) * 1000) / 1000,
                # The VPA's memory buckets start at 10 MB (9.54 MiB).
                "memory_mb": math.ceil(_vpa_percentile(memory, 0.9, 1e7 / 2**20) * (1 + HEADROOM)),
            }
        }
    return result


def score(traces, cut, items):
    """Per deployment: (shape, CPU share of time over, memory over?, CPU unused, memory unused, waste, item)."""
    rows = []
    for deployment in traces:
        item = items.get((deployment.namespace, deployment.name))
        future = [s for s in deployment.samples if cut < s[0] <= cut + DAY]
        if item is None or not future:
            continue
        cpu_rec, mem_rec = item["recommendation"]["cpu_cores"], item["recommendation"]["memory_mb"]
        cpu_over = sum(cpu > cpu_rec for _, cpu, _ in future) / len(future)
        mem_over = any(mem > mem_rec for _, _, mem in future)
        cpu_unused = sum(max(0.0, cpu_rec - cpu) for _, cpu, _ in future) / len(future) / cpu_rec
        mem_unused = max(0.0, mem_rec - max(mem for _, _, mem in future)) / mem_rec
        waste = next((r["value"] for r in item.get("reasons", ()) if r["rule"] == "cpu_waste"), None)
        rows.append((deployment.shape, cpu_over, mem_over, cpu_unused, mem_unused, waste, item))
    return rows


def _line(label, rows):
    n = len(rows)
    if not n:
        return f"| {label} | 0 | | | | |"
    return (
        f"| {label} | {n} | {100 * sum(r[1] for r in rows) / n:.1f} % | {100 * sum(r[2] for r in rows) / n:.0f} % "
        f"| {100 * sum(r[3] for r in rows) / n:.0f} % | {100 * sum(r[4] for r in rows) / n:.0f} % |"
    )


def table(method, rows, note=""):
    """The markdown table of one method: per shape, all, and where today's cpu_waste rule fired."""
    lines = [
        f"### {method}{note}",
        "",
        "| deployments | n | CPU: share of time usage > recommendation | memory: deployments whose usage exceeds "
        "it within 24 h | CPU: unused share of the recommendation | memory: unused at the day's peak |",
        "|---|---|---|---|---|---|",
    ]
    shapes = [shape for shape in (*SHAPES, "csv") if any(r[0] == shape for r in rows)]
    if len(shapes) > 1:
        lines += [_line(shape, [r for r in rows if r[0] == shape]) for shape in shapes]
    lines.append(_line("**all**", rows))
    fired = [r for r in rows if r[5] is not None and r[5] > 0.5]
    if fired and len(fired) < len(rows):
        lines.append(_line("where `cpu_waste` fired (waste > 0.5)", fired))
    return lines


def goals(results):
    """The issue's goals on the built-in traces, as (text, met) pairs."""
    history, vpa = results["history"], results["VPA-style reference (offline)"]

    def mean(rows, column):
        return sum(r[column] for r in rows) / len(rows)

    return [
        ("CPU over the recommendation at most 10 % of the time", mean(history, 1) <= 0.10),
        (
            "memory never over it for any shape but the leaking one",
            not any(r[2] for r in history if r[0] != "leak"),
        ),
        (
            "no more over-provisioning than the VPA-style reference (CPU and memory unused shares)",
            mean(history, 3) <= mean(vpa, 3) + 0.005 and mean(history, 4) <= mean(vpa, 4) + 0.005,
        ),
    ]


def main(argv=None):
    """Run the backtest; print the tables and write them to --output."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", nargs="?", help="samples as timestamp,namespace,name,cpu,memory_mb (default: synthetic)")
    parser.add_argument("--output", default=str(ROOT / "bench" / "BACKTEST.md"), help="where to write the tables")
    parser.add_argument("--seed", type=int, default=1, help="seed of the synthetic traces")
    parser.add_argument("--no-redis-time", action="store_true", help="skip measuring the history's Redis time")
    args = parser.parse_args(argv)
    started = time.monotonic()
    traces = from_csv(args.csv) if args.csv else synthetic(days=14, seed=args.seed)
    first = min(s[0] for d in traces for s in d.samples)
    end = max(s[0] for d in traces for s in d.samples)
    cuts = sorted(end - DAY * k for k in range(1, 8) if end - DAY * k >= first + 7 * DAY - STEP_SECONDS)
    cuts = cuts or [end - DAY]
    if cuts[-1] <= first:
        parser.error("the trace must be longer than the 24 hours scored")
    by_method, replay_seconds = through_the_service(traces, cuts)
    by_method["VPA-style reference (offline)"] = {cut: vpa_reference(traces, cut) for cut in cuts}
    results = {
        method: [row for cut in cuts for row in score(traces, cut, items[cut])] for method, items in by_method.items()
    }
    bases = defaultdict(int)
    for items in by_method["history"].values():
        for item in items.values():
            bases[item["recommendation"]["basis"]] += 1
    source = f"`{Path(args.csv).name}`" if args.csv else f"synthetic traces (seed {args.seed})"
    samples = sum(len(d.samples) for d in traces)
    traces = [d for d in traces if d.samples]
    lines = [
        "# Recommendation backtest",
        "",
        f"{len(traces)} deployments, {samples:,} samples from {source}, replayed through the cost service "
        f"(one payload per timestamp); recommendations asked for at {len(cuts)} cut(s), "
        f"{_iso(cuts[0])} to {_iso(cuts[-1])}, each scored on the 24 hours after it (n counts "
        "deployment × cut). Written by `make backtest`.",
        "",
        "Unused share: the time-averaged share of the CPU recommendation above usage, and the share of the "
        "memory recommendation above the day's highest usage.",
        "",
    ]
    notes = {
        "history": f" (the service with the replayed history; basis: {dict(bases)})",
        "single sample": " (the service given the last sample only, as before the history)",
        "VPA-style reference (offline)": " (computed here from the raw samples, not by the service)",
    }
    for method, rows in results.items():
        lines += [*table(method, rows, notes[method]), ""]
    if not args.csv:
        lines += ["## Goals on the built-in traces", ""]
        lines += [f"- {'met' if met else '**not met**'}: {text}" for text, met in goals(results)]
        lines.append("")
    if not args.no_redis_time:
        lines += [*history_cost.report(), ""]
    elapsed = time.monotonic() - started
    lines.append(f"Run time: {elapsed:.0f} s ({replay_seconds:.0f} s replaying through the service).")
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.output).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
