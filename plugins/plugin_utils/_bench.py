# Copyright: llamafleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Bench report: results.json of a run (settings, every request, the figures, the servers' counters),
the plan's figures at the load the run measured beside them, and report.md."""
from __future__ import annotations

import math

from ansible_collections.llamafleet.fleet.plugins.plugin_utils._bench_settings import BenchConfig
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._bench_stats import (
    error_counts,
    metrics_delta,
    stream_warnings,
    summarize,
)


# -- the plan beside the bench -------------------------------------------------------------------------
def plan_speeds(plan_result: dict, group: dict, prompt_tokens: float, alone: dict | None = None) -> list:
    """The plan's per-server speeds of a group's servers, its TTFT rescaled to this prompt length.

    plan.json's speeds were computed for the inventory's workload; a server's prefill rate and its
    decode speed do not depend on the load, so TTFT alone = prompt / prefill + one decode step.
    """
    from ansible_collections.llamafleet.fleet.plugins.plugin_utils._speed import Speed

    out = []
    by_name = {s["name"]: s for s in plan_result.get("servers", [])}
    for name in group["servers"]:
        sp = by_name[name]["speed"] if name in by_name else None
        if not sp:
            continue
        # measured alone: the plan's speeds scaled to them (the plan's ratio of batched to single
        # decode is kept: how slots share a step is part of the load model under test)
        seen = (alone or {}).get(name) or {}
        k_decode = seen["decode_tps"] / sp["decode_tps"] if seen.get("decode_tps") else 1.0
        prefill = seen.get("prefill_tps") or sp["prefill_tps"]
        decode = sp["decode_tps"] * k_decode
        ttft = prompt_tokens / prefill + 1.0 / decode
        out.append(Speed(decode, prefill, ttft, sp["batch_decode_tps"] * k_decode, int(sp["slots"])))
    return out


def predictions(plan_result: dict, group: dict, rate_per_min: float, prompt_tokens: float, reply_tokens: float,
                alone: dict | None = None, routing: str = "pool", mix: dict | None = None) -> dict | None:
    """The plan's figures for one chat group at the load the bench measured (same rate and lengths).

    alone: per server {prefill_tps, decode_tps} measured alone; when given, the plan's load model
    runs on those speeds instead of its roofline ones. routing: how the run reached the servers
    (random, pool or affine). mix: the run's own requests ({"requests": [MixRequest], "n_batch",
    "conversations"}), for conversations, whose prompts and cache hits differ turn by turn.
    """
    from ansible_collections.llamafleet.fleet.plugins.plugin_utils._speed import mix_workload, random_routing, workload

    speeds = plan_speeds(plan_result, group, prompt_tokens, alone)
    if not speeds or rate_per_min <= 0:
        return None
    if mix:
        result = mix_workload(group["model"], rate_per_min, reply_tokens, speeds, mix["requests"], routing,
                              mix["n_batch"], mix.get("conversations"))
    else:
        model = random_routing if routing == "random" else workload
        result = model(group["model"], rate_per_min, int(round(prompt_tokens)), int(round(reply_tokens)), speeds)
    out = result.to_dict()
    out["ttft_alone_s"] = sum(s.ttft_s for s in speeds) / len(speeds)
    out["routing"] = routing
    return out


def run_routing(cfg: BenchConfig, mode: str, pool: dict | None = None) -> str:
    """How a run reached its servers, as the load model names it: random (direct, any server), pool
    (the first free slot: the gateway's pools, or the bench's own pool routing) or affine (a gateway
    pool whose routing is affine, given each conversation's key). pool: the group's pool in the plan
    (plan.json's gateway.pools); pools are leastconn unless the inventory says affine."""
    if mode != "gateway":
        return "random" if cfg.routing == "random" else "pool"
    keyed = cfg.turns > 0 and cfg.conversation_header
    return "affine" if keyed and (pool or {}).get("routing") == "affine" else "pool"


