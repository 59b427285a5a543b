"""The one line each benchmark prints per headline figure for `make bench` (tests/bench/run_all.py
collects them into one table): the figure, its baseline from the same run and their ratio."""

from __future__ import annotations

PREFIX = "BENCH "
SEP = " | "


def summary(name: str, figure: float, baseline: float, unit: str, baseline_name: str, better: str = "higher") -> None:
    """`BENCH name | figure unit | baseline_name: baseline unit | ratio | higher/lower is better`.

    The ratio is figure / baseline; `better` says which way is good (throughput: higher,
    latency or cost: lower)."""
    ratio = figure / baseline if baseline else float("nan")
    print(
        PREFIX
        + SEP.join(
            (name, "%.4g %s" % (figure, unit), "%s: %.4g %s" % (baseline_name, baseline, unit), "%.2f" % ratio, better)
        ),
        flush=True,
    )
