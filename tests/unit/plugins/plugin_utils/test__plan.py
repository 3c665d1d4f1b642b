"""Every finding code: one case that makes it fire and one that keeps it quiet."""
from __future__ import annotations

import copy
import os

import pytest

from ansible_collections.llamafleet.fleet.plugins.plugin_utils._gpus import arch_covers
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._inventory import normalize_host
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._plan import (
    PlanError,
    _change_args,
    describe_model,
    plan,
)
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._shapes import model_info_from_shape
from tests.support.synthetic_gguf import write_model
from tests.support.toy import toy

SHA = "b" * 64
MODELS = {
    "q6": model_info_from_shape("llama-3.1-8b", "Q6_K", "q6"),
    "q4": model_info_from_shape("llama-3.1-8b", "Q4_K_M", "q4"),
    "gemma": model_info_from_shape("gemma-3-270m", "Q8_0", "gemma"),
    "nomic": model_info_from_shape("nomic-embed-text-v1.5", "F16", "nomic"),
}
GOOD_CHAT = {"ctx_size": 8192, "parallel": 2, "batch_size": 512, "ubatch_size": 256, "flash_attn": "on",
             "cache_type_k": "q8_0", "cache_type_v": "q8_0", "n_gpu_layers": 99, "cache_ram": 256}
GOOD_EMBED = {"embeddings": True, "ctx_size": 2048, "batch_size": 2048, "ubatch_size": 2048, "n_gpu_layers": 99}


def cuda_host(**changes):
    hv = {
        "llamafleet_backend": "cuda",
        "llamafleet_gpus": [{"index": 0, "name": "P106-100"}],
        "llamafleet_host_memory_mib": 15890,
        "llamafleet_models": {n: {"path": f"/m/{n}.gguf", "sha256": SHA, "family": "l8" if n in ("q6", "q4") else n}
                              for n in MODELS},
        "llamafleet_servers": [
            {"name": "chat-0", "role": "chat", "model": "q4", "gpu": 0, "port": 8100, "container_memory": "1536m",
             "args": dict(GOOD_CHAT)},
            # 768m: llama.cpp's output buffer alone is (30,522 + 768) x 2048 x 4 B = 244 MiB of pinned host RAM
            {"name": "embed-0", "role": "embed", "model": "nomic", "gpu": 0, "port": 8200, "container_memory": "768m",
             "args": dict(GOOD_EMBED)},
        ],
        "llamafleet_workload": {"q4": {"requests_per_minute": 3, "prompt_tokens": 500, "reply_tokens": 256}},
    }
    for key, value in changes.items():
        if key in ("chat", "embed"):
            server = hv["llamafleet_servers"][0 if key == "chat" else 1]
            server.update(copy.deepcopy(value))
        else:
            hv[key] = value
    return hv


def findings(hv, host="h"):
    spec = normalize_host(host, hv)
    return plan([spec], {host: MODELS})["findings"]


def codes(hv):
    return {f["code"] for f in findings(hv)}


def test_the_good_configuration_has_no_warnings_or_errors():
    bad = [f for f in findings(cuda_host()) if f["level"] != "info"]
    assert bad == []


CASES = [
    # code, changes that make it fire
    ("does-not-fit", {"chat": {"model": "q6", "args": dict(GOOD_CHAT, parallel=1)}}),
    ("partial-offload", {"chat": {"args": dict(GOOD_CHAT, n_gpu_layers=20)}}),
    ("cuda-arch-unsupported", {"llamacpp_build_cuda_architectures": "75-real;86-real"}),
    ("driver-branch-unsupported", {"nvidia_driver_branch": 590}),
    ("ubatch-exceeds-batch", {"chat": {"args": dict(GOOD_CHAT, ubatch_size=1024, batch_size=512)}}),
    ("quantized-v-needs-flash-attn", {"chat": {"args": dict(GOOD_CHAT, flash_attn="off")}}),
    ("kv-cache-type-no-effect", {"embed": {"args": dict(GOOD_EMBED, cache_type_k="q8_0")}}),
    ("embed-input-exceeds-ubatch", {"embed": {"args": dict(GOOD_EMBED, ubatch_size=512, batch_size=512)}}),
    ("prompt-cache-exceeds-container", {"chat": {"args": {k: v for k, v in GOOD_CHAT.items() if k != "cache_ram"}}}),
    ("container-memory-too-small", {"chat": {"container_memory": "256m"}}),
    ("mlock-without-memlock-limit", {"chat": {"args": dict(GOOD_CHAT, load_mode="mmap+mlock")}}),
    ("host-memory-overcommitted", {"llamafleet_host_memory_mib": 2048}),
    ("capacity-exceeded", {"llamafleet_workload": {"q4": {"requests_per_minute": 30, "prompt_tokens": 500,
                                                          "reply_tokens": 512}}}),
    ("cache-reuse-without-shift", {"chat": {"model": "gemma", "args": dict(GOOD_CHAT, cache_reuse=256)},
                                   "llamafleet_workload": {}}),
    ("cont-batching-single-slot", {"chat": {"args": dict(GOOD_CHAT, parallel=1)}}),
    ("cuda-overhead-estimated", {}),
    ("cuda-overhead-measured", {"llamafleet_gpus": [{"index": 0, "name": "H200"}]}),
    ("cuda-overhead-unknown", {"llamafleet_gpus": [{"index": 0, "name": "Custom 8GB", "memory_mib": 8000,
                                                    "bandwidth_gbs": 256, "fp32_tflops": 6, "int8_tops": 24,
                                                    "compute_capability": "6.1"}]}),
]
QUIET = {
    # the same knob set so that the finding must stay quiet
    "partial-offload": {"chat": {"args": dict(GOOD_CHAT, n_gpu_layers=33)}},
    "cuda-arch-unsupported": {"llamacpp_build_cuda_architectures": "61-real", "llamacpp_build_cuda_version": "12.9.1"},
    "driver-branch-unsupported": {"nvidia_driver_branch": 580},
    "ubatch-exceeds-batch": {"chat": {"args": dict(GOOD_CHAT, ubatch_size=512, batch_size=512)}},
    "quantized-v-needs-flash-attn": {"chat": {"args": dict(GOOD_CHAT, flash_attn="auto")}},
    "kv-cache-type-no-effect": {"chat": {"args": dict(GOOD_CHAT, cache_type_k="q4_0", cache_type_v="q4_0")}},
    "embed-input-exceeds-ubatch": {"embed": {"args": dict(GOOD_EMBED, ctx_size=512, ubatch_size=512, batch_size=512)}},
    "prompt-cache-exceeds-container": {"chat": {"args": dict(GOOD_CHAT, cache_ram=0)}},
    "container-memory-too-small": {"chat": {"container_memory": "1g"}},
    "mlock-without-memlock-limit": {"chat": {"args": dict(GOOD_CHAT, load_mode="mmap+mlock"), "ulimits": ["memlock:-1:-1"]}},
    "host-memory-overcommitted": {"llamafleet_host_memory_mib": 4096},
    "capacity-exceeded": {"llamafleet_workload": {"q4": {"requests_per_minute": 2, "prompt_tokens": 500, "reply_tokens": 512}}},
    "cache-reuse-without-shift": {"chat": {"model": "gemma", "args": dict(GOOD_CHAT, cache_reuse=256, swa_full=True)},
                                  "llamafleet_workload": {}},
    "cont-batching-single-slot": {"chat": {"args": dict(GOOD_CHAT, parallel=1, cont_batching=False)}},
    "does-not-fit": {"chat": {"model": "q4", "args": dict(GOOD_CHAT, parallel=1)}},
    "cuda-overhead-estimated": {"llamafleet_cuda_overhead_mib": 250},
    "cuda-overhead-measured": {},
    "cuda-overhead-unknown": {"llamafleet_gpus": [{"index": 0, "name": "Custom 8GB", "memory_mib": 8000,
                                                   "bandwidth_gbs": 256, "fp32_tflops": 6, "int8_tops": 24,
                                                   "compute_capability": "6.1", "sms": 15}]},
}


def test_p106_verdict_carries_the_estimated_overhead():
    msg = next(f["message"] for f in findings(cuda_host()) if f["code"] == "cuda-overhead-estimated")
    # chat (Q4_K, flash attention): 94.0 + 0.001877 x (10 SMs x 2048 threads) = 132.4 MiB
    # embed (F16 weights, cuBLAS): 132.4 + 70 + pool 2 x 2048 x 3072 x 2 B (24 MiB) = 226.4 MiB
    assert "CUDA overhead of P106-100 estimated at 132 +/- 90 MiB per process" in msg
    assert msg.startswith("cuda:0 (P106-100) fits with ") and "run playbooks/calibrate.yml" in msg
    assert "CUDA overhead of P106-100 estimated at 226 +/- 90 MiB per process" in msg  # the F16 embedder


def test_alternatives_within_the_estimated_overheads_uncertainty_are_marked():
    """A fix that fits by less than the card's estimated overhead may be off by is said to be so."""
    hv = cuda_host(chat={"model": "q6", "args": dict(GOOD_CHAT, parallel=1)},
                   llamafleet_gpus=[{"index": 0, "name": "P106-100", "memory_mib": 6000}])
    [f] = [f for f in findings(hv) if f["code"] == "does-not-fit"]
    fits = {a["change"]: a for a in f["alternatives"] if a["fits"]}
    # two estimated processes on the card (chat-0, embed-0), each +/- 90 MiB (the P40's spread, _overhead.py)
    assert {a["uncertainty_mib"] for a in f["alternatives"]} == {180}
    roomy, tight = fits["model: q4 (Q4_K_M)"], fits["n_gpu_layers: 26"]
    assert roomy["spare_mib"] > 180 > tight["spare_mib"] > 0
    assert f"q4 (Q4_K_M) -> 5,680 MiB (fits with {roomy['spare_mib']:,.0f} MiB to spare)" in f["message"]
    assert (f"n_gpu_layers: 26 -> 5,879 MiB (fits with only {tight['spare_mib']:,.0f} MiB to spare, less than the "
            f"CUDA overhead's uncertainty of 180 MiB: it may not fit)") in f["message"]
    assert f["message"].endswith("(CUDA overhead of P106-100 estimated, per process: chat-0 132 +/- 90 MiB, "
                                 "embed-0 226 +/- 90 MiB; run playbooks/calibrate.yml to measure it)")
    # a declared overhead is no estimate: no uncertainty, no note
    [f] = [f for f in findings(dict(hv, llamafleet_cuda_overhead_mib=200)) if f["code"] == "does-not-fit"]
    assert all("uncertainty_mib" not in a for a in f["alternatives"])
    assert "only" not in f["message"] and "estimated" not in f["message"]


