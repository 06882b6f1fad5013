"""The ingest benchmark: both services against the bare-Flask ceiling, at 2 to 2000 deployments per payload.

`make bench` runs this. It starts a redis-server of its own, the agent receiver, the cost and
forecast services and the ceiling app (bench/ceiling.py), all under the project's gunicorn.conf.py
on loopback ports, drives them with wrk, prints its tables (the headline: CPU per request and the
CPU ratio to the ceiling, per case) and writes them to bench/RESULTS.md. `--quick` runs one-second
measurements to smoke-check the harness and writes nothing unless `--output` says where.
Everything it started is stopped on exit, Ctrl-C included.

The parts: bench/payloads.py (what is sent), bench/stack.py (the processes), bench/load.py (wrk
and the Redis counts per case), bench/report.py (the tables, the targets, RESULTS.md).
"""

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.load import FULL, QUICK, ensure_wrk, run_case
from bench.payloads import COST, FORECAST, SIZES
from bench.report import machine, results_markdown, table, target_checks, traffic_table
from bench.stack import STORES, Stack, run_until_done

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"


def run(mode, output, sizes=SIZES, stores=STORES):
    """Run every case and report; return the rows."""
    wrk = ensure_wrk()
    started_at = datetime.now(UTC)
    started = time.monotonic()
    # Other work on the machine slows the service and the ceiling alike, but readers should know of it.
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    rows = []
    with tempfile.TemporaryDirectory(prefix="aggregator-bench-") as tmp:
        workdir = Path(tmp)
        stack = Stack(workdir, stores)
        try:
            print("bench: starting Redis, the agent receiver, the services and the ceiling", flush=True)
            stack.start()
            for store in stores:
                for size in sizes:
                    for endpoint in (COST, FORECAST):
                        print(f"bench: {endpoint.name} at {size} deployments on {store}", flush=True)
                        rows.append(run_case(stack, wrk, mode, store, endpoint, size, workdir))
        finally:
            stack.stop()
    seconds = time.monotonic() - started
    print()
    print(table(rows))
    print()
    print(traffic_table(rows))
    print()
    print(target_checks(rows))
    print(f"\nbench: {seconds:.0f} s in all; {machine()}; load average before: {load}")
    if output:
        output.write_text(results_markdown(rows, mode, started_at, seconds, load))
        print(f"bench: wrote {output}")
    return rows


def _choices(allowed, kind):
    """An argparse type: a comma-separated subset of `allowed`, kept in their order."""

    def parse(text):
        try:
            chosen = {kind(part.strip()) for part in text.split(",") if part.strip()}
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a list of {kind.__name__}: {text!r}") from None
        if not chosen or not chosen <= set(allowed):
            raise argparse.ArgumentTypeError(f"choose among {', '.join(map(str, allowed))}")
        return tuple(value for value in allowed if value in chosen)

    return parse


def main(argv=None):
    """Parse the options and run the benchmark; exit non-zero when it could not finish."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one-second runs to smoke-check the harness")
    parser.add_argument(
        "--output",
        type=Path,
        help=f"where to write the results (default: {RESULTS.relative_to(ROOT)}, none with --quick)",
    )
    parser.add_argument(
        "--sizes",
        type=_choices(SIZES, int),
        default=SIZES,
        help="comma-separated deployments per payload, a subset of the default (a targeted check writes nothing)",
    )
    parser.add_argument(
        "--stores", type=_choices(STORES, str), default=STORES, help="comma-separated: redis, cluster, or both"
    )
    args = parser.parse_args(argv)
    partial = args.quick or args.sizes != SIZES or args.stores != STORES
    output = args.output or (None if partial else RESULTS)
    return run_until_done("bench", lambda: run(QUICK if args.quick else FULL, output, args.sizes, args.stores))


if __name__ == "__main__":
    sys.exit(main())
