"""The episodes replay: how many items the agent gets, by `notify`, and how soon risk reaches it.

`make episodes` replays the synthetic traces of bench/traces.py (200 deployments, 14 days of
5-minute samples, requested at about twice their use, so that almost every one fires `cpu_waste`
on almost every sample) through the cost service's own ingest, one payload per timestamp, with
the payload's timestamp as the service's clock, against a throwaway redis-server and an agent
stand-in. Risk events are added: every fourth deployment's CPU use steps to 0.95 of its current
request for half an hour at 14:00 UTC on days 3, 6, 9 and 12 (`cpu_utilisation` fires).

Modes: (a) the defaults; (b) REMINDER_SECONDS=86400; (c) an agent that answers every `first` and
`changed` item with `no_change` for 7 days; (d) one that answers `applied` and applies the
recommendation to the trace's requests from the next sample on; (e) one that answers `snooze`
for 7 days (the risk events then fall inside snoozed waste episodes). The agent answers after
the request that sent the item, through the same code as POST .../decision.

Reported per mode: items per deployment per day by `notify` (all days, and after day 1), and
per risk event the delay in samples from its first risky sample to an item carrying a risk
reason. (a) is checked against a model of the spec's rule (a firing deployment once per
cooldown, a risk rule once more inside a window); the table goes to bench/EPISODES.md.
"""

import argparse
import sys
import tempfile
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path

from bench.traces import DAY, START, STEP_SECONDS, synthetic
from cost_service import create_app
from devtools.agent_receiver import AgentReceiver
from devtools.harness import RedisServer
from shared.core.episodes import APPLIED, CHANGED, FIRST, NO_CHANGE, NOTIFY_KINDS, RESOLVED, SNOOZE
from shared.core.rules import RISK_RULES, Thresholds, evaluate_cost, has_risk
from shared.web.services import service_of

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "episodes-token-0123456789abcdef"
COOLDOWN = 1800
RISK_DAYS = (3, 6, 9, 12)
RISK_HOUR = 14
RISK_SAMPLES = 6  # half an hour
RISK_SHARE = 0.95
HOLD = 7 * DAY

MODES = {
    "a": ("defaults", {}, None),
    "b": ("REMINDER_SECONDS=86400", {"REMINDER_SECONDS": "86400"}, None),
    "c": ("agent answers no_change (7 days)", {}, NO_CHANGE),
    "d": ("agent answers applied, and applies", {}, APPLIED),
    "e": ("agent answers snooze (7 days)", {}, SNOOZE),
}


def _iso(seconds):
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def risky_steps(deployments, days):
    """{name: set of step indexes whose CPU use is a risk event's}."""
    steps = defaultdict(set)
    for index, deployment in enumerate(deployments):
        if index % 4 != 1:
            continue
        for day in RISK_DAYS:
            if day < days:
                first = (day * DAY + RISK_HOUR * 3600) // STEP_SECONDS
                steps[deployment.name].update(range(first, first + RISK_SAMPLES))
    return steps