# the level of each code as docs/findings.md gives it (for the cases above)
LEVELS = {"does-not-fit": "error", "partial-offload": "warning", "cuda-arch-unsupported": "error",
          "ubatch-exceeds-batch": "warning", "quantized-v-needs-flash-attn": "error", "kv-cache-type-no-effect": "info",
          "embed-input-exceeds-ubatch": "warning", "prompt-cache-exceeds-container": "error",
          "container-memory-too-small": "error", "mlock-without-memlock-limit": "warning",
          "host-memory-overcommitted": "error", "capacity-exceeded": "error", "cache-reuse-without-shift": "warning",
          "cont-batching-single-slot": "info", "driver-branch-unsupported": "error",
          "cuda-overhead-estimated": "info", "cuda-overhead-measured": "info", "cuda-overhead-unknown": "error"}


@pytest.mark.parametrize("code,changes", CASES, ids=[c for c, _ in CASES])
def test_finding_fires(code, changes):
    fired = [f for f in findings(cuda_host(**changes)) if f["code"] == code]
    assert fired and {f["level"] for f in fired} == {LEVELS[code]}
    assert all(f["host"] == "h" for f in fired)


@pytest.mark.parametrize("code", sorted(QUIET))
def test_finding_stays_quiet(code):
    assert code not in codes(cuda_host(**QUIET[code]))


def test_cache_reuse_needs_prompt_caching():
    hv = cuda_host(chat={"args": dict(GOOD_CHAT, cache_reuse=256, cache_prompt=False)})
    assert "cache-reuse-without-shift" in codes(hv)
    assert "cache-reuse-without-shift" not in codes(cuda_host(chat={"args": dict(GOOD_CHAT, cache_reuse=256)}))


def test_cuda_graphs_inactive_on_pascal_only():
    assert "cuda-graphs-inactive" in codes(cuda_host())
    turing = cuda_host(llamafleet_gpus=[{"index": 0, "name": "Tesla T4"}])
    assert "cuda-graphs-inactive" not in codes(turing)


def test_cuda_13_cannot_build_for_pascal():
    msgs = [f["message"] for f in findings(cuda_host(llamacpp_build_cuda_version="13.0.1"))
            if f["code"] == "cuda-arch-unsupported"]
    assert msgs and "12.9.1" in msgs[0]


def test_hosts_show_the_gpu_stack_before_anything_is_installed():
    # P106-100: CC 6.1 -> branch 580 (the last for Pascal), CUDA 12.9.1 (the last for sm_61), 61-real (facts.md #2)
    (host,) = plan([normalize_host("h", cuda_host())], {"h": MODELS})["hosts"]
    assert host["host"] == "h"
    assert host["gpu_stack"] == {"driver_branch": 580, "cuda_version": "12.9.1", "cuda_source": "nvidia",
                                 "cuda_architectures": "61-real",
                                 "kernel_modules": "proprietary"}
    cpu = dict(cuda_host(), llamafleet_backend="cpu", llamafleet_servers=[
        dict(s, gpu=None) for s in cuda_host()["llamafleet_servers"]])
    assert plan([normalize_host("c", cpu)], {"c": MODELS})["hosts"][0]["gpu_stack"] is None


def test_a_driver_pin_that_drops_pascal_is_an_error_before_anything_is_installed():
    (err,) = [f for f in findings(cuda_host(nvidia_driver_branch=590)) if f["code"] == "driver-branch-unsupported"]
    assert err["level"] == "error" and err["server"] is None
    assert "590 drops P106-100" in err["message"] and "nvidia_driver_branch: 580" in err["message"]


def test_does_not_fit_proposes_what_fits_with_numbers():
    fit = [f for f in findings(cuda_host(chat={"model": "q6", "args": dict(GOOD_CHAT, parallel=1)}))
           if f["code"] == "does-not-fit"][0]
    assert fit["level"] == "error" and fit["planned_mib"] > fit["capacity_mib"]
    fitting = [a for a in fit["alternatives"] if a["fits"]]
    assert fitting[0]["change"].startswith("model: q4")  # the user's smaller quantization comes first
    assert all(a["device_total_mib"] <= fit["capacity_mib"] for a in fitting)
    assert any(a["change"].startswith("n_gpu_layers") and a["decode_tps"] < fitting[0]["decode_tps"] for a in fitting)


def test_embed_limit_error_when_workload_declares_longer_inputs():
    hv = cuda_host(embed={"args": dict(GOOD_EMBED, ubatch_size=256, batch_size=256)},
                   llamafleet_workload={"nomic": {"requests_per_minute": 5, "prompt_tokens": 400, "reply_tokens": 1}})
    [f] = [f for f in findings(hv) if f["code"] == "embed-input-exceeds-ubatch"]
    assert f["level"] == "error" and "400" in f["message"]


def test_cpu_backend_host_fit():
    hv = cuda_host(llamafleet_backend="cpu", llamafleet_host_memory_mib=4096)
    result = plan([normalize_host("h", hv)], {"h": MODELS})
    [dev] = result["devices"]
    assert dev["device"] == "cpu" and not dev["fits"]
    assert "host-memory-overcommitted" in {f["code"] for f in result["findings"]}


# -- hand-worked plans on the toy model (tests/support/toy.py) -----------------------------------------
# On the CPU backend one toy server with ctx 4096, 1 slot, FA on holds weights 46 MiB (mmap'd, shared through
# the page cache), KV 8 + compute 13 + process 64 = 85 MiB of its own, plus its prompt cache (cache_ram).
TOY_ARGS = {"ctx_size": 4096, "parallel": 1, "flash_attn": "on", "cache_ram": 100}
TOYS = {"toy": toy(), "small": toy(name="small", layer_mib=5), "enc": toy(causal=False, architecture="nomic-bert")}


def toy_host(servers, **hv):
    base = {"llamafleet_backend": "cpu",
            "llamafleet_models": {n: {"path": f"/m/{n}.gguf", "sha256": SHA, "family": "toy"} for n in TOYS},
            "llamafleet_servers": [dict({"role": "chat", "model": "toy", "container_memory": "1g", "args": TOY_ARGS},
                                        name=f"s{i}", port=8100 + i, **s) for i, s in enumerate(servers)]}
    return normalize_host("h", dict(base, **hv))


def toy_plan(servers, **hv):
    return plan([toy_host(servers, **hv)], {"h": TOYS})


def by_code(result, code):
    return [f for f in result["findings"] if f["code"] == code]


def test_host_ram_counts_shared_weights_once():
    result = toy_plan([{}, {}], llamafleet_host_memory_mib=3072)
    # weights 46 once + 2 x (85 own + 100 prompt cache) + 1024 reserved (the default) = 1,440 MiB
    assert result["hosts"] == [{"host": "h", "memory_mib": 3072, "reserved_mib": 1024, "gateway_mib": 0,
                                "gpu_stack": None, "planned_mib": 1440, "container_limits_mib": 2048}]
    assert result["devices"] == [{"host": "h", "device": "cpu", "name": "host RAM", "capacity_mib": 3072,
                                  "planned_mib": 1440, "free_mib": 1632, "fits": True, "servers": ["s0", "s1"]}]
    assert by_code(result, "host-memory-overcommitted") == []  # limits 2048 + 1024 reserved = 3072: not above


def test_host_ram_of_unshared_weights_and_other_models():
    # load_mode none: s1's weights are anonymous memory, its own: 46 + 85 + 100 = 231 MiB
    result = toy_plan([{}, {"args": dict(TOY_ARGS, load_mode="none")}], llamafleet_host_reserved_mib=0)
    assert result["hosts"][0]["planned_mib"] == 46 + 185 + 231
    # two different files: both in the page cache; small's weights are 4 x 5 + 6 = 26 MiB
    result = toy_plan([{}, {"model": "small"}], llamafleet_host_reserved_mib=0)
    assert result["hosts"][0]["planned_mib"] == 46 + 26 + 2 * 185
    # the larger of two servers' views of one file counts (a CPU and ... the same model twice: once)
    assert toy_plan([{}, {}, {}], llamafleet_host_reserved_mib=0)["hosts"][0]["planned_mib"] == 46 + 3 * 185


def test_host_ram_is_capped_by_container_limits():
    # container_memory 200m: a server cannot hold more than 200 - 46 (its mapped weights) = 154 MiB of its own
    result = toy_plan([{"container_memory": "200m"}], llamafleet_host_reserved_mib=0)
    assert result["hosts"][0]["planned_mib"] == 46 + 154
    # load_mode none, 100m: everything it holds is capped at 100 MiB
    result = toy_plan([{"container_memory": "100m", "args": dict(TOY_ARGS, load_mode="dio")}], llamafleet_host_reserved_mib=0)
    assert result["hosts"][0]["planned_mib"] == 100
    # an unlimited prompt cache is capped by the container too: 1024 - 46
    result = toy_plan([{"args": dict(TOY_ARGS, cache_ram=-1)}], llamafleet_host_reserved_mib=0)
    assert result["hosts"][0]["planned_mib"] == 1024


