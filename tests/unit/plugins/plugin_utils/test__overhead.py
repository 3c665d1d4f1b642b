"""CUDA overhead per process: the fit to public and measured readings, worked by hand."""
from __future__ import annotations

import pytest

from ansible_collections.llamafleet.fleet.plugins.module_utils.llamafleet_gpus import describe_gpu
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._memory import server_memory
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._overhead import estimate, max_threads_per_sm
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._shapes import model_info_from_shape

P106 = describe_gpu({"index": 0, "name": "P106-100"}, "g")
H200 = describe_gpu({"index": 0, "name": "H200"}, "g")
Q4 = model_info_from_shape("llama-3.1-8b", "Q4_K_M", "t")
NOMIC = model_info_from_shape("nomic-embed-text-v1.5", "F16", "t")
USER = {"ctx_size": 8192, "parallel": 1, "batch_size": 128, "ubatch_size": 64, "flash_attn": "on",
        "cache_type_k": "q8_0", "cache_type_v": "q8_0", "n_gpu_layers": 99}


def test_threads_per_sm():
    assert [max_threads_per_sm(cc) for cc in ("6.1", "7.5", "8.0", "8.6", "8.9", "9.0")] == [2048, 1024, 2048, 1536, 1536, 2048]


def test_p106_is_estimated_with_its_uncertainty():
    o = estimate(P106, "Q4_K", True, 64, 14336, 32, 8192)
    # 10 SMs x 2048 threads = 20,480; 94.0 + 0.001877 x 20,480 = 132.4 MiB; no cuBLAS, no pool
    assert o.mib == pytest.approx(132.4, abs=0.1)
    assert (o.source, o.uncertainty_mib) == ("estimated", 90)
    assert o.describe("P106-100") == "CUDA overhead of P106-100 estimated at 132 +/- 90 MiB"


def test_h200_chat_is_measured():
    mem = server_memory(Q4, USER, "cuda", "cuda:0", gpu=H200)
    # mean of the six chat readings (608, 609, 610, 610, 608, 613) = 609.7 MiB
    assert mem.overhead == pytest.approx(609.7, abs=0.1)
    assert mem.overhead_detail.source == "measured"
    # nvidia-smi after work, seed-q4km: 5,586 MiB; model 4,403.5 + context 544 + compute 39 + 609.7
    assert mem.total == pytest.approx(5586, rel=0.03)


def test_h200_f16_embedding_server_adds_cublas_and_pool():
    args = {"embeddings": True, "ctx_size": 2048, "batch_size": 2048, "ubatch_size": 2048, "parallel": 1,
            "n_gpu_layers": 99}
    mem = server_memory(NOMIC, args, "cuda", "cuda:0", gpu=H200)
    # 609.7 + cuBLAS 70 + pool 2 x 2048 tokens x 3072 (n_ff) x 2 B = 24 MiB -> 703.7 (llama.cpp: 702)
    assert mem.overhead == pytest.approx(703.7, abs=0.1)


def test_flash_attention_off_pool_grows_with_the_context():
    o = estimate(P106, "Q4_K", False, 512, 14336, 32, 8192)
    # 132.4 + cuBLAS 70 + KQ and its copy: 2 x 32 heads x 8192 x 512 x 2 B = 512 MiB
    assert o.mib == pytest.approx(132.4 + 70 + 512, abs=0.1)


def test_override_and_calibration_win():
    set_ = server_memory(Q4, USER, "cuda", "cuda:0", cuda_overhead_mib=300, gpu=P106)
    assert (set_.overhead, set_.overhead_detail.source) == (300, "set")
    cal = server_memory(Q4, USER, "cuda", "cuda:0", gpu=P106, calibration={"gpus": {"P106-100": {"overhead_mib": 151, "uncertainty_mib": 6}}})
    assert (cal.overhead, cal.overhead_detail.source, cal.overhead_detail.uncertainty_mib) == (151, "calibrated", 6)


def test_a_gpu_without_sms_is_refused_with_the_knobs():
    gpu = describe_gpu({"index": 0, "name": "Custom", "memory_mib": 8000, "bandwidth_gbs": 200, "fp32_tflops": 5,
                        "int8_tops": 20, "compute_capability": "6.1"}, "g")
    with pytest.raises(ValueError, match="sms.*llamafleet_cuda_overhead_mib.*calibrate.yml"):
        estimate(gpu, "Q4_K", True, 64, 14336, 32, 8192)
