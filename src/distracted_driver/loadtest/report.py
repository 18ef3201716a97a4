"""PNG figures of load tests: one run over time, and the capacity search's steps."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_history(history_csv: Path, png: Path, title: str = "") -> Path | None:
    """Throughput, failures and users (top) and latency percentiles (bottom) over the run."""
    rows = _aggregated_rows(history_csv)
    if not rows:
        return None
    start = float(rows[0]["Timestamp"])
    t = [float(r["Timestamp"]) - start for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    top.plot(t, [_f(r["Requests/s"]) for r in rows], label="requests/s", color="tab:blue")
    top.plot(t, [_f(r["Failures/s"]) for r in rows], label="failures/s", color="tab:red")
    top.set_ylabel("per second")
    top.set_ylim(bottom=0)
    users = top.twinx()
    users.plot(t, [_f(r["User Count"]) for r in rows], label="users", color="tab:gray", linestyle="--")
    users.set_ylabel("users")
    lines = top.get_legend_handles_labels()
    more = users.get_legend_handles_labels()
    top.legend(lines[0] + more[0], lines[1] + more[1], loc="upper left")
    for column, label in (("50%", "p50"), ("95%", "p95"), ("99%", "p99")):
        bottom.plot(t, [_f(r[column]) for r in rows], label=label)
    bottom.set_ylabel("latency (ms, last 10 s)")
    bottom.set_ylim(bottom=0)
    bottom.set_xlabel("seconds since start")
    bottom.legend(loc="upper left")
    fig.suptitle(title or "load test")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def plot_capacity(steps: list[dict], png: Path, p99_limit_ms: float) -> Path:
    """Requests/s and p99 per user count of the capacity search."""
    users = [s["users"] for s in steps]
    fig, left = plt.subplots(figsize=(8, 4.5))
    left.plot(users, [s["rps"] for s in steps], marker="o", color="tab:blue", label="requests/s")
    left.set_xlabel("concurrent users")
    left.set_ylabel("requests/s")
    left.set_ylim(bottom=0)
    right = left.twinx()
    right.plot(users, [s["p99_ms"] for s in steps], marker="s", color="tab:orange", label="p99 (ms)")
    right.axhline(p99_limit_ms, color="tab:red", linestyle=":", label="p99 SLO")
    right.set_ylabel("p99 latency (ms)")
    right.set_ylim(bottom=0)
    handles = [h for ax in (left, right) for h in ax.get_legend_handles_labels()[0]]
    labels = [lab for ax in (left, right) for lab in ax.get_legend_handles_labels()[1]]
    left.legend(handles, labels, loc="upper left")
    left.set_title("capacity search")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def _aggregated_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if r.get("Name") == "Aggregated"]


def _f(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return float("nan")