def test_host_memory_overcommitted_error_and_warning():
    # planned 1,440 MiB (see above) > 1,400 MiB of RAM: error
    [err] = by_code(toy_plan([{}, {}], llamafleet_host_memory_mib=1400), "host-memory-overcommitted")
    assert (err["level"], err["server"]) == ("error", None)
    assert err["message"] == ("h: planned host RAM 1,440 MiB (weights 46 + per-server 370 + reserved 1,024) exceeds "
                              "1,400 MiB. Fixes: lower cache_ram on chat servers, fewer servers, or more RAM")
    # planned 1,440 MiB + 2 output buffers of 1,000 logits x 4 B = 8,000 B (0.0076 MiB): 1,440 MiB of RAM is just
    # short, 1,441 fits; container limits 2 x 1024 + 1024 reserved > 1,441: warning
    [err] = by_code(toy_plan([{}, {}], llamafleet_host_memory_mib=1440), "host-memory-overcommitted")
    assert err["level"] == "error"
    for ram in (1441, 3071):
        [warn] = by_code(toy_plan([{}, {}], llamafleet_host_memory_mib=ram), "host-memory-overcommitted")
        assert (warn["level"], warn["host"], warn["server"]) == ("warning", "h", None)
        assert warn["message"] == (
            f"h: container limits add up to 2,048 MiB + 1,024 MiB reserved > {ram:,} MiB of RAM; if every container "
            f"grows to its limit the kernel OOM killer picks a victim. Planned use is 1,440 MiB; lower "
            f"container_memory to what the plan shows each server needs")
    # no RAM declared: nothing to compare with; the CPU device has no capacity
    result = toy_plan([{}, {}])
    assert by_code(result, "host-memory-overcommitted") == []
    assert (result["devices"][0]["capacity_mib"], result["devices"][0]["free_mib"], result["devices"][0]["fits"]) == (None, None, True)
    over = toy_plan([{}, {}], llamafleet_host_memory_mib=1400)
    assert (over["devices"][0]["fits"], over["devices"][0]["free_mib"]) == (False, -40)
    # one error (the RAM), no warning (the limits check is the milder case of the same finding), two infos
    assert over["summary"] == {"errors": 1, "warnings": 0, "infos": 2, "fits": False}


def test_server_rows_of_the_plan():
    [row] = toy_plan([{"args": dict(TOY_ARGS, cache_ram=-1)}])["servers"]
    assert row["memory_mib"] == {"model": 46, "context": 8, "compute": 13, "overhead": 0, "total": 67}
    # output buffer: 1,000 logits x 1 slot x 4 B = 4,000 B, 0.0038 MiB shown 0.0
    assert row["host_memory_mib"] == {"model": 46, "compute": 0, "output": 0.0, "prompt_cache": None, "overhead": 64,
                                      "container_limit": 1024}
    assert (row["host"], row["name"], row["role"], row["model"], row["device"], row["gpu_layers"]) == (
        "h", "s0", "chat", "toy", "cpu", "cpu")
    assert row["kv"] == {"cells": 4096, "swa_cells": 0, "streams": 1, "slots": 1, "unified": False}
    # an unlimited prompt cache cannot fit any container
    assert [f["code"] for f in row["findings"]] == ["cont-batching-single-slot", "prompt-cache-exceeds-container"]


# A CPU host that declares 20 GB/s and 100 GFLOPS: decode reads 44 MiB of weights + KV of 640 tokens x 2,048 B
# = 47,448,064 B at 20 GB/s: 2,372.40 us -> 421.51 tok/s; prefill 100e9 / 17,825,792 FLOP = 5,609.85 tok/s.
# A request of 512 + 256 tokens holds its slot 512 / 5,609.85 + 2,372.40 us + 256 / 421.51 = 0.70097 s.
CPU_FIGURES = {"llamafleet_host_cpu": {"memory_bandwidth_gbs": 20, "gflops": 100}}


def wl(rpm, model="toy", prompt=512, reply=256):
    return {"llamafleet_workload": {model: {"requests_per_minute": rpm, "prompt_tokens": prompt, "reply_tokens": reply}}}


def test_speed_on_declared_cpu_figures():
    [row] = toy_plan([{}], **CPU_FIGURES, **wl(10))["servers"]
    assert row["speed"]["decode_tps"] == pytest.approx(421.51, abs=0.01)
    assert row["speed"]["prefill_tps"] == pytest.approx(5609.85, abs=0.01)
    # undeclared: 10 GB/s and 16 GFLOPS per core, 2 cores when the count is unknown: 32 GFLOPS
    [row] = toy_plan([{}], **wl(10))["servers"]
    assert row["speed"]["prefill_tps"] == pytest.approx(32e9 / 17_825_792, abs=0.01)
    assert row["speed"]["decode_tps"] == pytest.approx(10e9 / 47_448_064, abs=0.01)
    [row] = toy_plan([{}], llamafleet_host_cpu_cores=4, **wl(10))["servers"]
    assert row["speed"]["prefill_tps"] == pytest.approx(64e9 / 17_825_792, abs=0.01)


@pytest.mark.parametrize("rpm,level,utilisation", [(60, None, "70%"), (78, "warning", "91%"), (90, "error", "105%")])
def test_capacity_levels(rpm, level, utilisation):
    # utilisation = rpm / 60 x 0.70097 s on one slot: 0.70, 0.911, 1.051
    result = toy_plan([{}], **CPU_FIGURES, **wl(rpm))
    [w] = result["workloads"]
    assert w["utilisation"] == pytest.approx(rpm / 60 * 0.70097, abs=1e-3) and w["host"] == "h"
    found = by_code(result, "capacity-exceeded")
    if level is None:
        assert found == []
        return
    [f] = found
    assert f["level"] == level and f["model"] == "toy" and f["server"] is None
    demand = f"{rpm * 256 / 60:.0f}"  # tokens per second asked for
    assert f["message"].startswith(f"model toy: {rpm} requests/min x 256 reply tokens = {demand} tok/s across 1 slot(s); "
                                   f"each request holds a slot 0.7 s, utilisation {utilisation}")
    if level == "error":
        assert "(the queue grows without bound)" in f["message"] and "TTFT p95" not in f["message"]
    else:
        # M/M/1 at rho 0.91127: the p95 wait ln(0.91127 / 0.05) / (1 / 0.70097 - 1.3) = 22.93 s, + TTFT 0.094 s
        assert ", TTFT p95 23.0 s. Fixes: more slots per server" in f["message"]


def test_workloads_only_for_models_with_chat_servers():
    result = toy_plan([{"role": "embed", "model": "enc", "args": {"embeddings": True, "ctx_size": 512,
                                                                     "ubatch_size": 512, "batch_size": 512}}],
                      **wl(10, model="enc"))
    assert result["workloads"] == [] and by_code(result, "capacity-exceeded") == []


def test_embed_input_limit_is_the_smaller_batch():
    enc = {"role": "embed", "model": "enc", "args": {"embeddings": True, "ctx_size": 512, "ubatch_size": 512, "batch_size": 256}}
    [f] = by_code(toy_plan([enc], **wl(10, model="enc", prompt=300)), "embed-input-exceeds-ubatch")
    # the physical batch is min(ubatch 512, batch 256) = 256 < 300 declared tokens: error
    assert f["level"] == "error"
    assert f["message"] == ("s0: an embedding input must fit in one physical batch; inputs longer than 256 tokens are "
                            "rejected ('input is too large to process. increase the physical batch size'), and the "
                            "workload declares 300. Set ubatch_size and batch_size to 300 (compute buffer grows with it)")
    assert by_code(toy_plan([enc], **wl(10, model="enc", prompt=256)), "embed-input-exceeds-ubatch") == []
    # no workload: the context (512 tokens) is the longest input: a warning
    [f] = by_code(toy_plan([enc]), "embed-input-exceeds-ubatch")
    assert f["level"] == "warning" and "the context allows 512." in f["message"]
    same = dict(enc, args=dict(enc["args"], batch_size=512))
    assert by_code(toy_plan([same]), "embed-input-exceeds-ubatch") == []


def test_container_findings_name_the_numbers():
    # CPU: weights 46 + KV 8 + compute 13 + output buffer 1,000 x 4 B = 4,000 B (0.0038 MiB) + process 64
    # = 131.0038 MiB > 128m
    [f] = by_code(toy_plan([{"container_memory": "128m"}]), "container-memory-too-small")
    assert f["message"] == ("s0: needs 131 MiB of RAM (weights 46 + KV 8 + compute 13 + output buffer 0 + process 64) "
                            "but container_memory is 128m; it would be OOM-killed while loading or at the first long "
                            "prompt. Set container_memory: 256m")  # (131.0038 + 64) rounded up to 64 MiB
    # 131.0038 MiB: 131m is just short, 132m holds it
    assert by_code(toy_plan([{"container_memory": "131m", "args": dict(TOY_ARGS, cache_ram=0)}]),
                   "container-memory-too-small") != []
    assert by_code(toy_plan([{"container_memory": "132m", "args": dict(TOY_ARGS, cache_ram=0)}]),
                   "container-memory-too-small") == []
    # 131.0038 + a 100 MiB prompt cache > 200m: room for 200 - 131.0038 = 68.996 -> 64 MiB of cache
    [f] = by_code(toy_plan([{"container_memory": "200m"}]), "prompt-cache-exceeds-container")
    assert f["message"] == ("s0: the host prompt cache may grow to 100 MiB (cache_ram 100) on top of 131 MiB, past "
                            "container_memory 200m -> OOM kill under load. Set cache_ram: 64 (what fits) or 0 to turn it off")
    args = {k: v for k, v in TOY_ARGS.items() if k != "cache_ram"}
    [f] = by_code(toy_plan([{"args": args}]), "prompt-cache-exceeds-container")
    assert "may grow to 8,192 MiB (cache_ram default 8192) on top of 131 MiB" in f["message"]
    [f] = by_code(toy_plan([{"args": dict(TOY_ARGS, cache_ram=-1)}]), "prompt-cache-exceeds-container")
    assert "may grow to unlimited (cache_ram -1)" in f["message"] and "Set cache_ram: 832 (what fits)" in f["message"]
    # 131.0038 + 100 = 231.0038 MiB: 231m is just short, 232m holds it
    assert by_code(toy_plan([{"container_memory": "231m"}]), "prompt-cache-exceeds-container") != []
    assert by_code(toy_plan([{"container_memory": "232m"}]), "prompt-cache-exceeds-container") == []