def run_mix(plan_result: dict, group: dict, records: list[dict], conversations: int) -> dict:
    """A group's requests of a conversation run, as mix_workload reads them (all of them, warm-up
    included, count towards what the servers have seen; the measured ones are the mix).

    A turn's home tokens are its conversation's previous prompt: the bench sends stand-in replies
    (_bench_prompts), so the previous reply is not in a server's cache. A shared prefix (a character
    card) is warm on the server a request lands on if any of the m earlier requests with that card
    landed there: 1 - (1 - 1/N)^m, N the group's servers. The card's tokens are its words at the tokens
    per word the server counted over the whole prompt."""
    from ansible_collections.llamafleet.fleet.plugins.plugin_utils._server_args import DEFAULTS
    from ansible_collections.llamafleet.fleet.plugins.plugin_utils._speed import MixRequest

    n = max(len(group["servers"]), 1)
    previous: dict[str, float] = {}
    seen: dict[object, int] = {}
    requests = []
    for r in sorted(records, key=lambda r: r["arrival"]):
        m = seen.get(r.get("shared_prefix"), 0)
        seen[r.get("shared_prefix")] = m + 1
        prompt = float(r.get("prompt_tokens") or 0)
        home = previous.get(r.get("conversation"), 0.0)
        if r.get("conversation") and prompt:
            previous[r["conversation"]] = prompt
        if r["warmup"] or not r["ok"] or not prompt:
            continue
        # the card's tokens at the request's own tokens per word (what the server counted over its words)
        shared = float(r.get("shared_prefix_words") or 0) * prompt / max(float(r.get("prompt_words") or 0), 1.0)
        requests.append(MixRequest(prompt, home, min(shared, prompt), 1.0 - (1.0 - 1.0 / n) ** m))
    by_name = {s["name"]: s for servers in (plan_result.get("fleet") or {}).values() for s in servers.get("servers", [])}
    batches = [int((by_name.get(name, {}).get("args") or {}).get("batch_size") or DEFAULTS["batch_size"])
               for name in group["servers"]]
    return {"requests": requests, "n_batch": min(batches), "conversations": conversations}


def comparison(predicted: dict | None, measured: dict, slots: int) -> list[dict]:
    """Rows of plan vs bench for one group: figure, predicted, measured, measured/predicted."""
    if not predicted:
        return []
    # as the plan defines it: arrival rate x mean slot hold time / slots
    busy = measured["slot_busy_s"]["mean"]
    util = measured["arrival_rate_per_min"] / 60.0 * busy / slots if slots and busy is not None else None
    interval = measured.get("ttft_interval") or {}
    rows = [
        ("TTFT p50 (s)", predicted.get("ttft_p50_s"), measured["ttft"]["p50"], interval.get("p50")),
        ("TTFT p95 (s)", predicted.get("ttft_p95_s"), measured["ttft"]["p95"], interval.get("p95")),
        ("tokens/s per request", predicted.get("tokens_per_s_per_request"), measured["decode_tps"]["mean"]),
        ("slot busy per request (s)", predicted.get("service_s"), measured["slot_busy_s"]["mean"]),
        ("utilisation", predicted.get("utilisation"), util),
    ]
    out = []
    for name, p, m, *ci in rows:
        if p is None and predicted.get("stable") is False:
            p = math.inf  # the plan says the queue grows without bound at this load
        ratio = (m / p) if (p and m is not None and 0 < p < math.inf) else None
        row = {"figure": name, "predicted": p, "measured": m, "ratio": ratio,
               "off": ratio is not None and abs(ratio - 1.0) > 0.25}
        if ci and ci[0]:
            # the measured quantile's 95% interval (quantile_interval): a short run's p95 is uncertain
            low, high = ci[0]
            row["interval"] = ci[0]
            row["within_interval"] = p is not None and (low is None or p >= low) and (high is None or p <= high)
        out.append(row)
    return out