def replay(deployments, days, mode):
    """Replay the traces in one mode; the items the agent received and the risk events' delays."""
    label, settings, answer = MODES[mode]
    risky = risky_steps(deployments, days)
    requests = {d.name: (d.req_cpu, d.req_mem) for d in deployments}
    with tempfile.TemporaryDirectory() as workdir:
        server = RedisServer(workdir).start()
        receiver = AgentReceiver().start()
        try:
            config = {
                "REDIS_URL": server.url,
                "AGENT_WEBHOOK_URL": receiver.url,
                "COST_ENGINE_TOKEN": TOKEN,
                "MAX_DEPLOYMENTS": str(len(deployments)),
                "LOG_LEVEL": "WARNING",
                **settings,
            }
            svc = service_of(create_app(config))
            received = []  # (step, name, notify, has risk, item)
            waiting = {}  # name -> step of its risk event's first risky sample, until an item with risk comes
            delays = []
            # name -> step of the last item carrying a risk reason: a risk event inside that item's
            # window is one the agent has been told of (the spec escalates a window once).
            risk_told = {}
            covered = 0
            seen = 0
            for step in range(days * DAY // STEP_SECONDS):
                now = START + step * STEP_SECONDS
                rows = []
                for deployment in deployments:
                    _, cpu, mem = deployment.samples[step]
                    req_cpu, req_mem = requests[deployment.name]
                    if step in risky[deployment.name]:
                        cpu = RISK_SHARE * req_cpu
                        if step - 1 not in risky[deployment.name]:
                            told = risk_told.get(deployment.name)
                            if told is not None and (step - told) * STEP_SECONDS < COOLDOWN:
                                covered += 1
                            else:
                                waiting[deployment.name] = step
                    rows.append(
                        {
                            "name": deployment.name,
                            "current_requests": {"cpu_cores": req_cpu, "memory_mb": req_mem},
                            "current_usage": {"cpu_cores": cpu, "memory_mb": mem},
                        }
                    )
                payload = {
                    "source": "cost-engine",
                    "timestamp": _iso(now),
                    "namespace": "default",
                    "cluster_totals": {"vm_count": 10, "current_hourly_cost_gbp": 12.5},
                    "deployments": rows,
                }
                svc.aggregator.ingest(svc.source, svc.schema.load(payload), f"replay-{step}", now=now)
                for message in receiver.messages[seen:]:
                    for item in message["triggers"]:
                        name, notify = item["deployment"], item["episode"]["notify"]
                        risk = has_risk(item["reasons"])
                        received.append((step, name, notify, risk, item))
                        if risk:
                            risk_told[name] = step
                            if name in waiting:
                                delays.append(step - waiting.pop(name))
                        if answer and notify in (FIRST, CHANGED):
                            until = None if answer == APPLIED else now + HOLD
                            svc.aggregator.decide("default", name, item["episode"]["id"], answer, until, "", now)
                            if answer == APPLIED and item["recommendation"]:
                                recommendation = item["recommendation"]
                                requests[name] = (recommendation["cpu_cores"], recommendation["memory_mb"])
                seen = len(receiver.messages)
            missed = len(waiting)
        finally:
            receiver.stop()
            server.stop()
    return label, received, delays, missed, covered


def spec_items(deployments, days):
    """How many items the spec's rule sends: a firing deployment once per cooldown window, and a
    risk rule once more inside a window a waste rule opened (risk events included)."""
    thresholds, risky = Thresholds(), risky_steps(deployments, days)
    total = 0
    for deployment in deployments:
        opened, escalated = None, False
        for step in range(days * DAY // STEP_SECONDS):
            now, cpu, mem = deployment.samples[step]
            if step in risky[deployment.name]:
                cpu = RISK_SHARE * deployment.req_cpu
            state = {"req_cpu": deployment.req_cpu, "usage_cpu_curr": cpu, "req_mem": deployment.req_mem}
            reasons = evaluate_cost(state, thresholds)
            if not reasons:
                continue
            risk = any(reason["rule"] in RISK_RULES for reason in reasons)
            if opened is None or now >= opened + COOLDOWN:
                opened, escalated, total = now, risk, total + 1
            elif risk and not escalated:
                escalated, total = True, total + 1
    return total


def summarise(deployments, days, received):
    """Items per deployment per day by notify: over all days, and after day 1."""
    count = len(deployments)
    every, later = Counter(), Counter()
    first_day_steps = DAY // STEP_SECONDS
    for step, _, notify, _, _ in received:
        every[notify] += 1
        if step >= first_day_steps:
            later[notify] += 1
    per = {notify: every[notify] / count / days for notify in NOTIFY_KINDS}
    per_later = {notify: later[notify] / count / (days - 1) for notify in NOTIFY_KINDS}
    return per, per_later


def reopened_after_applied(received):
    """After the agent applied (mode d): (deployments that opened a waste episode again, such
    episodes, episodes a risk rule opened)."""
    applied, reopened, risk_opened = set(), Counter(), 0
    for _, name, notify, risk, _ in received:
        if notify == FIRST:
            if name in applied:
                if risk:
                    risk_opened += 1
                else:
                    reopened[name] += 1
            applied.add(name)
    return len(reopened), sum(reopened.values()), risk_opened


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deployments", type=int, default=200)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--modes", default="abcde")
    parser.add_argument("--output", default=str(ROOT / "bench" / "EPISODES.md"))
    args = parser.parse_args(argv)
    deployments = synthetic(args.deployments, args.days)
    expected = spec_items(deployments, args.days)
    lines = [
        "# Episodes replay",
        "",
        f"`make episodes`: {args.deployments} synthetic deployments, {args.days} days of 5-minute samples,"
        " replayed through the cost service's ingest with the payload's time as its clock"
        " (bench/episodes.py says how). Items per deployment per day, by `notify`; in brackets, after day 1.",
        "",
        "| mode | first | changed | reminder | escalation | resolved | all | risk events sent on their first sample"
        " | inside a window whose item carried risk already | worst delay (samples) | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    notes = []
    failures = []
    for mode in args.modes:
        started = time.monotonic()
        label, received, delays, missed, covered = replay(deployments, args.days, mode)
        seconds = time.monotonic() - started
        per, per_later = summarise(deployments, args.days, received)
        cells = [f"{per[n]:.2f} ({per_later[n]:.2f})" for n in NOTIFY_KINDS]
        total, total_later = sum(per.values()), sum(per_later.values())
        on_time = sum(delay == 0 for delay in delays)
        lines.append(
            f"| ({mode}) {label} | {' | '.join(cells)} | {total:.2f} ({total_later:.2f}) "
            f"| {on_time} of {len(delays) + missed} | {covered} | {max(delays, default=0)} | {seconds:.0f} |"
        )
        print(lines[-1], flush=True)
        if missed or on_time != len(delays):
            failures.append(f"({mode}): {missed} risk events never sent, {len(delays) - on_time} late")
        if mode == "a":
            sent = sum(1 for _, _, notify, _, _ in received if notify != RESOLVED)
            notes.append(f"(a) sent {sent} items besides `resolved`; the spec's rule sends {expected}.")
            if sent != expected:
                failures.append(f"(a) sent {sent} items, the spec's rule {expected}")
        if mode == "c" and total_later > 1:
            failures.append(f"(c) {total_later:.2f} items per deployment per day after day 1 (goal: at most 1)")
        if mode == "d":
            deployments_reopened, episodes, risk_opened = reopened_after_applied(received)
            notes.append(
                f"(d) after `applied`, {deployments_reopened} deployments opened {episodes} new waste episodes;"
                f" {risk_opened} new episodes were opened by a risk rule. The applied requests are the"
                " recommendation, the p90 of use plus 15 % headroom: use at the p90 is then 1/1.15 = 87 % of"
                " the request, above CPU_UTILISATION_THRESHOLD (0.85), so `cpu_utilisation` fires whenever"
                " use reaches its p90."
            )
            if episodes:
                failures.append(f"(d) {episodes} waste episodes opened again after applied")
    lines += ["", *notes, "", "Goals: " + ("all met." if not failures else "not met: " + "; ".join(failures) + ".")]
    Path(args.output).write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-3:]))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