def test_mlock_with_and_without_memlock():
    for mode in ("mlock", "mmap+mlock"):
        [f] = by_code(toy_plan([{"args": dict(TOY_ARGS, load_mode=mode)}]), "mlock-without-memlock-limit")
        assert f["level"] == "warning" and f"load_mode {mode} asks to lock memory" in f["message"]
    assert by_code(toy_plan([{"args": dict(TOY_ARGS, load_mode="mmap")}]), "mlock-without-memlock-limit") == []
    assert by_code(toy_plan([{"args": dict(TOY_ARGS, load_mode="mlock"), "ulimits": ["nofile:1:1", "memlock:-1:-1"]}]),
                   "mlock-without-memlock-limit") == []


def test_cont_batching_info_only_for_one_chat_slot():
    assert len(by_code(toy_plan([{}]), "cont-batching-single-slot")) == 1
    assert by_code(toy_plan([{"args": dict(TOY_ARGS, parallel=2)}]), "cont-batching-single-slot") == []
    assert by_code(toy_plan([{"args": dict(TOY_ARGS, cont_batching=False)}]), "cont-batching-single-slot") == []


@pytest.mark.parametrize("args,reason", [
    ({}, None),
    ({"cache_prompt": False}, "prompt caching is off (cache_prompt: false)"),
])
def test_cache_reuse_reasons(args, reason):
    found = by_code(toy_plan([{"args": dict(TOY_ARGS, cache_reuse=256, **args)}]), "cache-reuse-without-shift")
    if reason is None:
        assert found == []
    else:
        [f] = found
        assert f["message"].startswith(f"s0: cache_reuse 256 is switched off by llama-server because {reason}. ")


def test_cache_reuse_on_an_encoder():
    enc = {"role": "embed", "model": "enc", "args": {"embeddings": True, "ctx_size": 512, "ubatch_size": 512,
                                                     "batch_size": 512, "cache_reuse": 64}}
    [f] = by_code(toy_plan([enc]), "cache-reuse-without-shift")
    assert "because nomic-bert has no KV cache" in f["message"]


def test_ubatch_and_quantized_v_messages():
    [f] = by_code(toy_plan([{"args": dict(TOY_ARGS, ubatch_size=1024, batch_size=512)}]), "ubatch-exceeds-batch")
    assert f["message"] == ("s0: ubatch_size 1024 > batch_size 512; llama.cpp silently clamps the physical batch to 512. "
                            "Set ubatch_size <= batch_size (e.g. ubatch_size: 512)")
    [f] = by_code(toy_plan([{"args": dict(TOY_ARGS, cache_type_v="q4_0", flash_attn="off")}]), "quantized-v-needs-flash-attn")
    assert f["message"].startswith("s0: cache_type_v q4_0 needs flash attention, but flash_attn is off")
    # a quantized K alone runs without flash attention
    assert by_code(toy_plan([{"args": dict(TOY_ARGS, cache_type_k="q4_0", flash_attn="off")}]),
                   "quantized-v-needs-flash-attn") == []


def test_kv_type_on_an_encoder():
    enc = {"role": "embed", "model": "enc", "args": {"embeddings": True, "ctx_size": 512, "ubatch_size": 512,
                                                     "batch_size": 512, "cache_type_v": "q8_0", "flash_attn": "on"}}
    [f] = by_code(toy_plan([enc]), "kv-cache-type-no-effect")
    assert f["message"].startswith("s0: nomic-bert creates no KV cache, so cache_type_k/cache_type_v save 0 MiB")
    assert by_code(toy_plan([{"args": dict(TOY_ARGS, cache_type_k="q8_0")}]), "kv-cache-type-no-effect") == []


# -- CUDA on a GPU of round figures -------------------------------------------------------------------
# The toy fully offloaded with 1 slot, ctx 4096, FA on: model 44 + KV 8 + compute 13 + CUDA 250 = 315 MiB;
# the smaller quantization of the same family ("small", 5 MiB layers): 24 + 8 + 13 + 250 = 295 MiB.
TOY_GPU = {"index": 0, "name": "Toy GPU", "memory_mib": 300, "bandwidth_gbs": 100, "fp32_tflops": 10, "int8_tops": 10,
           "compute_capability": "7.5"}


def cuda_toy_plan(servers, gpu=TOY_GPU, **hv):
    # the host declares its CUDA overhead (250 MiB per process), so the sums below do not depend on an estimate
    return toy_plan(servers, llamafleet_backend="cuda", llamafleet_gpus=[gpu],
                    **dict({"llamafleet_cuda_overhead_mib": 250}, **hv))


def test_cuda_overhead_override_reaches_the_plan():
    result = cuda_toy_plan([{"gpu": 0}], gpu=dict(TOY_GPU, memory_mib=1000), llamafleet_cuda_overhead_mib=400)
    assert result["servers"][0]["memory_mib"]["overhead"] == 400
    assert result["devices"][0]["planned_mib"] == 44 + 8 + 13 + 400
    assert cuda_toy_plan([{"gpu": 0}], gpu=dict(TOY_GPU, memory_mib=1000))["devices"][0]["planned_mib"] == 315
    # without the host's figure: the planning default of 250 MiB
    default = toy_plan([{"gpu": 0}], llamafleet_backend="cuda", llamafleet_gpus=[dict(TOY_GPU, memory_mib=1000)])
    assert default["servers"][0]["memory_mib"]["overhead"] == 250


def test_cuda_host_ram_counts_only_host_side_buffers():
    result = cuda_toy_plan([{"gpu": 0}, {"gpu": 0}], gpu=dict(TOY_GPU, memory_mib=1000), llamafleet_host_reserved_mib=0)
    # token_embd 2 MiB once (page cache) + 2 x (CPU inputs 3 x 512 x 512 x 4 B = 3 + output buffer 4,000 B
    # (0.0038) + process 64 + CUDA runtime 160 + prompt cache 100) = 2 + 2 x 327.0038 = 656.0076
    assert result["hosts"][0]["planned_mib"] == 656.0
    [row, _] = result["servers"]
    assert row["host_memory_mib"] == {"model": 2, "compute": 3, "output": 0.0, "prompt_cache": 100, "overhead": 224,
                                      "container_limit": 1024}
    assert row["gpu_layers"] == "4/4+output" and row["device"] == "cuda:0"
    # container check on CUDA: 2 + 3 + 0.0038 + 224 = 229.0038 MiB > 200m
    [f] = by_code(cuda_toy_plan([{"gpu": 0, "container_memory": "200m"}], gpu=dict(TOY_GPU, memory_mib=1000)),
                  "container-memory-too-small")
    assert "needs 229 MiB of RAM (CPU weights 2 + CPU compute 3 + output buffer 0 + process 224)" in f["message"]


def test_device_rows_and_fit():
    result = cuda_toy_plan([{"gpu": 0}], gpu=dict(TOY_GPU, memory_mib=315))
    assert result["devices"] == [{"host": "h", "device": "cuda:0", "name": "Toy GPU", "capacity_mib": 315,
                                  "planned_mib": 315, "free_mib": 0, "fits": True, "servers": ["s0"]}]
    assert by_code(result, "does-not-fit") == [] and result["summary"]["fits"]


def test_does_not_fit_alternatives_by_hand():
    result = cuda_toy_plan([{"gpu": 0}])
    [f] = by_code(result, "does-not-fit")
    assert (f["level"], f["server"], f["device"], f["planned_mib"], f["capacity_mib"]) == ("error", "s0", "cuda:0", 315, 300)
    changes = [(a["change"], a["device_total_mib"], a["fits"]) for a in f["alternatives"]]
    assert changes == [
        ("model: small (Q8_0)", 295, True),
        # q4_0 K/V: KV 4096 x 4 x 2 x 128 x 18/32 B = 2.25 MiB; compute 13 (the 2 MiB of F16 copies go with attention
        # 3 = 5 < FFN 6): 44 + 2.25 + 13 + 250 = 309.25 (shown 309.2)
        ("cache_type_k/v: q4_0", 309.2, False),
        # ctx 3072: KV 6, compute mask 3 + 3 + 6 = 12: 312; 2048: 4 + 11 = 309; 1024: 2 + 10 = 306
        ("ctx_size: 3072", 312, False), ("ctx_size: 2048", 309, False), ("ctx_size: 1024", 306, False),
        # -ngl offloads the output layer first; with a CPU layer the FFN phase also holds the GPU copy of the largest
        # CPU matrix (10 MiB): compute 4 + 3 + 6 + 10 = 23. ngl 4: layers 1-3 30 + output 3 + norm 1, KV 6: 313;
        # ngl 3: 24 + 4 + 23 + 250 = 301; ngl 2: layer 3 10 + 4 = 14, KV 2: 14 + 2 + 23 + 250 = 289 fits
        ("n_gpu_layers: 2", 289, True),
    ]
    assert f["alternatives"][-1]["gpu_layers"] == "1/4+output"
    assert f["message"].startswith("cuda:0 (Toy GPU, 300 MiB) needs 315 MiB: s0 315 MiB (model 44 + context 8 + "
                                   "compute 13 + CUDA 250). Fixes for s0: model: small (Q8_0) -> 295 MiB (fits with "
                                   "5 MiB to spare), ")
    assert "; n_gpu_layers: 2 -> 289 MiB (fits with 11 MiB to spare), " in f["message"]
    assert all("workload" not in a for a in f["alternatives"])


def test_does_not_fit_without_a_single_fix():
    result = cuda_toy_plan([{"gpu": 0, "model": "small"}], gpu=dict(TOY_GPU, memory_mib=100))
    [f] = by_code(result, "does-not-fit")
    # ngl 0 keeps KV 0 + compute 13 + CUDA 250 on the GPU: 263 > 100, so nothing fits
    assert f["message"].endswith("Fixes for s0: no single change fits; move a server to another GPU")
    assert not any(a["fits"] for a in f["alternatives"])


