# Copyright: llamafleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The bench's plots (matplotlib, no display): what people would rather look at than read."""
from __future__ import annotations

import os

try:
    import matplotlib

    matplotlib.use("Agg")  # files only; the controller may have no display
    import matplotlib.pyplot as plt
except ImportError:  # needed to draw (requirements.txt), not to import this module
    plt = None

DPI = 80


def _measured_chat(result: dict) -> list[dict]:
    return [r for r in result["requests"] if not r["warmup"] and r["kind"] == "chat"]


def ttft_distribution(result: dict, path: str) -> None:
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for name in result["summary"]["groups"]:
        values = sorted(r["ttft"] for r in _measured_chat(result) if r["group"] == name and r.get("ttft") is not None)
        if values:
            ax.plot(values, [(i + 1) / len(values) for i in range(len(values))], drawstyle="steps-post", label=name)
    for q, style in ((50, ":"), (95, "--")):
        p = result["summary"]["all"]["ttft"][f"p{q}"]
        if p is not None:
            ax.axvline(p, color="grey", linestyle=style, label=f"all p{q} {p:.2f} s")
    for name, pred in (result.get("predictions") or {}).items():
        if pred and pred.get("ttft_p95_s") is not None:
            ax.axvline(pred["ttft_p95_s"], color="red", linestyle="--", alpha=0.6, label=f"plan p95 {name} {pred['ttft_p95_s']:.2f} s")
    ax.set_xlabel("TTFT (s, from arrival)")
    ax.set_ylabel("share of requests")
    ax.set_title("Time to first token: cumulative distribution")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def latency_over_time(result: dict, path: str, bucket_s: float = 5.0) -> None:
    chats = _measured_chat(result)
    start = result["load"]["window_s"] and min((r["arrival"] for r in chats), default=0.0)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ok = [r for r in chats if r.get("ttft") is not None]
    ax.scatter([r["arrival"] - start for r in ok], [r["ttft"] for r in ok], s=8, label="TTFT")
    done = [r for r in chats if r.get("ok")]
    ax.scatter([r["arrival"] - start for r in done], [r["latency"] for r in done], s=8, marker="x", alpha=0.5, label="end-to-end")
    bad = [r for r in chats if not r.get("ok")]
    if bad:
        ax.scatter([r["arrival"] - start for r in bad], [0] * len(bad), s=20, color="red", marker="v", label="error")
    ax.set_xlabel("arrival (s into the measured window)")
    ax.set_ylabel("latency (s)")
    ax.grid(alpha=0.3)
    rate = ax.twinx()
    if chats:
        end = max(r["arrival"] - start for r in chats)
        edges = [i * bucket_s for i in range(int(end // bucket_s) + 2)]
        counts = [sum(lo <= r["arrival"] - start < lo + bucket_s for r in chats) * 60.0 / bucket_s for lo in edges]
        rate.step(edges, counts, where="post", color="green", alpha=0.5, label=f"arrivals/min ({bucket_s:g} s buckets)")
    rate.set_ylabel("chat arrivals per minute")
    lines = ax.get_legend_handles_labels()
    more = rate.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="upper left")
    ax.set_title("Latency over time, with the arrival rate")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def per_server_load(result: dict, path: str) -> None:
    servers = list(result["summary"]["servers"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(7, 3.2))
    counts = [result["summary"]["servers"][n]["completed"] for n in servers]
    errors = [result["summary"]["servers"][n]["errors"] for n in servers]
    left.bar(servers, counts, label="completed")
    left.bar(servers, errors, bottom=counts, color="red", label="errors")
    left.set_title("requests answered")
    left.tick_params(axis="x", rotation=45, labelsize=7)
    left.legend(fontsize=7)
    p95 = [result["summary"]["servers"][n]["ttft"]["p95"] or 0 for n in servers]
    p50 = [result["summary"]["servers"][n]["ttft"]["p50"] or 0 for n in servers]
    right.bar(servers, p95, color="orange", label="TTFT p95")
    right.bar(servers, p50, color="tab:blue", label="TTFT p50")
    right.set_title("TTFT (s)")
    right.tick_params(axis="x", rotation=45, labelsize=7)
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def write_plots(result: dict, directory: str) -> list[str]:
    """The three PNGs of a run, written into directory; their file names."""
    if plt is None:
        raise RuntimeError("the bench's plots need the Python package matplotlib on the controller: "
                           "pip install -r requirements.txt")
    out = []
    for name, draw in (("ttft.png", ttft_distribution), ("latency.png", latency_over_time), ("servers.png", per_server_load)):
        draw(result, os.path.join(directory, name))
        out.append(name)
    return out


def tune_plot(runs: list[dict], group: str, knob: str, path: str) -> None:
    """tune.png: per value of the knob, TTFT p50/p95 and tokens/s per request measured, the plan's as markers."""
    def rows(run: dict) -> dict:
        return {r["figure"]: r for r in (run.get("comparison") or {}).get(group, [])}

    labels = [str(run["value"]) for run in runs]
    xs = list(range(len(runs)))
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.4))
    for offset, figure, colour in ((-0.2, "TTFT p50 (s)", "tab:blue"), (0.2, "TTFT p95 (s)", "orange")):
        measured = [rows(run).get(figure, {}).get("measured") or 0 for run in runs]
        planned = [rows(run).get(figure, {}).get("predicted") for run in runs]
        left.bar([x + offset for x in xs], measured, width=0.4, color=colour, label=f"{figure} bench")
        left.plot([x + offset for x, p in zip(xs, planned, strict=True) if p not in (None, float("inf"))],
                  [p for p in planned if p not in (None, float("inf"))], "k_", markersize=18, mew=2)
    left.plot([], [], "k_", markersize=10, mew=2, label="plan")
    left.set_title("TTFT (s)")
    measured = [rows(run).get("tokens/s per request", {}).get("measured") or 0 for run in runs]
    planned = [rows(run).get("tokens/s per request", {}).get("predicted") for run in runs]
    right.bar(xs, measured, width=0.5, color="tab:green", label="bench")
    right.plot([x for x, p in zip(xs, planned, strict=True) if p is not None], [p for p in planned if p is not None],
               "k_", markersize=24, mew=2, label="plan")
    right.set_title("tokens/s per request")
    for ax in (left, right):
        ax.set_xticks(xs, [f"{knob}={v}" for v in labels])
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7)
    fig.suptitle(f"tune: {knob} ({group})")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
