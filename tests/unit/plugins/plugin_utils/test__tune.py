"""Tune core: the sweep's settings, a value applied to one role's servers, the best value, tune.md."""
from __future__ import annotations

import pytest

from ansible_collections.llamafleet.fleet.plugins.plugin_utils._tune import (
    TuneError,
    best,
    check,
    plan_errors,
    render,
    with_server_args,
)

LAYOUT = {"gpus": [0, 1], "per_gpu": [
    {"role": "chat", "model": "m", "port_base": 8101, "args": {"parallel": 2, "ctx_size": 4096}},
    {"role": "embed", "model": "e", "port_base": 8201, "args": {"parallel": 1}},
]}


@pytest.mark.parametrize("knob, values, role, objective, words", [
    ("parallel", [1], "chat", "ttft_p95", "llamafleet_tune_values must be a list of at least two"),
    ("parallel", "1,2", "chat", "ttft_p95", "llamafleet_tune_values must be a list"),
    ("parallel", [1, 1], "chat", "ttft_p95", "has a value twice"),
    (None, [1, 2], "chat", "ttft_p95", "llamafleet_tune_knob must be one llama-server argument"),
    ("--parallel", [1, 2], "chat", "ttft_p95", "llamafleet_tune_knob"),
    ("parallel", [1, 2], "", "ttft_p95", "llamafleet_tune_role"),
    ("parallel", [1, 2], "chat", "fastest", "llamafleet_tune_objective must be one of ttft_p95, ttft_p50, tokens_per_s"),
])
def test_bad_settings_name_the_variable(knob, values, role, objective, words):
    with pytest.raises(TuneError, match=words):
        check(knob, values, role, objective)


def test_good_settings_pass():
    check("ubatch_size", [64, 128, 256], "chat", "tokens_per_s")


def test_a_value_is_set_on_every_server_of_the_role_only():
    hv = {"llamafleet_server_layout": LAYOUT, "llamafleet_servers": [
        {"name": "chat-9", "role": "chat", "model": "m", "port": 8109, "args": {"parallel": 4}},
        {"name": "chat-1", "args": {"parallel": 3}},         # an override of the layout's chat-1: it sets the knob
        {"name": "chat-0", "args": {"ctx_size": 2048}},      # an override that leaves the knob to the layout
        {"name": "embed-7", "role": "embed", "model": "e", "port": 8207, "args": {"parallel": 2}},
    ]}
    out = with_server_args(hv, "chat", {"parallel": 1})
    assert [e["args"] for e in out["llamafleet_server_layout"]["per_gpu"]] == [
        {"parallel": 1, "ctx_size": 4096}, {"parallel": 1}]
    assert [s["args"] for s in out["llamafleet_servers"]] == [
        {"parallel": 1}, {"parallel": 1}, {"ctx_size": 2048}, {"parallel": 2}]
    # the inventory's variables are untouched
    assert LAYOUT["per_gpu"][0]["args"]["parallel"] == 2 and hv["llamafleet_servers"][0]["args"] == {"parallel": 4}


def test_plan_errors_are_the_error_findings():
    plan = {"findings": [{"level": "error", "message": "chat-0: too big"}, {"level": "warning", "message": "meh"}]}
    assert plan_errors(plan) == ["chat-0: too big"]
    assert plan_errors({"findings": []}) == []


def _run(value, errors, p95, tps):
    return {"value": value, "errors": errors, "output_tps": 10.0,
            "config": {"mode": "rate", "arrivals": "poisson", "rate_per_min": 12, "duration_s": 30,
                       "prompt_tokens": 200, "reply_tokens": 48, "embed_rate_per_min": 0},
            "comparison": {"g": [
                {"figure": "TTFT p50 (s)", "predicted": 1.0, "measured": 1.1, "ratio": 1.1},
                {"figure": "TTFT p95 (s)", "predicted": 2.0, "measured": p95, "ratio": p95 / 2.0},
                {"figure": "tokens/s per request", "predicted": 20.0, "measured": tps, "ratio": tps / 20.0},
                {"figure": "utilisation", "predicted": float("inf"), "measured": 0.5, "ratio": None}]}}


def test_best_is_by_the_objective_among_runs_without_errors():
    runs = [_run(1, 0, 3.0, 30.0), _run(2, 0, 2.5, 20.0), _run(4, 1, 0.5, 40.0)]
    assert best(runs, "g", "ttft_p95") == 2         # 2.5 s < 3.0 s; value 4 had an error
    assert best(runs, "g", "tokens_per_s") == 1     # 30 > 20
    assert best([_run(1, 2, 1.0, 1.0)], "g", "ttft_p95") is None


def test_tune_md_sets_values_side_by_side_and_names_the_change():
    text = render("parallel", "chat", [_run(1, 0, 3.0, 30.0), _run(2, 0, 2.5, 20.0)], "g", "ttft_p95")
    assert "poisson arrivals at 12 chat requests/min for 30 s, prompts ~200 tokens, replies 48 tokens" in text
    assert "| parallel=1 | 0 | 10.0 | 1.00 / 1.10 / 1.10 | 2.00 / 3.00 / 1.50 | 20.00 / 30.00 / 1.50 | unbounded / 0.50 / - |" in text
    assert "Best: parallel=2." in text and "  parallel: 2" in text


def test_tune_plot_is_a_png(tmp_path):
    from ansible_collections.llamafleet.fleet.plugins.plugin_utils._bench_plots import tune_plot

    tune_plot([_run(1, 0, 3.0, 30.0), _run(2, 0, 2.5, 20.0)], "g", "parallel", str(tmp_path / "tune.png"))
    assert (tmp_path / "tune.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_sweep_on_simulated_servers_says_so_before_its_table():
    simulated = [dict(_run(1, 0, 3.0, 30.0), simulated_hosts=["first-user-sim"]), _run(2, 0, 2.5, 20.0)]
    text = render("parallel", "chat", simulated, "g", "ttft_p95")
    head, _, table_part = text.partition("| parallel=1 ")
    assert "**Measured on simulated servers** (llamafleet_backend: sim on first-user-sim)" in head
    assert "Confirm the best value on the real host" in head
    assert "simulated" not in render("parallel", "chat", [_run(1, 0, 3.0, 30.0)], "g", "ttft_p95")