def test_does_not_fit_with_two_servers_blames_the_biggest():
    two = cuda_toy_plan([{"gpu": 0, "model": "small"}, {"gpu": 0}], gpu=dict(TOY_GPU, memory_mib=600))
    [f] = by_code(two, "does-not-fit")
    # 295 + 315 = 610 > 600; s1 (toy, 315) is the bigger; its alternatives keep s0's 295
    assert f["server"] == "s1" and f["planned_mib"] == 610
    assert f["alternatives"][0]["change"] == "model: small (Q8_0)" and f["alternatives"][0]["device_total_mib"] == 590


def test_slots_are_added_to_the_first_fitting_change_under_load():
    # small on the toy GPU: a step reads 24 MiB + 1,310,720 B of KV at 6e10 B/s: 441.28 us -> 2,266.1 tok/s;
    # TTFT 512 / 131,831.45 + 441.28 us = 4.325 ms; a request holds its slot 4.325 ms + 256 / 2,266.1 = 0.11729 s.
    # 450 requests/min = 7.5/s: 88% busy on one slot, above the 80% warning line
    result = cuda_toy_plan([{"gpu": 0}], **wl(450))
    [f] = by_code(result, "does-not-fit")
    alts = f["alternatives"]
    assert alts[0]["workload"]["utilisation"] == pytest.approx(7.5 * 0.11729, abs=1e-3)
    # a per-slot split keeps the KV at 8 MiB; the mask is one row per token over one stream's cells (4096/n), so
    # it shrinks: 2 slots: mask 2048 x 512 x 2 B = 2 + 3 + 6 = 11: 24 + 8 + 11 + 250 = 293; 3 slots: 3 x 1536 cells,
    # KV 9 MiB, mask 1.5: 24 + 9 + 10.5 + 250 = 293.5; 4 slots: 1024 cells, mask 1: 24 + 8 + 10 + 250 = 292
    assert [a["change"] for a in alts[-3:]] == ["model: small (Q8_0) + parallel: 2", "model: small (Q8_0) + parallel: 3",
                                                "model: small (Q8_0) + parallel: 4"]
    assert [(a["fits"], a["device_total_mib"]) for a in alts[-3:]] == [(True, 293), (True, 293.5), (True, 292)]
    assert alts[-3]["workload"]["slots"] == 2
    assert "at the declared load 88% busy, TTFT p95" in f["message"]
    # with 2 slots already, only 3 and 4 are proposed; a light load proposes none
    two = by_code(cuda_toy_plan([{"gpu": 0, "args": dict(TOY_ARGS, parallel=2)}], **wl(900)), "does-not-fit")[0]
    assert [a["change"] for a in two["alternatives"] if "+ parallel" in a["change"]] == [
        "model: small (Q8_0) + parallel: 3", "model: small (Q8_0) + parallel: 4"]
    light = by_code(cuda_toy_plan([{"gpu": 0}], **wl(60)), "does-not-fit")[0]
    assert not any("+ parallel" in a["change"] for a in light["alternatives"])


@pytest.mark.parametrize("change,args", [
    ("cache_type_k/v: q4_0", {"cache_type_k": "q4_0", "cache_type_v": "q4_0", "flash_attn": "on"}),
    ("ctx_size: 4096", {"ctx_size": 4096}),
    ("parallel: 3", {"parallel": 3}),
    ("n_gpu_layers: 20", {"n_gpu_layers": 20}),
    ("model: q4 (Q4_K_M)", {}),
    ("something else", {}),
])
def test_change_args(change, args):
    assert _change_args(change, {"ctx_size": 8192}) == args


def test_slots_added_to_a_non_model_change_keep_that_change():
    # only ctx/ngl changes fit (no smaller model declared in this family): slots go on top of that change
    hv = {"llamafleet_backend": "cuda", "llamafleet_gpus": [TOY_GPU], "llamafleet_cuda_overhead_mib": 250,
          "llamafleet_models": {"toy": {"path": "/m/toy.gguf", "sha256": SHA}}}
    result = plan([toy_host([{"gpu": 0}], **wl(900), **hv)], {"h": {"toy": TOYS["toy"]}})
    alts = by_code(result, "does-not-fit")[0]["alternatives"]
    assert alts[0]["change"] == "cache_type_k/v: q4_0"
    first_fit = next(a for a in alts if a["fits"])
    # ngl 4 (313) and 3 (301) do not fit, ngl 2 does (289): see test_does_not_fit_alternatives_by_hand
    assert first_fit["change"] == "n_gpu_layers: 2"
    extra = [a for a in alts if "+ parallel" in a["change"]]
    assert [a["change"] for a in extra] == ["n_gpu_layers: 2 + parallel: 2", "n_gpu_layers: 2 + parallel: 3",
                                            "n_gpu_layers: 2 + parallel: 4"]
    assert all(a["gpu_layers"] == "1/4+output" for a in extra)


@pytest.mark.parametrize("archs,cc,covered", [
    ("61-real", 61, True), ("60-real", 61, True),     # SASS runs on the same major at an equal or higher minor
    ("62-real", 61, False), ("61-real", 75, False),   # not on a lower minor, nor on another major
    ("61", 61, True), ("61", 75, True),               # a bare number is real + virtual: PTX runs on newer GPUs
    ("61-virtual", 75, True), ("61-virtual", 61, True), ("75-virtual", 61, False),  # PTX: JIT for equal or newer
    ("sm_61", 61, True), ("compute_61-virtual", 86, True),
    ("native", 61, True), ("all", 61, True), ("all-major", 61, True),
    ("75-real;86-real", 61, False), ("75-real, 61-real", 61, True), ("50-virtual;;75-real", 61, True),
    ("120a-real", 61, False), ("x-real;61-real", 61, True), ("", 61, False),
    ("61-real,75-real", 61, True), ("75-real;;61-real", 61, True),
])
def test_arch_covers(archs, cc, covered):
    assert arch_covers(archs, cc) is covered


def test_cuda_arch_message_names_the_fix():
    [f] = by_code(cuda_toy_plan([{"gpu": 0}], gpu=dict(TOY_GPU, memory_mib=1000, compute_capability="6.1"),
                                llamacpp_build_cuda_architectures="75-real"), "cuda-arch-unsupported")
    assert f["message"] == ("h: CMAKE_CUDA_ARCHITECTURES=75-real has no code for Toy GPU (compute capability 6.1); its "
                            "kernels would fail to load. Set llamacpp_build_cuda_architectures: '61-real' (or leave it unset)")
    # CUDA 13 on a 7.0 GPU: refused; on 7.5: fine; CUDA 12.9 on 6.1: fine
    volta = dict(TOY_GPU, memory_mib=1000, compute_capability="7.0")
    [f] = by_code(cuda_toy_plan([{"gpu": 0}], gpu=volta, llamacpp_build_cuda_version="13.0"), "cuda-arch-unsupported")
    assert f["message"].startswith("h: CUDA 13.0 cannot build for Toy GPU (compute capability 7.0): CUDA 13 dropped")
    turing = dict(TOY_GPU, memory_mib=1000)
    assert by_code(cuda_toy_plan([{"gpu": 0}], gpu=turing, llamacpp_build_cuda_version="13.0.1"), "cuda-arch-unsupported") == []
    pascal = dict(TOY_GPU, memory_mib=1000, compute_capability="6.1")
    assert by_code(cuda_toy_plan([{"gpu": 0}], gpu=pascal, llamacpp_build_cuda_version="12.9.1"), "cuda-arch-unsupported") == []


def test_cuda_graphs_info_names_the_card():
    [f] = by_code(cuda_toy_plan([{"gpu": 0}], gpu=dict(TOY_GPU, memory_mib=1000, compute_capability="6.9")),
                  "cuda-graphs-inactive")
    assert f["level"] == "info" and "Toy GPU is 6.9" in f["message"]
    assert by_code(cuda_toy_plan([{"gpu": 0}], gpu=dict(TOY_GPU, memory_mib=1000, compute_capability="7.0")),
                   "cuda-graphs-inactive") == []


def test_partial_offload_message():
    [f] = by_code(cuda_toy_plan([{"gpu": 0, "args": dict(TOY_ARGS, n_gpu_layers=3)}], gpu=dict(TOY_GPU, memory_mib=1000)),
                  "partial-offload")
    # ngl 3: the output layer and layers 2-3 on the GPU; host: token_embd 2 + layers 0-1 20 = 22 MiB
    assert f["message"] == ("s0: only 2/4 layers are on Toy GPU; 22 MiB of weights are read by "
                            "the CPU for every token, which dominates decode speed. Fit the model (smaller quantization "
                            "or context) to offload all 5 layers")
    [f] = by_code(cuda_toy_plan([{"gpu": 0, "args": dict(TOY_ARGS, n_gpu_layers=4)}], gpu=dict(TOY_GPU, memory_mib=1000)),
                  "partial-offload")
    assert "only 3/4 layers are on Toy GPU; 12 MiB of weights" in f["message"]  # token_embd 2 + layer 0 10
    # ngl 0: nothing offloaded, the output layer neither: all 46 MiB
    [f] = by_code(cuda_toy_plan([{"gpu": 0, "args": dict(TOY_ARGS, n_gpu_layers=0)}], gpu=dict(TOY_GPU, memory_mib=1000)),
                  "partial-offload")
    assert "only 0/4 layers (output layer on the CPU) are on Toy GPU; 46 MiB of weights" in f["message"]
    assert by_code(cuda_toy_plan([{"gpu": 0, "args": dict(TOY_ARGS, n_gpu_layers=5)}], gpu=dict(TOY_GPU, memory_mib=1000)),
                   "partial-offload") == []


# -- describing models without touching a host ----------------------------------------------------------
SMALL_SHAPE = dict(architecture="llama", n_layer=2, n_embd=256, n_head=4, n_head_kv=2, head_dim=64, n_ff=512,
                   n_vocab=512, n_ctx_train=2048)


def test_describe_model_reads_the_controller_file_first(tmp_path):
    write_model(str(tmp_path / "m.gguf"), SMALL_SHAPE, "Q8_0")
    # a relative src is found under the controller root, and wins over a declared shape
    info = describe_model("m", {"src": "m.gguf", "shape": "llama-3.1-8b", "quantization": "Q4_K_M"}, str(tmp_path / "c"),
                          controller_root=str(tmp_path))
    assert (info.n_layer, info.n_embd) == (2, 256) and info.source.startswith("llamafleet_models.m (")
    # the host path, when the controller is the host
    info = describe_model("m", {"path": str(tmp_path / "m.gguf")}, str(tmp_path / "c"))
    assert info.n_layer == 2


