"""Rehearsal a (issue 18, docs/sim.md): the first user's host as the seed ran it, beside llamafleet's plan, on
simulated servers. Opt-in (`scripts/test.sh --rehearsals`).

The seed (../shared/facts.md): one chat server per card at Q6_K with one slot (`-np 1`), ctx 8192, q8_0 K/V,
`-b 128 -ub 64`, `--cache-reuse 256`, behind LiteLLM's default routing straight to the servers, at 30
requests a minute of ~500-token prompts and 512-token replies. The plan refuses it as written: Q6_K does not
fit a P106-100 (does-not-fit) and llama-server's default 8 GiB host prompt cache does not fit its 1536m
container (prompt-cache-exceeds-container); with those two changed, one slot a server cannot carry the declared
load (capacity-exceeded, an error: the queue grows without bound). What runs here as the seed is therefore the
seed with the first two changed and nothing else (Q4_K_M, `cache_ram: 768`, one slot, no pools), deployed with
no declared workload, as the seed had none; the bench sends each request straight to a server picked at random,
as LiteLLM's default `simple-shuffle` does when no rpm or tpm is set.
llamafleet's side is inventory/rehearsal as declared: the same model, 3 slots a server, conversation-affine
pools behind the gateway.

Both take the same multi-turn companion chat: 30 requests a minute over both models, 10 conversations of 4
turns side by side, ~500-token first prompts and 512-token replies, 120 s of arrivals, one client timeout
(120 s) for both, never retried. The servers sleep what the plan says the cards take.
"""
from __future__ import annotations

import copy
import json
import os

import yaml

from tests.support.rehearsal_fleet import bench, bring_up, sim_containers

RATE_PER_MIN = 30
LOAD = {"llamafleet_bench_rate_per_min": RATE_PER_MIN, "llamafleet_bench_duration_s": 120,
        "llamafleet_bench_prompt_tokens": 500, "llamafleet_bench_reply_tokens": 512, "llamafleet_bench_turns": 4,
        "llamafleet_bench_users": 10, "llamafleet_bench_seed": 300, "llamafleet_bench_timeout_s": 120,
        "llamafleet_bench_embed_rate_per_min": 0, "llamafleet_bench_probe": False,
        "llamafleet_bench_warmup_requests": 0}
SEED_ARGS = {"ctx_size": 8192, "parallel": 1, "batch_size": 128, "ubatch_size": 64, "flash_attn": "on",
             "cache_type_k": "q8_0", "cache_type_v": "q8_0", "n_gpu_layers": 99, "cache_reuse": 256,
             "cache_ram": 768, "metrics": True}
SIDES = {
    "seed": {"llamafleet_bench_direct": True, "llamafleet_bench_routing": "random",
             "llamafleet_bench_models": ["stheno-q4km", "lumimaid-q4km"]},
    "llamafleet": {"llamafleet_bench_conversation_header": True, "llamafleet_bench_models": ["stheno", "lumimaid"]},
}


def seed_layout() -> dict:
    """inventory/rehearsal's server layout with the seed's chat arguments (one slot)."""
    path = os.path.join(os.path.dirname(__file__), "..", "..", "inventory", "rehearsal", "group_vars", "llamafleet",
                        "servers.yml")
    with open(path, encoding="utf-8") as handle:
        layout = copy.deepcopy(yaml.safe_load(handle)["llamafleet_server_layout"])
    chat = next(entry for entry in layout["per_gpu"] if entry["role"] == "chat")
    chat["args"] = dict(SEED_ARGS)
    return layout


def figures(run: dict) -> dict:
    """The run's chat figures, as the bench summarised them (the load has no embeddings)."""
    every = run["summary"]["all"]
    return {"requests": every["requests"], "failed": every["errors"], "p50": every["ttft"]["p50"],
            "p95": every["ttft"]["p95"], "tps": every["decode_tps"]["mean"]}


def test_a_the_seed_beside_llamafleets_plan_at_the_first_users_load(rehearsal, tmp_path_factory):
    ours = bench(str(tmp_path_factory.mktemp("first-user-llamafleet")), dict(SIDES["llamafleet"], **LOAD))
    # the seed: every server recreated at once with one slot (its clients are not under load here)
    as_seed = {"llamafleet_server_layout": seed_layout(), "llamafleet_workload": {}}
    bring_up(str(tmp_path_factory.mktemp("first-user-seed-plan")), as_seed)
    try:
        chat = sim_containers()["chat-0"]["Config"]["Cmd"]
        assert chat[chat.index("--parallel") + 1] == "1", chat
        # the bench plans the seed too, so the plan beside it is the seed's (one slot a server)
        seed = bench(str(tmp_path_factory.mktemp("first-user-seed")), dict(SIDES["seed"], **LOAD, **as_seed))
    finally:
        bring_up(str(tmp_path_factory.mktemp("first-user-back")))   # the rehearsal as declared again
    s, o = figures(seed), figures(ours)
    lines = [f"rehearsal a (measured on simulated servers): the first user's host at {RATE_PER_MIN} chat requests/min "
             "(10 conversations x 4 turns, ~500-token first prompts, 512-token replies, 120 s)"]
    for name, f in (("seed (1 slot, random)", s), ("llamafleet (3 slots, affine pools)", o)):
        lines.append(f"  {name}: {f['requests']} requests, {f['failed']} failed; TTFT p50 "
                     f"{f['p50'] or float('nan'):.2f} s, p95 {f['p95'] or float('nan'):.2f} s; "
                     f"{f['tps'] or float('nan'):.1f} tokens/s per request")
    if s["p50"] and o["p50"]:
        lines.append(f"  llamafleet / seed: TTFT p50 {o['p50'] / s['p50']:.2f}, p95 {o['p95'] / s['p95']:.2f}, "
                     f"tokens/s {o['tps'] / s['tps']:.2f}")
    for side, run in (("seed", seed), ("llamafleet", ours)):
        for group, rows in run["comparison"].items():
            lines.append(f"  plan beside the {side} ({group}): " + "; ".join(
                f"{row['figure']} {row['predicted']:.2f} vs {row['measured']:.2f}" for row in rows
                if row["predicted"] is not None and row["measured"] is not None)
                + ("" if run["predictions"][group].get("stable", True) else " (the plan: the queue grows without bound)"))
    print("\n" + "\n".join(lines) + "\n" + json.dumps({"seed": s, "llamafleet": o}))
    assert o["failed"] == 0, o
    assert o["requests"] == s["requests"] >= 55   # both sides were offered the same load
