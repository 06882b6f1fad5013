"""The Redis server time the usage history adds to storing one cost sample.

Stores the same cost payloads through StateRepository.save_cost (shared/store/repository.py's batched SAVE
script) on a throwaway redis-server, once with the usage history switched off and once with it,
and reads from INFO commandstats the time Redis spent in the script calls. Divided by the
samples stored, the difference is what the history costs per sample. Part of `make backtest`;
also runs alone (`python -m bench.history_cost`).
"""

import os
import random
import tempfile

from devtools.harness import RedisServer
from shared.store.repository import StateRepository
from shared.store.settings import RedisMode

DEPLOYMENTS = 200
STEPS = 25  # 200 deployments x 25 five-minute samples = 5,000 samples per variant and round
ROUNDS = 15
T0 = 1704067200


def _payloads(namespace, round_number, seed=3):
    rnd = random.Random(seed)
    # Each round continues the histories of the one before, so later rounds see grown hashes.
    for step in range(round_number * STEPS, (round_number + 1) * STEPS):
        rows = [
            {
                "name": f"app-{i}",
                "req_cpu": 2.0,
                "req_mem": 4096,
                "usage_cpu_curr": rnd.uniform(0.05, 2.0),
                "usage_mem_curr": rnd.randint(100, 4000),
            }
            for i in range(DEPLOYMENTS)
        ]
        totals = {"current_hourly_cost_gbp": 1.25, "vm_count": 3}
        yield {"namespace": namespace, "timestamp": T0 + 300 * step, "cluster_totals": totals, "deployments": rows}


def _usec_per_sample(client, repository, namespace, round_number):
    client.config_resetstat()
    for payload in _payloads(namespace, round_number):
        repository.save_cost(payload)
    stats = client.info("commandstats")
    usec = stats.get("cmdstat_evalsha", {}).get("usec", 0)
    return usec / (DEPLOYMENTS * STEPS)


def measure(rounds=ROUNDS):
    """(µs per sample without history, with history): the best of `rounds` short runs of each.

    Short interleaved runs and the best of each: on a shared machine a long run mostly measures
    the neighbours.
    """
    with tempfile.TemporaryDirectory() as workdir:
        server = RedisServer(workdir).start()
        try:
            client = server.client()
            plain = StateRepository(client, 1800, history_half_life_seconds=None, mode=RedisMode.SINGLE)
            history = StateRepository(client, 1800, mode=RedisMode.SINGLE)
            without, with_history = [], []
            for round_number in range(rounds):
                without.append(_usec_per_sample(client, plain, "plain", round_number))
                with_history.append(_usec_per_sample(client, history, "hist", round_number))
            return min(without), min(with_history)
        finally:
            server.stop()


def report():
    """Measure and return the markdown lines quoting the result."""
    without, with_history = measure()
    samples = DEPLOYMENTS * STEPS
    return [
        "## Redis server time of the history, per cost sample",
        "",
        f"Redis time in the batched cost save script (INFO commandstats) per deployment stored, best of "
        f"{ROUNDS} interleaved runs of {samples:,} samples each ({DEPLOYMENTS} deployments × {STEPS} "
        "five-minute payloads, continuing the same histories):",
        "",
        "| save script | µs per sample |",
        "|---|---|",
        f"| app hash and cluster totals only | {without:.2f} |",
        f"| the same + usage history | {with_history:.2f} |",
        f"| **history adds** | **{with_history - without:.2f}** |",
        "",
        f"Measured on {os.cpu_count()} CPU(s) with a load average of {os.getloadavg()[0]:.1f} at the end.",
    ]


if __name__ == "__main__":
    print("\n".join(report()))