def test_describe_model_from_a_declared_shape():
    info = describe_model("m", {"path": "/nowhere/m.gguf", "shape": "llama-3.1-8b", "quantization": "Q4_K_M"}, "/tmp")
    assert info.name == "llama-3.1-8b Q4_K_M (declared shape)" and info.n_layer == 32


@pytest.mark.parametrize("spec,message", [
    ({"src": "missing.gguf"}, "llamafleet_models.m.src: {root}/missing.gguf does not exist on the controller"),
    ({"path": "/nowhere/m.gguf", "shape": "llama-99b", "quantization": "Q4_K_M"},
     "llamafleet_models.m: llamafleet_models.m: shape 'llama-99b' is not catalogued; valid: llama-3.1-8b"),
    ({"path": "/nowhere/m.gguf", "shape": "llama-3.1-8b"}, "llamafleet_models.m: quantization '' has no known mix"),
    ({"path": "/nowhere/m.gguf"}, "llamafleet_models.m: nothing to plan from: /nowhere/m.gguf is not on the controller "
                                  "and there is no src, url or shape + quantization"),
    ({"src": "bad.gguf"}, "llamafleet_models.m: llamafleet_models.m ({root}/bad.gguf): not a GGUF file"),
])
def test_describe_model_errors_name_the_model(tmp_path, spec, message):
    (tmp_path / "bad.gguf").write_bytes(b"NOPE" + bytes(64))
    with pytest.raises(PlanError) as err:
        describe_model("m", spec, str(tmp_path / "c"), controller_root=str(tmp_path))
    assert str(err.value).startswith(message.format(root=tmp_path))


def test_describe_model_unreadable_file(tmp_path):
    # a file that exists but cannot be read (even by root): reading /proc/self/mem at offset 0 fails with EIO
    with pytest.raises(PlanError) as err:
        describe_model("m", {"src": "/proc/self/mem"}, str(tmp_path / "c"))
    assert str(err.value) == "llamafleet_models.m: cannot read the GGUF header ([Errno 5] Input/output error)"


def test_describe_model_caches_descriptions_where_told(tmp_path):
    write_model(str(tmp_path / "m.gguf"), SMALL_SHAPE, "Q8_0")
    # a relative src without controller_root is relative to the current directory
    rel = os.path.relpath(tmp_path / "m.gguf")
    info = describe_model("m", {"src": rel}, str(tmp_path / "cache"))
    assert info.n_embd == 256 and len(list((tmp_path / "cache").glob("*.model.json"))) == 1


def test_describe_model_from_a_url_header(http_dir, tmp_path):
    root, base = http_dir
    write_model(str(root / "m.gguf"), SMALL_SHAPE, "Q8_0")
    info = describe_model("m", {"path": "/nowhere/m.gguf", "url": f"{base}/m.gguf"}, str(tmp_path / "cache"))
    assert (info.n_layer, info.n_embd) == (2, 256)
    assert len(list((tmp_path / "cache").glob("*.gguf-header.json"))) == 1


def test_alternatives_follow_family_size_and_current_settings():
    def variant(name, **attrs):
        m = toy(name=name, layer_mib=attrs.pop("layer_mib", 1))
        for key, value in attrs.items():
            setattr(m, key, value)
        return m
    models = {"toy": TOYS["toy"], "small": TOYS["small"], "atiny": toy(name="atiny", layer_mib=2),
              "other": toy(name="other", layer_mib=1),                    # another family
              "same": toy(name="same"),                                   # as big as the toy: no saving
              "big": toy(name="big", layer_mib=20),                       # bigger
              "qwen": variant("qwen", architecture="qwen2"),              # another architecture
              "narrow": variant("narrow", n_embd=256), "shallow": variant("shallow", n_layer=3)}
    families = dict.fromkeys(models, "toy")
    families["other"] = "another"
    hv = {"llamafleet_backend": "cuda", "llamafleet_gpus": [TOY_GPU], "llamafleet_cuda_overhead_mib": 250,
          "llamafleet_models": {n: {"path": f"/m/{n}.gguf", "sha256": SHA, "family": families[n]} for n in models}}
    # already q4_0 K/V, 2 slots of 1024 cells (ctx 2048): KV 2048 x 4 x 2 x 128 x 18/32 B = 1.125 MiB; compute mask
    # 1024 x 512 x 2 B = 1 (one row per token, whatever the streams) + residual 3 + the larger of FFN 6 and attention
    # 3 + F16 copies 1024 x 2 streams x 256 x 2 B = 1: 10 MiB. toy: 44 + 1.125 + 10 + 250 = 305.125 > 300
    args = dict(TOY_ARGS, ctx_size=2048, parallel=2, cache_type_k="q4_0", cache_type_v="q4_0")
    result = plan([toy_host([{"gpu": 0, "args": args}], **hv)], {"h": models})
    [f] = by_code(result, "does-not-fit")
    assert [(a["change"], a["device_total_mib"], a["fits"]) for a in f["alternatives"]] == [
        # smaller files of the same family, shape and architecture, biggest first: small (4 x 5 + 3 + 1 = 24 MiB on
        # the GPU): 24 + 1.125 + 10 + 250 = 285.125; atiny (4 x 2 + 3 + 1 = 12 MiB): 273.125
        ("model: small (Q8_0)", 285.1, True), ("model: atiny (Q8_0)", 273.1, True),
        # no q4_0 entry (it is q4_0 already); ctx 1536: 2 x 768 cells, KV 0.84375, compute mask 0.75 + 9: 304.59
        ("ctx_size: 1536", 304.6, False),
        # ctx 1024: 2 x 512 cells, KV 0.5625, compute 0.5 + 9: 304.06 (512 is below the 1024 floor)
        ("ctx_size: 1024", 304.1, False),
        # one slot less keeps ctx and q4_0: 1 x 2048 cells: same KV, mask 2 MiB + 9 (copies 1 + attention 3 < FFN 6):
        # 44 + 1.125 + 11 + 250 = 306.125
        ("parallel: 1", 306.1, False),
        # layers (compute 1 + 3 + FFN 6 + the 10 MiB CPU matrix = 20): ngl 4: 34 + KV of 3 layers 0.84375 + 20 + 250
        # = 304.84 no; ngl 3: output 3 + norm 1 + layers 2-3 20 = 24 + 0.5625 + 20 + 250 = 294.56
        ("n_gpu_layers: 3", 294.6, True),
    ]
    assert [a["gpu_layers"] for a in f["alternatives"]] == ["4/4+output"] * 5 + ["2/4+output"]
    # a model without a KV cache gets no KV or context alternatives
    enc_hv = dict(hv, llamafleet_models={"enc": {"path": "/m/enc.gguf", "sha256": SHA}})
    enc = {"gpu": 0, "role": "embed", "model": "enc", "args": {"embeddings": True, "ctx_size": 512, "ubatch_size": 512,
                                                               "batch_size": 512}}
    small_gpu = dict(TOY_GPU, memory_mib=100)
    result = plan([toy_host([enc], **dict(enc_hv, llamafleet_gpus=[small_gpu]))], {"h": {"enc": TOYS["enc"]}})
    [f] = by_code(result, "does-not-fit")
    # (and no number of GPU layers fits 100 MiB beside 250 MiB of CUDA overhead: nothing is proposed)
    assert f["alternatives"] == []


def test_full_texts_of_the_advice_findings():
    enc = {"role": "embed", "model": "enc", "args": {"embeddings": True, "ctx_size": 512, "ubatch_size": 512,
                                                     "batch_size": 512, "cache_type_v": "q8_0", "flash_attn": "on"}}
    [f] = by_code(toy_plan([enc]), "kv-cache-type-no-effect")
    # encoder compute at 512 tokens: mask 0.5 + residual 3 + FFN 6 = 9.5 MiB, shown rounded
    assert f["message"] == ("s0: nomic-bert creates no KV cache, so cache_type_k/cache_type_v save 0 MiB; remove them "
                            "(its memory is weights 46 MiB + compute 10 MiB)")
    [f] = by_code(toy_plan([{"args": dict(TOY_ARGS, load_mode="mlock")}]), "mlock-without-memlock-limit")
    assert f["message"] == ("s0: load_mode mlock asks to lock memory, but Docker's default RLIMIT_MEMLOCK is 64 KiB-8 MiB; "
                            "llama.cpp warns 'failed to mlock' and goes on unlocked. Add ulimits: ['memlock:-1:-1'] or "
                            "drop mlock")
    [f] = by_code(toy_plan([{}]), "cont-batching-single-slot")
    assert f["message"] == ("s0: continuous batching (on by default) mixes new prompts into other slots' decoding; with "
                            "parallel: 1 there is no other slot, so it does nothing. Use parallel >= 2 for it to help")
    [f] = by_code(toy_plan([{"args": dict(TOY_ARGS, cache_reuse=256, cache_prompt=False)}]), "cache-reuse-without-shift")
    assert f["message"] == ("s0: cache_reuse 256 is switched off by llama-server because prompt caching is off "
                            "(cache_prompt: false). Note cache_reuse is the minimum chunk length reused by KV shifting, "
                            "not a slot count; remove it or fix the cause")
    swa_models = {"swa": toy(n_swa=256, swa_layers=(True, True, True, False))}
    hv = {"llamafleet_models": {"swa": {"path": "/m/swa.gguf", "sha256": SHA}}}
    [f] = by_code(plan([toy_host([{"model": "swa", "args": dict(TOY_ARGS, cache_reuse=64)}], **hv)], {"h": swa_models}),
                  "cache-reuse-without-shift")
    assert "because its sliding-window cache cannot shift unless swa_full: true." in f["message"]
    assert by_code(plan([toy_host([{"model": "swa", "args": dict(TOY_ARGS, cache_reuse=64, swa_full=True)}], **hv)],
                        {"h": swa_models}), "cache-reuse-without-shift") == []
    [f] = by_code(cuda_toy_plan([{"gpu": 0}], gpu=dict(TOY_GPU, memory_mib=1000, compute_capability="6.1")),
                  "cuda-graphs-inactive")
    assert f["message"] == ("s0: CUDA graphs are built in but llama.cpp turns them off at run time below compute "
                            "capability 7.0; Toy GPU is 6.1, so rebuilding 'with CUDA graphs' changes nothing here")
    [f] = by_code(cuda_toy_plan([{"gpu": 0}], gpu=dict(TOY_GPU, memory_mib=1000, compute_capability="6.1"),
                                llamacpp_build_cuda_version="13.0.1"), "cuda-arch-unsupported")
    assert f["message"] == ("h: CUDA 13.0.1 cannot build for Toy GPU (compute capability 6.1): CUDA 13 dropped "
                            "sm_5x/6x/7.0. Set llamacpp_build_cuda_version: 12.9.1 (the last toolkit for it), or leave it unset")