# -- report --------------------------------------------------------------------------------------------
def _f(value, digits: int = 2, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return "unbounded"
    return f"{value:,.{digits}f}{unit}"


def _pct(value) -> str:
    return "-" if value is None else f"{value:.0%}"


def figures_row(name: str, s: dict) -> list[str]:
    return [name, str(s["requests"]), str(s["errors"]), _f(s["request_throughput"] * 60, 1),
            _f(s["output_throughput"], 1), _f(s["ttft"]["p50"]), _f(s["ttft"]["p95"]), _f(s["ttft"]["p99"]),
            _f(s["itl"]["p50"] and s["itl"]["p50"] * 1000, 0), _f(s["itl"]["p95"] and s["itl"]["p95"] * 1000, 0),
            _f(s["itl"]["p99"] and s["itl"]["p99"] * 1000, 0), _f(s["tpot"]["p50"] and s["tpot"]["p50"] * 1000, 0),
            _f(s["decode_tps"]["p50"], 1), _f(s["e2el"]["p50"]), _f(s["e2el"]["p95"])]


FIGURE_HEADERS = ["", "requests", "errors", "req/min", "output tok/s", "TTFT p50 s", "TTFT p95 s", "TTFT p99 s",
                  "ITL p50 ms", "ITL p95 ms", "ITL p99 ms", "TPOT p50 ms", "tok/s per request p50", "E2E p50 s", "E2E p95 s"]


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)] + ["| " + " | ".join(r) + " |" for r in rows]


def simulated_note(hosts: list[str]) -> str:
    """The sentence every report measured on simulated servers starts with (bench and tune)."""
    return (f"**Measured on simulated servers** (llamafleet_backend: sim on {', '.join(hosts)}): "
            "they sleep what the plan predicts for the declared cards, so these figures measure the fleet "
            "between the client and the servers (gateway, pools, routing, queueing, prompt cache), not the "
            "cards. See docs/sim.md.")


