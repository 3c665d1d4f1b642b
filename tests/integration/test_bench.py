"""The bench on the lab: a short real load, its report checked against the servers' own /metrics.

Real llama-servers (the lab fleet), the real playbook and client. Every reply is exactly
reply_tokens long (ignore_eos), so each server's `llamacpp:tokens_predicted_total` counter,
divided by that length, is a server-side count of the requests it served.
"""
from __future__ import annotations

import json
import os

import pytest

from tests.integration.conftest import containers, playbook

REPLY = 48
PROMPT = 200


@pytest.fixture(scope="module")
def bench_run(lab, tmp_path_factory) -> dict:  # lab: the session's lab fleet (conftest)
    report_dir = str(tmp_path_factory.mktemp("bench"))
    settings = {"llamafleet_bench_rate_per_min": 30, "llamafleet_bench_duration_s": 40,
                "llamafleet_bench_prompt_tokens": PROMPT, "llamafleet_bench_reply_tokens": REPLY,
                "llamafleet_bench_embed_rate_per_min": 20, "llamafleet_report_dir": report_dir,
                # per-server mode: each request's server is known, as the /metrics comparison needs
                "llamafleet_bench_direct": True}
    result = playbook("playbooks/bench.yml", "-e", json.dumps(settings))
    with open(os.path.join(report_dir, "results.json"), encoding="utf-8") as handle:
        out = json.load(handle)
    out["_dir"], out["_stdout"] = report_dir, result.stdout
    return out


def test_bench_report_agrees_with_the_servers_metrics(bench_run):
    summary, side = bench_run["summary"], bench_run["server_side"]
    everything = summary["all"]
    print(f"\nbench on the lab: {everything['completed']}/{everything['requests']} answered, {everything['errors']} errors, "
          f"TTFT p50 {everything['ttft']['p50']:.2f} s p95 {everything['ttft']['p95']:.2f} s, "
          f"ITL p50 {everything['itl']['p50'] * 1000:.0f} ms, {everything['output_throughput']:.1f} output tok/s")
    assert everything["errors"] == 0, bench_run["errors"]
    assert everything["requests"] >= 10
    chat_servers = [s["name"] for s in bench_run["servers"] if s["role"] == "chat"]
    for name in chat_servers:
        client, server = summary["servers"][name], side[name]
        assert "error" not in server, server
        served = client["completed"] - sum(1 for r in bench_run["requests"]
                                           if not r["warmup"] and r["server"] == name and r["kind"] == "embed")
        print(f"  {name}: requests client {served} / server {server['tokens_predicted'] / REPLY:.1f}; "
              f"prompt tokens client {client['prompt_tokens']} / server {server['prompt_tokens'] + server['prompt_tokens_cached']:.0f} "
              f"({server['prompt_tokens_cached']:.0f} cached); completion tokens client {client['completion_tokens']} / "
              f"server {server['tokens_predicted']:.0f}")
        # every reply is REPLY tokens, so the server's predicted tokens count its requests
        assert server["tokens_predicted"] == pytest.approx(client["completion_tokens"], rel=0.01, abs=2)
        assert server["tokens_predicted"] / REPLY == pytest.approx(served, abs=0.1)
        # prompt tokens: processed + reused from the cache, as llama-server counts them, vs its own usage answers
        assert server["prompt_tokens"] + server["prompt_tokens_cached"] == pytest.approx(client["prompt_tokens"], rel=0.02, abs=5)
    assert sum(summary["servers"][n]["completed"] for n in summary["servers"]) == everything["completed"]
    # the prompt generator hit the stated length, as the servers counted it
    assert bench_run["load"]["prompt_tokens_mean"] == pytest.approx(PROMPT, rel=0.15)
    # caching behaved as in production: the character cards' shared prefixes were reused
    assert sum(side[n]["prompt_tokens_cached"] for n in chat_servers) > 0


def test_report_has_its_sections_and_plots(bench_run):
    with open(os.path.join(bench_run["_dir"], "report.md"), encoding="utf-8") as handle:
        text = handle.read()
    for part in ("## Figures", "## Server-side figures", "## The plan beside the bench", "TTFT p95 (s)", "ttft.png"):
        assert part in text
    for name in ("ttft.png", "latency.png", "servers.png"):
        with open(os.path.join(bench_run["_dir"], name), "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "bench [" in bench_run["_stdout"]  # the progress line
    rows = bench_run["comparison"]["lab-smollm2"]
    for row in rows:
        print(f"  plan vs bench: {row['figure']}: plan {row['predicted']} bench {row['measured']} ratio {row['ratio']}")
    assert {r["figure"] for r in rows} >= {"TTFT p50 (s)", "TTFT p95 (s)", "tokens/s per request", "utilisation"}


@pytest.mark.parametrize("extra, words", [
    ({"llamafleet_bench_rate_per_min": 10, "llamafleet_bench_concurrency": 2},
     ["llamafleet_bench_rate_per_min and llamafleet_bench_concurrency are both set"]),
    ({"llamafleet_bench_duration_s": 0}, ["llamafleet_bench_duration_s must be > 0"]),
    ({"llamafleet_bench_models": ["no-such-model"]}, ["llamafleet_bench_models: unknown model no-such-model"]),
])
def test_bad_settings_send_nothing(lab, tmp_path, extra, words):
    report_dir = str(tmp_path / "never")
    result = playbook("playbooks/bench.yml", "-e", json.dumps(dict(extra, llamafleet_report_dir=report_dir)), check=False)
    assert result.returncode != 0
    for word in words:
        assert word in result.stdout
    assert "nothing was sent" in result.stdout
    assert not os.path.exists(os.path.join(report_dir, "results.json"))


def test_tune_sweeps_parallel_and_puts_the_fleet_back(lab, tmp_path):
    """A two-value sweep of the chat servers' slots on the lab: each value applied and benched, side by side."""
    settings = {"llamafleet_tune_knob": "parallel", "llamafleet_tune_values": [1, 2], "llamafleet_report_dir": str(tmp_path),
                "llamafleet_bench_rate_per_min": 20, "llamafleet_bench_duration_s": 20, "llamafleet_bench_prompt_tokens": 100,
                "llamafleet_bench_reply_tokens": 24, "llamafleet_bench_embed_rate_per_min": 0, "llamafleet_bench_direct": True}
    result = playbook("playbooks/tune.yml", "-e", json.dumps(settings))
    text = (tmp_path / "tune.md").read_text(encoding="utf-8")
    print("\n" + text)
    runs = json.loads((tmp_path / "tune.json").read_text(encoding="utf-8"))["runs"]
    assert [r["value"] for r in runs] == [1, 2] and all(r["errors"] == 0 for r in runs), runs
    assert "| parallel=1 | 0 |" in text and "| parallel=2 | 0 |" in text and "Best: parallel=" in text
    assert "Best: parallel=" in result.stdout  # printed, not only written
    assert (tmp_path / "tune.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for run in runs:
        report = json.loads((tmp_path / f"parallel-{run['value']}" / "results.json").read_text(encoding="utf-8"))
        chat = [s for s in report["servers"] if s["role"] == "chat"]
        assert {s["slots"] for s in chat} == {run["value"]}
        if run["value"] == 1:
            # the servers' own counters: never more than one busy slot in a decode step
            for s in chat:
                assert report["server_side"][s["name"]]["busy_slots_per_decode"] <= 1.0 + 1e-9
    # put back as the inventory declares it: the lab's chat servers run with their two slots again
    for name, c in containers().items():
        if name.startswith("chat-"):
            args = c["Config"]["Cmd"]
            assert args[args.index("--parallel") + 1] == "2", (name, args)
