"""Every finding code: one case that makes it fire and one that keeps it quiet."""
from __future__ import annotations

import copy

import pytest

from ansible_collections.llamafleet.fleet.plugins.plugin_utils._inventory import normalize_host
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._plan import plan
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._shapes import model_info_from_shape

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


@pytest.mark.parametrize("code,changes", CASES, ids=[c for c, _ in CASES])
def test_finding_fires(code, changes):
    assert code in codes(cuda_host(**changes))


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
    assert host["gpu_stack"] == {"driver_branch": 580, "cuda_version": "12.9.1", "cuda_architectures": "61-real",
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