def render_markdown(result: dict) -> str:
    """report.md of one run (result: what bench writes to results.json, less the per-request list)."""
    cfg, load = result["config"], result["load"]
    lines = ["# llamafleet bench", "",
             f"Started {result['started']} UTC against {result['target']} ({result['mode']} mode). "
             + (f"Open loop: {cfg['arrivals']} arrivals at {cfg['rate_per_min']:g} chat requests/min"
                if cfg["mode"] == "rate" else f"Closed loop: {cfg['concurrency']} concurrent chat requests")
             + f", {cfg['embed_rate_per_min']:g} embedding requests/min; prompts ~{cfg['prompt_tokens']} tokens "
               f"(measured mean {_f(load['prompt_tokens_mean'], 0)}), replies {'exactly' if cfg['ignore_eos'] else 'up to'} "
               f"{cfg['reply_tokens']} tokens, embedding inputs ~{cfg['embed_tokens']} tokens; "
             + f"{load['warmup']} warm-up request(s) excluded; measured window {_f(load['window_s'], 1)} s."
             + (f" Controller load average {load['load_average'][0]} at the start, {load['load_average'][1]} at the end "
                f"(on a machine that also runs the servers, anything else running slows them)." if load.get("load_average") else ""),
             ""]
    if result.get("simulated_hosts"):
        lines += [simulated_note(result["simulated_hosts"]), ""]
    if result.get("warnings"):
        lines += ["## Warnings", ""] + [f"- {w}" for w in result["warnings"]] + [""]
    lines += ["## Figures", "", "Per model group and per server (the server that answered, see docs/bench.md). "
              "TTFT counts from the request's arrival, so time waiting for a slot is in it.", ""]
    rows = [figures_row("**all**", result["summary"]["all"])]
    rows += [figures_row(f"group {name}", s) for name, s in result["summary"]["groups"].items()]
    rows += [figures_row(f"server {name}", s) for name, s in result["summary"]["servers"].items()]
    lines += _table(FIGURE_HEADERS, rows)

    lines += ["", "## Server-side figures (/metrics, same window)", "",
              "Counters of each server's `/metrics` (`llamacpp:`), scraped before the measured requests and after "
              "the last one finished, beside what the client counted for the requests that server answered.", ""]
    srows = []
    for name, side in result["server_side"].items():
        client = result["summary"]["servers"].get(name)
        if side.get("error"):
            srows.append([name, side["error"], "-", "-", "-", "-", "-", "-", "-"])
            continue
        srows.append([name, _f(side["prompt_tokens"] + side["prompt_tokens_cached"], 0),
                      _f(client["prompt_tokens"], 0) if client else "0",
                      _f(side["prompt_tokens_cached"], 0), _f(side["tokens_predicted"], 0),
                      _f(client["completion_tokens"], 0) if client else "0",
                      _f(side["prompt_tps"], 1), _f(side["decode_tps_per_stream"], 1), _f(side["busy_slots_per_decode"], 2)])
    lines += _table(["server", "prompt tokens (server: processed + cached)", "prompt tokens (client)", "of them cached",
                     "tokens predicted (server)", "completion tokens (client)", "prompt tok/s", "decode tok/s per stream",
                     "busy slots per decode"], srows)
    sides = [side for side in result["server_side"].values() if not side.get("error")]
    answered = result["summary"]["all"].get("completed") or 0
    if sides and answered:
        prefilled = sum(side["prompt_tokens"] for side in sides)
        cached = sum(side["prompt_tokens_cached"] for side in sides)
        lines += ["", f"Prompt tokens per answered request: {prefilled / answered:.0f} prefilled, {cached / answered:.0f} "
                  f"reused from the prompt cache ({cached / max(prefilled + cached, 1):.0%} of all prompt tokens)."]

    if result.get("alone"):
        lines += ["", "Each chat server alone (one request, no prompt cache, before the measured phase; llama-server's "
                  "timings) beside the plan's roofline figures:", ""]
        plan_by = {s["name"]: s["speed"] for s in (result.get("plan_servers") or [])}
        arows = []
        for name, a in result["alone"].items():
            sp = plan_by.get(name) or {}
            arows.append([name, _f(a.get("prefill_tps"), 1), _f(sp.get("prefill_tps"), 1), _f(a.get("decode_tps"), 1),
                          _f(sp.get("decode_tps"), 1)] if "error" not in a else [name, a["error"], "-", "-", "-"])
        lines += _table(["server", "prompt tok/s alone", "plan", "decode tok/s alone", "plan"], arows)
    lines += ["", "## The plan beside the bench", "",
              "The plan's model (docs/plan.md) evaluated at the load this run measured: its arrival rate and "
              "prompt and reply lengths (with conversations, each request's turn and shared prefix), and its routing. "
              "Ratio = measured / predicted; **bold** when off by more than 25%. The 95% interval is the measured "
              "quantile's, from its order statistics (open where the run has too few requests to bound it).", ""]
    crow = []
    for name, rows_ in result["comparison"].items():
        for r in rows_:
            ratio = _f(r["ratio"], 2)
            interval = "-" if "interval" not in r else \
                "{} to {}".format(*(_f(v, 2) if v is not None else "open" for v in r["interval"]))
            crow.append([name, r["figure"], _f(r["predicted"], 2), _f(r["measured"], 2), interval,
                         f"**{ratio}**" if r["off"] else ratio])
    lines += (_table(["group", "figure", "plan", "bench", "bench 95% interval", "ratio"], crow) if crow
              else ["No chat group has a plan prediction."])

    if result.get("errors"):
        lines += ["", "## Errors", ""] + [f"- {count} x {message}" for message, count in result["errors"].items()]
    if result.get("plots"):
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in result["plots"]]
    lines += ["", "Every request is in `results.json` (times in seconds from the start of the run)."]
    return "\n".join(lines) + "\n"