def test_capacity_message_in_full():
    [f] = by_code(toy_plan([{}], **CPU_FIGURES, **wl(90)), "capacity-exceeded")
    assert f["message"] == ("model toy: 90 requests/min x 256 reply tokens = 384 tok/s across 1 slot(s); each request "
                            "holds a slot 0.7 s, utilisation 105% (the queue grows without bound). Fixes: more slots per "
                            "server (parallel: 2-4; batched decode reads the weights once for all), a smaller "
                            "quantization, or more servers")


def test_alternatives_are_predicted_for_the_declared_prompt_and_reply():
    # 1024-token prompts and 128-token replies: a decode step of the small model reads the KV of 1024 + 64 tokens,
    # 1088 x 2,048 B = 2,228,224 B, + 24 MiB of weights = 27,394,048 B at 6e10 B/s: 456.57 us -> 2,190.26 tok/s
    # (the defaults, 512 + 256, would give 2,266.1)
    result = cuda_toy_plan([{"gpu": 0}], **wl(60, prompt=1024, reply=128))
    [f] = by_code(result, "does-not-fit")
    first = f["alternatives"][0]
    assert first["change"] == "model: small (Q8_0)" and first["decode_tps"] == 2190.3
    # a request holds its slot 1024 / 131,831.45 + 456.57 us + 128 / 2,190.26 = 0.06669 s; 1/s: 6.7% busy
    assert first["workload"]["utilisation"] == 0.067  # rounded to 3 places
    assert "Fixes for s0: model: small (Q8_0) -> 295 MiB (fits with 5 MiB to spare), 2190.3 tok/s, TTFT 0.0 s, " \
           "at the declared load 7% busy, " \
           "TTFT p95 0.0 s; " in f["message"]


def test_alternatives_keep_the_server_settings_they_do_not_change():
    # ctx 2048, 1 slot, FA off, f16: KV 4 MiB; compute F32 mask 2048 x 512 x 4 B = 4 + residual 3 + attention 3 +
    # KQ 8 x 2048 x 512 x 4 B = 32: 42 MiB; 44 + 4 + 42 + 250 = 340 MiB
    args = dict(TOY_ARGS, ctx_size=2048, flash_attn="off")
    [f] = by_code(cuda_toy_plan([{"gpu": 0, "args": args}]), "does-not-fit")
    assert [(a["change"], a["device_total_mib"], a["fits"]) for a in f["alternatives"]] == [
        ("model: small (Q8_0)", 320, False),          # 24 + 4 + 42 + 250
        # q4_0 turns FA on: KV 1.125, compute F16 mask 2 + 3 + the larger of FFN 6 and attention 3 + F16 copies
        # 2048 x 256 x 2 B = 1: 11: 306.125
        ("cache_type_k/v: q4_0", 306.1, False),
        # ctx 1536, FA still off: KV 3, compute 3 + 3 + 3 + 24 = 33: 330; ctx 1024: KV 2, 2 + 3 + 3 + 16 = 24: 320
        ("ctx_size: 1536", 330, False), ("ctx_size: 1024", 320, False),
        # GPU layers (the output layer first; compute stays 42: KQ 32 + 3 > FFN 6 + the 10 MiB CPU matrix):
        # 4 -> 30 + 4 + 3 + 42 + 250 = 329, 3 -> 24 + 2 + 42 + 250 = 318, 2 -> 14 + 1 + 42 + 250 = 307;
        # 1 -> i_gpu_start = 4 + 1 - 1 = 4: only output 3 + norm 1 on the GPU, no KV: 4 + 0 + 42 + 250 = 296
        ("n_gpu_layers: 1", 296, True),
    ]
    assert f["alternatives"][-1]["gpu_layers"] == "0/4+output"


def test_the_context_search_stops_at_the_first_fit_and_goes_on_to_layers():
    # 310 MiB: q4_0 (309.25) fits; ctx 3072 (312) does not, ctx 2048 (309) does and ends the context search;
    # layers are still tried: ngl 4 (313) no, ngl 3 (301) yes (see test_does_not_fit_alternatives_by_hand)
    [f] = by_code(cuda_toy_plan([{"gpu": 0}], gpu=dict(TOY_GPU, memory_mib=310)), "does-not-fit")
    assert [(a["change"], a["fits"]) for a in f["alternatives"]] == [
        ("model: small (Q8_0)", True), ("cache_type_k/v: q4_0", True), ("ctx_size: 3072", False),
        ("ctx_size: 2048", True), ("n_gpu_layers: 3", True)]
    # a change that lands exactly on the capacity fits: small needs 295 MiB
    [f] = by_code(cuda_toy_plan([{"gpu": 0}], gpu=dict(TOY_GPU, memory_mib=295)), "does-not-fit")
    assert (f["alternatives"][0]["device_total_mib"], f["alternatives"][0]["fits"]) == (295, True)


def test_alternatives_under_load_count_only_this_models_chat_servers():
    gpus = [TOY_GPU, dict(TOY_GPU, index=1, memory_mib=1000)]
    # s0 (toy) does not fit GPU 0; s1 serves another model on GPU 1 and must not be counted in s0's pool
    result = toy_plan([{"gpu": 0}, {"gpu": 1, "model": "small"}], llamafleet_backend="cuda", llamafleet_gpus=gpus,
                      llamafleet_cuda_overhead_mib=250, **wl(60, prompt=1024, reply=128))
    [f] = by_code(result, "does-not-fit")
    first = f["alternatives"][0]
    assert first["workload"]["model"] == "toy" and first["workload"]["slots"] == 1
    # 1024 / 131,831.45 s + 456.57 us = 8.224 ms, shown to 2 places
    assert (first["ttft_s"], first["gpu_layers"]) == (0.01, "4/4+output")


def test_prefill_without_integer_throughput_uses_fp32():
    # CC 6.0 has no dp4a: int8_tops 0, so the quantized matmuls run at the FP32 rate: 10 TFLOPS x 0.235 /
    # 17,825,792 FLOP per token = 131,831.45 tok/s (the same as 10 TOPS on the toy GPU)
    gpu = dict(TOY_GPU, memory_mib=1000, int8_tops=0, fp32_tflops=10, compute_capability="6.0")
    [row] = cuda_toy_plan([{"gpu": 0}], gpu=gpu)["servers"]
    assert row["speed"]["prefill_tps"] == pytest.approx(131_831.45, abs=0.01)


def test_plan_figures_are_rounded_to_a_tenth():
    # q8_0 KV: 4.25 MiB; CPU host without reserve: 46 + 4.25 + 13 + 64 + 100 + output buffer 4,000 B (0.0038)
    # = 227.2538 MiB, shown 227.3; free 772.7462, shown 772.7
    result = toy_plan([{"args": dict(TOY_ARGS, cache_type_k="q8_0", cache_type_v="q8_0")}], llamafleet_host_memory_mib=1000,
                      llamafleet_host_reserved_mib=0)
    assert result["hosts"][0]["planned_mib"] == 227.3
    assert (result["devices"][0]["planned_mib"], result["devices"][0]["free_mib"]) == (227.3, 772.7)
    assert result["servers"][0]["memory_mib"]["context"] == 4.2
    # weights of 4 x 10.0625 + 6 = 46.25 MiB, shown 46.2
    models = {"toy": toy(layer_mib=10.0625)}
    row = plan([toy_host([{}])], {"h": dict(TOYS, **models)})["servers"][0]
    assert row["host_memory_mib"]["model"] == 46.2
    # CUDA at ubatch 200: compute = mask 4096 x 256 rows x 2 B = 2,097,152 + residual 3 x 512 x 200 x 4 = 1,228,800 +
    # the larger of FFN 3 x 1024 x 200 x 4 = 2,457,600 B and attention 768 x 200 x 8 B = 1,228,800 + F16 copies
    # 2,097,152 = 3,325,952 B: 6,651,904 B = 6.34375 MiB; with KV 4.25, weights 44 and 250: 304.59375 MiB on a
    # 1000 MiB GPU. CPU graph inputs: 512 x 200 x 12 B = 1.171875 MiB
    args = dict(TOY_ARGS, cache_type_k="q8_0", cache_type_v="q8_0", ubatch_size=200)
    result = cuda_toy_plan([{"gpu": 0, "args": args}], gpu=dict(TOY_GPU, memory_mib=1000))
    assert (result["devices"][0]["planned_mib"], result["devices"][0]["free_mib"]) == (304.6, 695.4)
    assert result["servers"][0]["host_memory_mib"]["compute"] == 1.2
    # ubatch 512: attention 3 + copies 2 = 5 MiB < FFN 6: compute 4 + 3 + 6 = 13; 44 + 4.25 + 13 + 250 = 311.25 on the
    # 300 MiB toy GPU, shown 311.2
    result = cuda_toy_plan([{"gpu": 0, "args": dict(TOY_ARGS, cache_type_k="q8_0", cache_type_v="q8_0")}])
    [f] = by_code(result, "does-not-fit")
    assert f["planned_mib"] == 311.2


