"""Measure what a Sentinel failover leaves open: `python bench/failover_window.py [--rounds N]`.

For each round: a fresh primary, replica and three Sentinels (devtools.harness.RedisSentinelSet), a
Sentinel-mode client built by shared.store.connection, a writer thread, then SENTINEL FAILOVER.
Polling every 5 ms, it notes when the client stops writing (the hold), when the replica turns
primary, when the client follows it, when ingest-style writes succeed again, and when the old
primary is demoted. A stock redis-py Sentinel client (Sentinel.master_for) writes alongside, to
show the window without the hold. Prints one line per round and the medians.
"""

import argparse
import statistics
import tempfile
import threading
import time

import redis
from redis.sentinel import Sentinel

from devtools.harness import RedisSentinelSet
from shared.runtime.settings import DEFAULTS, parse_settings
from shared.store.connection import connect_redis
from shared.web.services import COST

MASTER = "aggregator"


def one_round():
    """Times in seconds after SENTINEL FAILOVER was sent."""
    servers = RedisSentinelSet(tempfile.mkdtemp(prefix="failover-"), master_name=MASTER).start()
    try:
        settings = parse_settings(
            {
                **DEFAULTS,
                "AGENT_WEBHOOK_URL": "http://127.0.0.1:9/",
                COST.token_setting: "t" * 20,
                "REDIS_SENTINELS": servers.sentinels_setting,
                "REDIS_SENTINEL_MASTER": MASTER,
                "REDIS_TIMEOUT_SECONDS": "1",
            },
            COST.token_setting,
        )
        ours = connect_redis(settings)
        stock = Sentinel([("127.0.0.1", port) for port in servers.sentinel_ports], socket_timeout=1).master_for(
            MASTER, socket_timeout=1
        )
        old, new = servers.primary.client(), servers.replica.client()
        ours.set("warm", 1)
        stock.set("warm", 1)
        role_rtt = min(timeit(old.role) for _ in range(200))
        marks, stop = {}, threading.Event()

        def write(name, client, key):
            while not stop.is_set():
                try:
                    client.set(key, 1)
                    ok = True
                except redis.RedisError:
                    ok = False
                now = time.monotonic()
                if not ok:
                    marks.setdefault(f"{name}_refused", now)
                elif name + "_refused" in marks:
                    marks.setdefault(f"{name}_back", now)
                if ok and "promoted" in marks and address(client) == servers.primary.port:
                    marks[f"{name}_last_write_to_old"] = now
                time.sleep(0.002)

        threads = [
            threading.Thread(target=write, args=("ours", ours, "a")),
            threading.Thread(target=write, args=("stock", stock, "b")),
        ]
        for thread in threads:
            thread.start()
        time.sleep(0.3)
        start = time.monotonic()
        servers.sentinel().sentinel_failover(MASTER)
        while time.monotonic() - start < 20 and "demoted" not in marks:
            now = time.monotonic()
            if "promoted" not in marks and new.role()[0] == b"master":
                marks["promoted"] = now
            if "followed" not in marks and ours.connection_pool.master_address[1] == servers.replica.port:
                marks["followed"] = now
            if "demoted" not in marks and old.role()[0] == b"slave":
                marks["demoted"] = now
            time.sleep(0.005)
        stop.set()
        for thread in threads:
            thread.join()
        result = {name: round(moment - start, 3) for name, moment in marks.items()}
        result["role_rtt_ms"] = round(role_rtt * 1000, 3)
        return result
    finally:
        servers.stop()


def address(client):
    """The port the client's pool last connected to."""
    connection = client.connection_pool._available_connections[:1]
    return connection[0].port if connection else None


def timeit(call):
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rounds = [one_round() for _ in range(args.rounds)]
    for result in rounds:
        print(result)
    for name in sorted({name for result in rounds for name in result}):
        values = [result[name] for result in rounds if name in result]
        print(f"median {name}: {statistics.median(values)} ({len(values)} of {len(rounds)} rounds)")


if __name__ == "__main__":
    main()