def assemble(cfg: BenchConfig, target: str, mode: str, started: str, group_list: list[dict], servers: list[dict],
             run: dict, plan_result: dict | None) -> dict:
    """results.json of one run: settings, every request, the figures, the servers' counters, the plan."""
    records = run["records"]
    measured = [r for r in records if not r["warmup"]]
    start, end = run["window"]
    window = end - start
    by_group = {g["name"]: [r for r in measured if r["group"] == g["name"]] for g in group_list}
    by_server: dict[str, list[dict]] = {}
    for r in measured:
        by_server.setdefault(r["server"] or "(unknown)", []).append(r)
    span = run.get("arrival_span_s")
    summary = {"all": summarize(measured, window, span),
               "groups": {name: summarize(rs, window, span) for name, rs in by_group.items()},
               "servers": {name: summarize(rs, window, span) for name, rs in sorted(by_server.items())}}
    server_side = {}
    for s in servers:
        before, after = run["metrics_before"].get(s["name"], {}), run["metrics_after"].get(s["name"], {})
        if "error" in before or "error" in after:
            server_side[s["name"]] = {"error": before.get("error") or after.get("error")}
        else:
            server_side[s["name"]] = metrics_delta(before, after)
    slots = {s["name"]: int(s.get("slots") or 1) for s in servers}
    predicted, compared = {}, {}
    for g in group_list:
        s = summary["groups"][g["name"]]
        if g["role"] != "chat" or not plan_result or not s["completed"]:
            continue
        load = (s["arrival_rate_per_min"], s["prompt_tokens_mean"] or cfg.prompt_tokens, s["completion_tokens_mean"] or cfg.reply_tokens)
        mix = run_mix(plan_result, g, [r for r in records if r["group"] == g["name"]], cfg.users) if cfg.turns > 0 else None
        pool = next((p for p in ((plan_result.get("gateway") or {}).get("pools") or []) if p.get("alias") == g["name"]), None)
        how = {"routing": run_routing(cfg, mode, pool), "mix": mix if mix and mix["requests"] else None}
        predicted[g["name"]] = predictions(plan_result, g, *load, **how)
        n_slots = sum(slots.get(n, 1) for n in g["servers"])
        compared[g["name"]] = comparison(predicted[g["name"]], s, n_slots)
        alone = {n: v for n, v in (run.get("alone") or {}).items() if "error" not in v}
        if alone:
            predicted[g["name"] + " (speeds measured alone)"] = p_alone = predictions(plan_result, g, *load, alone=alone, **how)
            compared[g["name"] + " (speeds measured alone)"] = comparison(p_alone, s, n_slots)
    prompt_means = [r.get("prompt_tokens") for r in measured if r["kind"] == "chat" and r.get("prompt_tokens")]
    config_out = dict(cfg.__dict__, mode=cfg.mode)
    return {
        "started": started, "target": target, "mode": mode, "config": config_out,
        "load": {"warmup": sum(r["warmup"] for r in records), "window_s": window, "measured": len(measured),
                 "prompt_tokens_mean": sum(prompt_means) / len(prompt_means) if prompt_means else None,
                 "tokens_per_word": run.get("tokens_per_word"), "arrival_span_s": span,
                 "load_average": run.get("load_average")},
        "groups": group_list, "servers": servers,
        # hosts whose servers are simulated (llamafleet_backend: sim): every figure of the report says so
        "simulated_hosts": sorted({sv["host"] for sv in servers if sv.get("backend") == "sim"}),
        "plan_servers": [{"name": p["name"], "speed": p["speed"]} for p in (plan_result or {}).get("servers", [])],
        "summary": summary, "server_side": server_side,
        "predictions": predicted, "comparison": compared, "alone": run.get("alone") or {}, "errors": error_counts(measured),
        "warnings": stream_warnings(measured, server_side), "requests": records,
    }