def test_two_servers_on_one_gpu_are_both_itemised():
    two = cuda_toy_plan([{"gpu": 0, "model": "small"}, {"gpu": 0}], gpu=dict(TOY_GPU, memory_mib=600))
    [f] = by_code(two, "does-not-fit")
    assert f["message"].startswith(
        "cuda:0 (Toy GPU, 600 MiB) needs 610 MiB: s0 295 MiB (model 24 + context 8 + compute 13 + CUDA 250), "
        "s1 315 MiB (model 44 + context 8 + compute 13 + CUDA 250). Fixes for s1: ")


def test_host_ram_edge_cases():
    # two servers that read the file without mmap: each holds its own copy: 2 x (46 + 85 + 100)
    result = toy_plan([{"args": dict(TOY_ARGS, load_mode="dio")}] * 2, llamafleet_host_reserved_mib=0)
    assert result["hosts"][0]["planned_mib"] == 462
    # a container smaller than the mapped weights holds nothing of its own beyond them
    result = toy_plan([{"container_memory": "32m"}], llamafleet_host_reserved_mib=0)
    assert result["hosts"][0]["planned_mib"] == 46
    # CUDA, one file mapped by two servers with different offloads: the larger CPU view counts (ngl 3: 26 MiB)
    gpu = dict(TOY_GPU, memory_mib=1000)
    result = cuda_toy_plan([{"gpu": 0, "args": dict(TOY_ARGS, n_gpu_layers=3)}, {"gpu": 0}], gpu=gpu,
                           llamafleet_host_reserved_mib=0)
    # (ngl 3 now offloads the output layer, but output and output_norm lie between token_embd and blk.1 in the
    # file, so the mapped range is still 2 + 3 + 1 + 2 x 10 = 26 MiB)
    # s0: 26 mapped + own (KV of 2 CPU layers 4 + inputs 3 + output buffer 0.0038 + 224 + cache 100) = 331.0038;
    # s1: 2 mapped + 3 + 0.0038 + 224 + 100 = 327.0038: 684.0076
    assert result["hosts"][0]["planned_mib"] == 684.0
    # the RAM planned (1,440.0076, see test_host_memory_overcommitted_error_and_warning) fits in 1,441 MiB with
    # 0.9924 free (shown 1.0), not in 1,440
    result = toy_plan([{}, {}], llamafleet_host_memory_mib=1441)
    assert result["devices"][0]["fits"] and result["devices"][0]["free_mib"] == 1.0
    assert not toy_plan([{}, {}], llamafleet_host_memory_mib=1440)["devices"][0]["fits"]


def test_speeds_and_workloads_use_the_declared_prompt_and_reply():
    # 1024-token prompts, 128-token replies: KV read (1024 + 64) x 2,048 B = 2,228,224 B + 46,137,344 B of weights at
    # 20 GB/s: 2,418.28 us -> 413.52 tok/s (the default 512 + 256 would give 421.51)
    result = toy_plan([{}], **CPU_FIGURES, **wl(10, prompt=1024, reply=128))
    assert result["servers"][0]["speed"]["decode_tps"] == pytest.approx(413.52, abs=0.01)
    assert result["workloads"][0]["model"] == "toy"
    # a model whose workload has no chat server is skipped, the next one is still planned
    enc = {"role": "embed", "model": "enc", "args": {"embeddings": True, "ctx_size": 512, "ubatch_size": 512,
                                                     "batch_size": 512}}
    both = {"llamafleet_workload": {"enc": {"requests_per_minute": 1, "prompt_tokens": 100, "reply_tokens": 1},
                                    "toy": {"requests_per_minute": 1, "prompt_tokens": 100, "reply_tokens": 1}}}
    result = toy_plan([enc, {}], **both)
    assert [w["model"] for w in result["workloads"]] == ["toy"]


def test_container_advice_rounds_to_64_mib():
    # ctx 3072: KV 6 + compute (mask 3 + residual 3 + FFN 6) 12 + weights 46 + process 64 = 128 MiB + the output
    # buffer 4,000 B = 128.0038 MiB; the advice adds 64 MiB of headroom (192.0038) and rounds UP to 64: 256m
    args = dict(TOY_ARGS, ctx_size=3072)
    [f] = by_code(toy_plan([{"container_memory": "127m", "args": args}]), "container-memory-too-small")
    assert f["message"].endswith("Set container_memory: 256m")
    # room for the prompt cache, rounded down to 64 MiB: 260 - 131.0038 = 128.996 -> 128; 259 - 131.0038 = 127.996
    # -> 64; 132 - 131.0038 = 0.996 -> 0
    [f] = by_code(toy_plan([{"container_memory": "260m", "args": dict(TOY_ARGS, cache_ram=200)}]), "prompt-cache-exceeds-container")
    assert "Set cache_ram: 128 (what fits)" in f["message"]
    [f] = by_code(toy_plan([{"container_memory": "259m", "args": dict(TOY_ARGS, cache_ram=200)}]), "prompt-cache-exceeds-container")
    assert "Set cache_ram: 64 (what fits)" in f["message"]
    [f] = by_code(toy_plan([{"container_memory": "132m"}]), "prompt-cache-exceeds-container")
    assert "Set cache_ram: 0 (what fits)" in f["message"]


def test_cache_reuse_of_one_token_is_still_on():
    [f] = by_code(toy_plan([{"args": dict(TOY_ARGS, cache_reuse=1, cache_prompt=False)}]), "cache-reuse-without-shift")
    assert f["message"].startswith("s0: cache_reuse 1 is switched off")


def test_summary_counts_warnings_and_the_fleet_is_published():
    # 1,441 MiB holds the 1,440.0076 planned (see test_host_memory_overcommitted_error_and_warning)
    result = toy_plan([{}, {}], llamafleet_host_memory_mib=1441)
    assert result["summary"] == {"errors": 0, "warnings": 1, "infos": 2, "fits": True}
    assert list(result["fleet"]) == ["h"]


def test_cuda_13_refusal_is_an_error():
    [f] = by_code(cuda_toy_plan([{"gpu": 0}], gpu=dict(TOY_GPU, memory_mib=1000, compute_capability="6.1"),
                                llamacpp_build_cuda_version="13.0.1"), "cuda-arch-unsupported")
    assert f["level"] == "error"


def test_one_slot_less_and_slots_on_top_keep_the_rest():
    # 3 slots under load: "parallel: 2" is planned with 2 slots (its workload pool has 2)
    [f] = by_code(cuda_toy_plan([{"gpu": 0, "args": dict(TOY_ARGS, parallel=3)}], **wl(60)), "does-not-fit")
    [fewer] = [a for a in f["alternatives"] if a["change"] == "parallel: 2"]
    assert fewer["workload"]["slots"] == 2
    # ctx 2048 under heavy load: small fits (24 + 4 + 11 + 250 = 289) and gets slots on top at ctx 2048 still:
    # 2 x 1024 cells: KV 4, mask 1024 x 512 x 2 B = 1 (one stream's cells) + 3 + 6: 24 + 4 + 10 + 250 = 288 (2 x 2048
    # cells at ctx 4096 would make it 24 + 8 + 11 + 250 = 293)
    [f] = by_code(cuda_toy_plan([{"gpu": 0, "args": dict(TOY_ARGS, ctx_size=2048)}], **wl(900)), "does-not-fit")
    [two] = [a for a in f["alternatives"] if a["change"] == "model: small (Q8_0) + parallel: 2"]
    assert two["device_total_mib"] == 288


def test_partially_offloaded_rows_show_their_layers():
    result = cuda_toy_plan([{"gpu": 0, "args": dict(TOY_ARGS, n_gpu_layers=3)}], gpu=dict(TOY_GPU, memory_mib=1000))
    assert result["servers"][0]["gpu_layers"] == "2/4+output"  # ngl 3: the output layer and layers 2-3


def test_inputs_later_plays_read_are_errors_of_the_plan():
    host = normalize_host("h", cuda_host())
    problems = {"h": [("api-key-invalid", "llama_server_api_key must be 16 or more letters ...; it contains a space")]}
    result = plan([host], {"h": MODELS}, input_problems=problems)
    [f] = [f for f in result["findings"] if f["code"] == "api-key-invalid"]
    assert (f["level"], f["host"], f["server"]) == ("error", "h", None)
    assert f["message"].startswith("h: llama_server_api_key must be")
    assert result["summary"]["errors"] == plan([host], {"h": MODELS})["summary"]["errors"] + 1


def test_host_cpu_says_what_the_fleet_takes_of_declared_cores():
    assert "host-cpu" not in codes(cuda_host())  # no cores declared: nothing to hold them against
    [f] = [f for f in findings(cuda_host(llamafleet_host_cpu_cores=2)) if f["code"] == "host-cpu"]
    # one chat server, two cores: no spinning beyond the cores; the watchdog over 2 servers at the lab's
    # 1.89 s of CPU a minute for 16: 2 x 1.89 / 60 / 16 = 0.39% of one core
    assert f["level"] == "info" and f["fleet_cpu_share"] == pytest.approx(0.0039, abs=1e-4)
    assert "h: 2 CPU core(s); the fleet's own work takes about 0.4% of one core" in f["message"]


def test_host_cpu_warns_when_cuda_servers_outnumber_the_cores():
    two_cards = cuda_host(llamafleet_host_cpu_cores=1, llamafleet_gpus=[{"index": 0, "name": "P106-100"},
                                                                         {"index": 1, "name": "P106-100"}])
    two_cards["llamafleet_servers"].append(dict(copy.deepcopy(two_cards["llamafleet_servers"][0]),
                                                name="chat-1", gpu=1, port=8101))
    [f] = [f for f in findings(two_cards) if f["code"] == "host-cpu"]
    assert f["level"] == "warning" and f["chat_servers"] == 2
    assert "2 chat servers on CUDA outnumber the cores: each llama-server waits for its GPU by spinning" in f["message"]
    # the same servers with a core each: info
    [f] = [f for f in findings(dict(two_cards, llamafleet_host_cpu_cores=2)) if f["code"] == "host-cpu"]
    assert f["level"] == "info" and "spinning" not in f["message"]
