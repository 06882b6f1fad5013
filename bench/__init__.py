"""The ingest benchmark: `make bench` runs bench/run.py; see bench/RESULTS.md for the latest figures."""
