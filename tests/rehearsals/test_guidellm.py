"""GuideLLM beside llamafleet's bench (issue 18, item 4): an outside yardstick for the bench's figures.
Opt-in (`scripts/test.sh --rehearsals`); GuideLLM is installed by scripts/guidellm.sh in a venv of its own.

Both tools load the same simulated fleet, the rehearsal's gateway (LiteLLM on :4500) in front of the stheno
pool (4 simulated P106-100 servers x 3 slots). They send at the same rate, 30 chat requests a minute with
constant arrivals, and 256-token replies. The prompts have the same length as the servers count it: the
bench's prompts are counted first, then GuideLLM's synthetic prompts are sized to the same count by a short
calibration run. No prompt shares a prefix with another: the bench gets a user and a character card per
request, and GuideLLM's synthetic prompts are random. The figures compared are TTFT p50 and p95 and the
time per output token, (latency - TTFT) / (tokens - 1), which GuideLLM calls ITL. Each figure is taken over
each tool's own per-request values with one percentile rule. The servers sleep what the plan says the cards
take, so this holds the bench's measuring to GuideLLM's, not the cards' speed.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess

import pytest

from ansible_collections.llamafleet.fleet.plugins.plugin_utils._bench_stats import percentile, tpot
from tests.conftest import ROOT
from tests.support.rehearsal_fleet import GATEWAY_KEY, GATEWAY_PORT, bench

POOL = "stheno"
RATE_PER_MIN, SECONDS, PROMPT_TOKENS, REPLY_TOKENS = 30, 120, 500, 256
GUIDELLM = os.path.join(ROOT, ".cache", "guidellm", "venv", "bin", "guidellm")
TOKENIZER = os.path.join(ROOT, ".cache", "guidellm", "tokenizer")


@pytest.fixture(scope="module")
def guidellm_installed():
    subprocess.run([os.path.join(ROOT, "scripts", "guidellm.sh")], check=True, cwd=ROOT)


def guidellm(out_dir, prompt_tokens: int, seconds: int) -> list[dict]:
    """One GuideLLM run at the rate against the pool: its successful requests (its JSON report's records)."""
    scenario = {"metadata": {"name": "llamafleet-yardstick"}, "spec": {
        "backend": {"kind": "openai_http", "target": f"http://127.0.0.1:{GATEWAY_PORT}", "model": POOL,
                    "api_key": GATEWAY_KEY, "request_format": "/v1/chat/completions"},
        "profile": {"kind": "constant", "rate": RATE_PER_MIN / 60},
        "tokenizer": {"kind": "huggingface_auto", "model": TOKENIZER},
        "data": [{"kind": "synthetic_text", "prompt_tokens": prompt_tokens, "output_tokens": REPLY_TOKENS}],
        "constraints": [{"kind": "max_duration", "seconds": seconds}],
        "outputs": [{"kind": "json", "path": str(out_dir / "guidellm.json")}]}}
    (out_dir / "scenario.json").write_text(json.dumps(scenario))
    result = subprocess.run([GUIDELLM, "run", "-c", str(out_dir / "scenario.json"), "--disable-console-interactive"],
                            capture_output=True, text=True, timeout=seconds + 600, cwd=str(out_dir))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out_dir / "guidellm.json").read_text())["benchmarks"][0]["requests"]
    assert not report["errored"], report["errored"][:2]
    return report["successful"]


def p50_p95(values: list[float]) -> tuple[float, float]:
    return percentile(values, 50), percentile(values, 95)


def test_guidellm_and_the_bench_agree_on_ttft_and_time_per_output_token(guidellm_installed, rehearsal, tmp_path_factory):
    run = bench(str(tmp_path_factory.mktemp("bench")), {
        "llamafleet_bench_models": [POOL], "llamafleet_bench_rate_per_min": RATE_PER_MIN,
        "llamafleet_bench_arrivals": "constant", "llamafleet_bench_duration_s": SECONDS,
        "llamafleet_bench_prompt_tokens": PROMPT_TOKENS, "llamafleet_bench_reply_tokens": REPLY_TOKENS,
        "llamafleet_bench_turns": 0, "llamafleet_bench_users": 1000, "llamafleet_bench_characters": 1000,
        "llamafleet_bench_embed_rate_per_min": 0, "llamafleet_bench_probe": False,
        "llamafleet_bench_warmup_requests": 0})
    ours = [r for r in run["requests"] if not r["warmup"] and r["kind"] == "chat"]
    assert ours and all(r["ok"] for r in ours), [r.get("error") for r in ours if not r["ok"]][:3]
    counted = statistics.median(r["prompt_tokens"] for r in ours)

    # GuideLLM's prompts sized by its tokenizer; the servers count them their own way: one short run finds the ratio
    trial = 300
    ratio = statistics.median(r["prompt_tokens"] for r in guidellm(tmp_path_factory.mktemp("calibrate"), trial, 20)) / trial
    theirs = guidellm(tmp_path_factory.mktemp("guidellm"), round(counted / ratio), SECONDS)

    figures = {
        "bench": (p50_p95([r["ttft"] for r in ours]), statistics.median(tpot(r) for r in ours),
                  statistics.median(r["prompt_tokens"] for r in ours), len(ours)),
        "guidellm": (p50_p95([r["time_to_first_token_ms"] / 1000 for r in theirs]),
                     statistics.median(r["inter_token_latency_ms"] / 1000 for r in theirs),
                     statistics.median(r["prompt_tokens"] for r in theirs), len(theirs)),
    }
    print(f"\nGuideLLM beside the bench (measured on simulated servers): pool {POOL}, {RATE_PER_MIN} chat requests/min "
          f"constant, {SECONDS} s each, {REPLY_TOKENS}-token replies, prompts that share no prefix")
    for tool, ((p50, p95), per_token, prompt, n) in figures.items():
        print(f"  {tool}: n={n}, prompt {prompt:.0f} tokens as the servers count them; TTFT p50 {p50:.3f} s, "
              f"p95 {p95:.3f} s; time per output token {1000 * per_token:.1f} ms")
    (b50, b95), b_tok, b_prompt, _ = figures["bench"]
    (g50, g95), g_tok, g_prompt, _ = figures["guidellm"]
    ratios = {"TTFT p50": g50 / b50, "TTFT p95": g95 / b95, "time per output token": g_tok / b_tok}
    print("  GuideLLM / bench: " + ", ".join(f"{name} {value:.3f}" for name, value in ratios.items()))
    # the same lengths, or nothing is compared
    assert abs(g_prompt / b_prompt - 1) <= 0.05, (g_prompt, b_prompt)
    assert {r["output_tokens"] for r in theirs} == {r["completion_tokens"] for r in ours} == {REPLY_TOKENS}
    assert all(abs(value - 1) <= 0.10 for value in ratios.values()), ratios
