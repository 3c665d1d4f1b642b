"""Rehearsal b and c (issue 18, docs/sim.md): routing on the simulated first user's host, and the plan
beside it. Opt-in (`scripts/test.sh --rehearsals`): 13 min 30 s measured.

One chat pool of the rehearsal (stheno: 4 simulated P106-100 servers x 3 slots) under multi-turn
companion chat whose history grows (4 turns a conversation, 10 conversations side by side), at loads
aimed at 40% and 80% of its slots busy (with SERVICE_S; the first run measured a 15.7 and 17.8 s slot
time, i.e. 41% and 94%: docs/sim.md), routed three ways:
- random: the bench sends each request straight to one of the pool's servers at random (a server
  with no free slot queues it);
- slot-aware: through the gateway and its pool, no conversation key (leastconn over free slots);
- affine: through the gateway, with the conversation key (X-Llamafleet-Conversation): the pool sends
  a conversation back to the server that holds its history, while that server has a free slot.
The servers sleep what the plan says the cards take, so these figures are the routing's and the load
model's, not the cards'. Each run has its own seed: no run finds another's conversations cached.
"""
from __future__ import annotations

import statistics

from ansible_collections.llamafleet.fleet.plugins.plugin_utils._bench_stats import percentile
from tests.support.rehearsal_fleet import bench

POOL, MODEL = "stheno", "stheno-q4km"
SLOTS = 12                    # 4 servers x parallel 3 (inventory/rehearsal)
SERVICE_S = 17.0              # a request's slot time: 15.7 s at 41% and 17.8 s at 94% busy measured (docs/sim.md)
LOADS = {"40%": 0.4, "80%": 0.8}
MODES = {
    "random": {"llamafleet_bench_direct": True, "llamafleet_bench_routing": "random", "llamafleet_bench_models": [MODEL]},
    "slot-aware": {"llamafleet_bench_conversation_header": False, "llamafleet_bench_models": [POOL]},
    "affine": {"llamafleet_bench_conversation_header": True, "llamafleet_bench_models": [POOL]},
}


def _interval(row: dict) -> str:
    """The measured quantile's 95% interval, and whether the plan is inside it (comparison())."""
    if "interval" not in row:
        return ""
    low, high = ("open" if v is None else f"{v:.2f}" for v in row["interval"])
    return f" (measured 95%: {low} to {high}, plan {'inside' if row['within_interval'] else 'outside'})"


def later_turns(records: list[dict], first: int = 3) -> list[dict]:
    """The requests that are turn `first` or later of their conversation (by arrival within it)."""
    by_conversation: dict[str, list[dict]] = {}
    for r in sorted(records, key=lambda r: r["arrival"]):
        by_conversation.setdefault(r["conversation"], []).append(r)
    return [r for turns in by_conversation.values() for r in turns[first - 1:]]


def test_routing_at_40_and_80_percent_busy(rehearsal, tmp_path_factory):
    figures: dict[tuple[str, str], dict] = {}
    lines = [f"routing on the simulated first user's host (pool {POOL}: {SLOTS} slots; 4 turns x 10 conversations; "
             "prompts from ~500 tokens, replies 256; measured on simulated servers):"]
    seed = 100
    for load, busy in LOADS.items():
        rate = round(busy * SLOTS / SERVICE_S * 60)
        for mode, settings in MODES.items():
            seed += 1
            run = bench(str(tmp_path_factory.mktemp(f"routing-{mode}")), dict(settings, **{
                "llamafleet_bench_rate_per_min": rate, "llamafleet_bench_duration_s": 90,
                "llamafleet_bench_prompt_tokens": 500, "llamafleet_bench_reply_tokens": 256,
                "llamafleet_bench_turns": 4, "llamafleet_bench_users": 10, "llamafleet_bench_seed": seed,
                "llamafleet_bench_embed_rate_per_min": 0, "llamafleet_bench_probe": False,
                "llamafleet_bench_warmup_requests": 0}))
            measured = [r for r in run["requests"] if not r["warmup"] and r["kind"] == "chat"]
            failed = [r.get("error") for r in measured if not r["ok"]]
            assert not failed, (load, mode, failed[:3])
            late = [r["ttft"] for r in later_turns(measured)]
            every = [r["ttft"] for r in measured]
            cached = [r.get("cached_tokens") or 0 for r in measured]
            figures[(load, mode)] = f = {"p50": statistics.median(every), "p95": percentile(every, 95),
                                         "late_p50": statistics.median(late), "late_p95": percentile(late, 95)}
            lines.append(f"  {load} busy ({rate} req/min), {mode}: n={len(measured)}, 0 failed; TTFT p50 {f['p50']:.2f} s "
                         f"p95 {f['p95']:.2f} s; turns 3+ p50 {f['late_p50']:.2f} s p95 {f['late_p95']:.2f} s; "
                         f"prompt tokens from the cache {statistics.mean(cached):.0f}/request")
            for group, rows in run["comparison"].items():
                lines.append(f"    plan beside it ({group}, {run['predictions'][group]['routing']}): " + "; ".join(
                    f"{row['figure']} {row['predicted']:.2f} vs {row['measured']:.2f}" + _interval(row)
                    for row in rows if row["predicted"] is not None and row["measured"] is not None))
    for load in LOADS:
        r, s, a = (figures[(load, m)] for m in MODES)
        lines.append(f"  {load}: slot-aware/random TTFT p95 {s['p95'] / r['p95']:.2f} (goal at 80%: <= 0.5); "
                     f"affine/slot-aware turns 3+ p50 {a['late_p50'] / s['late_p50']:.2f} (goal <= 0.33), "
                     f"p95 {a['late_p95'] / s['late_p95']:.2f} (goal <= 1)")
    print("\n" + "\n".join(lines))
