"""The Redis server time the usage history adds to storing one cost sample.

Runs the real cost save script (shared/state.py's SAVE_APP_FIELDS) on a throwaway redis-server,
once without the history key (the script then stores the app hash only) and once with it, over
the same samples, and reads `usec_per_call` of EVALSHA from INFO commandstats for each. The
difference is what the history costs per sample. Part of `make backtest`; also runs alone.
"""

import os
import random
import tempfile
from pathlib import Path

from shared.history import usage_args
from shared.state import StateRepository, encode
from tests.support import RedisServer

ROOT = Path(__file__).resolve().parent.parent

DEPLOYMENTS = 200
STEPS = 25  # 200 deployments x 25 five-minute samples = 5,000 samples per variant and round
ROUNDS = 15
T0 = 1704067200


def _samples(round_number, seed=3):
    rnd = random.Random(seed)
    # Each round continues the histories of the one before, so later rounds see grown hashes.
    for step in range(round_number * STEPS, (round_number + 1) * STEPS):
        yield (
            T0 + 300 * step,
            [(f"app-{i}", rnd.uniform(0.05, 2.0), rnd.randint(100, 4000)) for i in range(DEPLOYMENTS)],
        )


def _usec_per_evalsha(client, sha, namespace, with_history, round_number):
    client.config_resetstat()
    for seconds, rows in _samples(round_number):
        ts = encode(seconds)
        pipe = client.pipeline(transaction=False)
        for name, cpu, mem in rows:
            keys = [StateRepository.app_key(namespace, name)]
            args = ["cost_timestamp", ts, "req_cpu", "2.0", "req_mem", "4096"]
            args += ["usage_cpu_curr", encode(cpu), "usage_mem_curr", encode(mem)]
            if with_history:
                keys.append(StateRepository.history_key(namespace, name))
                args += usage_args(seconds, cpu, encode(mem), "86400")
            pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args)
        pipe.execute()
    return client.info("commandstats")["cmdstat_evalsha"]["usec_per_call"]


def measure(rounds=ROUNDS):
    """(µs per sample without history, with history): the best of `rounds` short runs of each.

    Short interleaved runs and the best of each: on a shared machine a long run mostly measures
    the neighbours.
    """
    from shared.state import SAVE_APP_FIELDS

    with tempfile.TemporaryDirectory() as workdir:
        server = RedisServer(workdir).start()
        try:
            client = server.client()
            sha = client.script_load(SAVE_APP_FIELDS)
            without, with_history = [], []
            for round_number in range(rounds):
                without.append(_usec_per_evalsha(client, sha, "plain", False, round_number))
                with_history.append(_usec_per_evalsha(client, sha, "hist", True, round_number))
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
        f"EVALSHA of the cost save script, `usec_per_call` from INFO commandstats, best of {ROUNDS} "
        f"interleaved runs of {samples:,} samples each ({DEPLOYMENTS} deployments × {STEPS} five-minute "
        "payloads, continuing the same histories):",
        "",
        "| save script | µs per sample |",
        "|---|---|",
        f"| app hash only | {without:.2f} |",
        f"| app hash + history | {with_history:.2f} |",
        f"| **history adds** | **{with_history - without:.2f}** |",
        "",
        f"Measured on {os.cpu_count()} CPU(s) with a load average of {os.getloadavg()[0]:.1f} at the end.",
    ]


if __name__ == "__main__":
    print("\n".join(report()))
