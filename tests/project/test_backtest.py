"""make backtest on a small CSV: read, replayed through the cost service, scored, written."""

import pytest

from bench import backtest
from bench.traces import from_csv

DAY = 86400
T0 = 1704067200


def write_csv(path, days=10):
    lines = ["timestamp,namespace,name,cpu,memory_mb"]
    for hour in range(days * 24):
        ts = T0 + hour * 3600
        # "web" doubles its CPU at noon; "worker" is flat. Both keep memory flat.
        lines.append(f"{ts},default,web,{0.8 if hour % 24 == 12 else 0.4},500")
        lines.append(f"2024-01-{1 + hour // 24:02d}T{hour % 24:02d}:00:00Z,default,worker,0.2,300")  # ISO also reads
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_csv_backtest_asks_the_service_and_scores_both_methods(tmp_path):
    csv = write_csv(tmp_path / "samples.csv")
    output = tmp_path / "BACKTEST.md"
    assert backtest.main([str(csv), "--output", str(output), "--no-redis-time"]) == 0
    text = output.read_text()
    # Ten days: two cuts with 7 days behind them and a day after; 2 deployments each.
    assert "at 2 cut(s), 2024-01-08T23:00:00Z to 2024-01-09T23:00:00Z" in text
    history, single = text.split("### single sample")
    assert "basis: {'history': 4}" in history
    # web spends 1 hour in 24 at twice its usual CPU: above any p90, so 1/24 of its time (half of
    # that over both deployments) is over; memory never is.
    assert "| **all** | 4 | 2.1 % | 0 % |" in history and "| **all** | 4 | 2.1 % | 0 % |" in single


def test_a_csv_without_the_columns_is_refused(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("time,name,cpu\n1,a,0.1\n")
    with pytest.raises(ValueError, match="missing column"):
        from_csv(path)


@pytest.mark.slow
def test_the_episodes_replay_matches_the_spec_by_default_and_spares_the_agent_otherwise(tmp_path):
    from bench import episodes

    output = tmp_path / "EPISODES.md"
    assert episodes.main(["--deployments", "10", "--days", "4", "--modes", "ace", "--output", str(output)]) == 0
    text = output.read_text()
    rows = {line.split("|")[1].strip()[:3]: line.split("|") for line in text.splitlines() if line.startswith("| (")}
    # (a): the spec's rule, one item per firing deployment per cooldown window, 48 a day.
    assert "Goals: all met." in text
    assert rows["(a)"][7].strip().endswith("(48.00)")
    # (c): the agent said "no change": reminders stop, and after the first day little is sent.
    assert rows["(c)"][4].strip() == "0.00 (0.00)"
    assert float(rows["(c)"][7].split("(")[1].rstrip(") ")) <= 1
