# Copyright: llamafleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Bench statistics: the figures of a run's requests, the servers' own counters, and which server
answered. Pure Python: the client (_bench_client) records one dict per request; everything computed
from those records is here, unit-tested.

Metric definitions follow vLLM's benchmark_serving (and GuideLLM, which uses the same ones):
- TTFT: from the request's arrival (its scheduled send time in an open-loop run) to the first
  streamed chunk that carries content. Waiting for a slot is part of it, as a user sees it.
- ITL: the gaps between successive content chunks of a request, pooled over all requests.
- TPOT: (end-to-end latency - TTFT) / (output tokens - 1), per request with more than one token.
- E2E latency: arrival to the last byte.
- Request throughput: completed requests / window; output throughput: output tokens / window;
  the window runs from the first measured arrival to the last measured completion.
Percentiles interpolate linearly between order statistics (numpy's default, as vLLM uses).
"""
from __future__ import annotations

import math

from ansible_collections.llamafleet.fleet.plugins.module_utils.llamafleet_probe import parse_metrics as prometheus_samples
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._speed import binomial_pmf

PERCENTILES = (50, 95, 99)


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile with linear interpolation between order statistics (numpy's default)."""
    if not values:
        return None
    data = sorted(values)
    rank = (len(data) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (rank - low)


def quantile_interval(values: list[float], q: float, confidence: float = 0.95) -> list[float | None]:
    """A distribution-free confidence interval of the q-th quantile (q in 0..1): the order statistics
    x_(l) and x_(u) with P(l <= B < u) >= confidence, B ~ Binomial(n, q) the count of values below the
    true quantile. An end that n values cannot bound is None (p95 of 28 values has no upper bound)."""
    data = sorted(values)
    n = len(data)
    below, cdf = 0.0, []  # cdf[k] = P(B <= k)
    for k in range(n + 1):
        below += binomial_pmf(n, k, q)
        cdf.append(below)
    tail = (1.0 - confidence) / 2.0
    lows = [k for k in range(1, n + 1) if cdf[k - 1] <= tail]
    highs = [k for k in range(1, n + 1) if cdf[k - 1] >= 1.0 - tail]
    return [data[lows[-1] - 1] if lows else None, data[highs[0] - 1] if highs else None]


def tpot(record: dict) -> float | None:
    """Time per output token after the first, as vLLM defines it."""
    n = record.get("completion_tokens") or 0
    if not record.get("ok") or n < 2 or record.get("ttft") is None:
        return None
    return (record["latency"] - record["ttft"]) / (n - 1)


def _dist(values: list[float]) -> dict:
    out = {"mean": (sum(values) / len(values)) if values else None}
    for q in PERCENTILES:
        out[f"p{q}"] = percentile(values, q)
    return out


def summarize(records: list[dict], window_s: float | None = None, arrival_span_s: float | None = None) -> dict:
    """Figures of a set of measured requests (one group, one server or all).

    window_s: first arrival to last completion (throughputs); arrival_span_s: the time over which
    requests arrived (the offered rate), the window when not given.
    """
    done = [r for r in records if r.get("ok")]
    errors = [r for r in records if not r.get("ok")]
    if window_s is None:
        starts = [r["arrival"] for r in records]
        ends = [r["arrival"] + r["latency"] for r in records if r.get("latency") is not None]
        window_s = (max(ends) - min(starts)) if starts and ends else 0.0
    chats = [r for r in done if r["kind"] == "chat"]
    out_tokens = sum(r.get("completion_tokens") or 0 for r in chats)
    in_tokens = sum(r.get("prompt_tokens") or 0 for r in done)
    itl = [gap for r in chats for gap in r.get("itl", [])]
    tpots = [t for t in (tpot(r) for r in chats) if t is not None]
    busy = [(r["server_prompt_ms"] + r["server_predicted_ms"]) / 1000.0 for r in chats
            if r.get("server_prompt_ms") is not None and r.get("server_predicted_ms") is not None]
    per = max(window_s, 1e-9)
    return {
        "requests": len(records), "completed": len(done), "errors": len(errors), "window_s": window_s,
        "request_throughput": len(done) / per,
        "arrival_rate_per_min": 60.0 * len(records) / max(arrival_span_s or window_s, 1e-9),
        "output_throughput": out_tokens / per, "total_token_throughput": (out_tokens + in_tokens) / per,
        "prompt_tokens": in_tokens, "completion_tokens": out_tokens,
        "prompt_tokens_mean": (sum(r.get("prompt_tokens") or 0 for r in chats) / len(chats)) if chats else None,
        "completion_tokens_mean": (out_tokens / len(chats)) if chats else None,
        "ttft": _dist([r["ttft"] for r in chats if r.get("ttft") is not None]),
        "ttft_interval": {f"p{q}": quantile_interval([r["ttft"] for r in chats if r.get("ttft") is not None], q / 100)
                          for q in (50, 95)},
        "itl": _dist(itl),
        "tpot": _dist(tpots),
        "e2el": _dist([r["latency"] for r in done]),
        "decode_tps": _dist([1.0 / t for t in tpots if t > 0]),
        "slot_busy_s": _dist(busy), "slot_busy_total_s": sum(busy),
    }


# A chunk gap under BURST_GAP_S is two tokens delivered together; more than BURST_SHARE of them is a burst.
BURST_GAP_S = 0.002
BURST_SHARE = 0.25


def parse_metrics(text: str) -> dict[str, float]:
    """The llamacpp: samples of a Prometheus text page, without the prefix (labelled series are skipped)."""
    return {name.removeprefix("llamacpp:"): value for name, value in prometheus_samples(text).items()
            if name.startswith("llamacpp:")}


def metrics_delta(before: dict[str, float], after: dict[str, float]) -> dict:
    """What a server did between two scrapes: counters' differences and the derived rates."""
    def d(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    decodes = d("n_decode_total")
    busy = (after.get("n_busy_slots_per_decode", 0.0) * after.get("n_decode_total", 0.0)
            - before.get("n_busy_slots_per_decode", 0.0) * before.get("n_decode_total", 0.0))
    prompt_s, predicted_s = d("prompt_seconds_total"), d("tokens_predicted_seconds_total")
    return {
        "prompt_tokens": d("prompt_tokens_total"), "prompt_tokens_cached": d("prompt_tokens_cached_total"),
        "tokens_predicted": d("tokens_predicted_total"), "prompt_seconds": prompt_s, "predicted_seconds": predicted_s,
        "decode_calls": decodes, "busy_slots_per_decode": busy / decodes if decodes > 0 else None,
        "prompt_tps": d("prompt_tokens_total") / prompt_s if prompt_s > 0 else None,
        "decode_tps_per_stream": d("tokens_predicted_total") / predicted_s if predicted_s > 0 else None,
    }


def stream_warnings(records: list[dict], server_side: dict) -> list[str]:
    """Servers whose streamed tokens reached the client in bursts: many chunk gaps too short to be a decode step.

    A server that decodes one token every `step` seconds per stream cannot send two tokens of a stream
    2 ms apart, so a quarter of such gaps means something between it and the client (a proxy coalescing
    small writes) delivered several at once: the client's ITL then measures that path, not the server.
    """
    out = []
    gaps_by: dict[str, list[float]] = {}
    for r in records:
        if r.get("ok") and r.get("kind") == "chat" and r.get("server"):
            gaps_by.setdefault(r["server"], []).extend(r.get("itl", []))
    for name, gaps in sorted(gaps_by.items()):
        tps = (server_side.get(name) or {}).get("decode_tps_per_stream")
        if len(gaps) < 20 or not tps or 1.0 / tps < 2 * BURST_GAP_S:
            continue
        short = sum(g < BURST_GAP_S for g in gaps) / len(gaps)
        if short > BURST_SHARE:
            out.append(f"{name}: {short:.0%} of the gaps between streamed chunks were under {BURST_GAP_S * 1000:.0f} ms, "
                       f"but the server decoded a token every {1000.0 / tps:.0f} ms per stream: its stream reached the "
                       f"client in bursts (a proxy coalescing small writes; the pools set HAProxy's option http-no-delay). "
                       f"Its ITL figures measure that path, not the server.")
    return out


def error_counts(records: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in records:
        if not r.get("ok"):
            key = str(r.get("error") or "unknown")[:200]
            out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def server_from_headers(headers: dict, servers: list[dict]) -> str | None:
    """Which fleet server answered a gateway request.

    The pool (HAProxy) names it in X-Llamafleet-Server (its server name, `<host>.<server>` or
    `<server>`); LiteLLM names the upstream it called in x-litellm-model-api-base (a URL).
    """
    lower = {k.lower(): v for k, v in headers.items()}
    # LiteLLM passes an upstream's response headers on with the prefix llm_provider-
    name = lower.get("x-llamafleet-server") or lower.get("llm_provider-x-llamafleet-server")
    if name:
        for s in servers:
            if name in (s["name"], f"{s.get('host')}.{s['name']}"):
                return s["name"]
    base = lower.get("x-litellm-model-api-base")
    if base:
        base = base.rstrip("/").removesuffix("/v1")
        for s in servers:
            if s["url"].rstrip("/") == base:
                return s["name"]
    return None
