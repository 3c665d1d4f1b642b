"""Speed model: roofline figures against facts.md, and the queueing arithmetic."""
from __future__ import annotations

import math

import pytest

from ansible_collections.llamafleet.fleet.plugins.module_utils.llamafleet_gpus import lookup
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._memory import server_memory
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._shapes import model_info_from_shape
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._speed import Device, erlang_c, server_speed, workload

P106 = lookup("P106-100")
DEV = Device("cuda", P106["bandwidth_gbs"], P106["int8_tops"], 12.0)
ARGS = {"ctx_size": 8192, "parallel": 1, "batch_size": 512, "ubatch_size": 512, "flash_attn": "on",
        "cache_type_k": "q8_0", "cache_type_v": "q8_0", "n_gpu_layers": 99}


def speed(quant, **args):
    model = model_info_from_shape("llama-3.1-8b", quant, "t")
    mem = server_memory(model, dict(ARGS, **args), "cuda", "cuda:0")
    return server_speed(model, mem, DEV, prompt_tokens=500, reply_tokens=512)


@pytest.mark.parametrize("quant,low,high", [("Q6_K", 17, 20), ("Q4_K_M", 23, 27)])
def test_decode_on_p106_is_in_the_realistic_range(quant, low, high):
    # facts.md #8: ceilings 31 and 42 tok/s, realistically 55-65% of that
    assert low <= speed(quant).decode_tps <= high


def test_ttft_for_500_tokens_on_p106():
    assert 1.2 <= speed("Q4_K_M").ttft_s <= 2.5  # facts.md #8: ~1.7-2.5 s


def test_partial_offload_reads_cpu_layers_at_host_bandwidth():
    model = model_info_from_shape("llama-3.1-8b", "Q6_K", "t")
    mem = server_memory(model, dict(ARGS, n_gpu_layers=28), "cuda", "cuda:0")
    # ngl 28: output + layers 5-31 on the GPU, layers 0-4 on the CPU (read at the host's 12 GB/s);
    # this Device names no SM count, so the GPU side is the flat 60% of 192.2 GB/s
    cpu_layers = sum(model.layer_bytes(i) for i in range(5))
    expected = 1 / (mem.model * 2**20 / (0.6 * 192.2e9) + cpu_layers / 12e9)
    got = speed("Q6_K", n_gpu_layers=28).decode_tps
    assert got == pytest.approx(expected, rel=0.05)  # the KV read is the rest
    assert got < speed("Q6_K").decode_tps / 2


def test_more_slots_raise_aggregate_throughput():
    one, four = speed("Q4_K_M"), speed("Q4_K_M", parallel=4)
    assert four.batch_decode_tps > 2 * one.batch_decode_tps
    assert four.batch_decode_tps / 4 < one.decode_tps


def test_erlang_c_limits():
    assert erlang_c(1, 0.5) == pytest.approx(0.5)  # M/M/1: P(wait) = rho
    assert erlang_c(4, 4.5) == 1.0
    assert erlang_c(8, 1.0) < 0.01


def test_workload_unstable_when_arrivals_exceed_service():
    s = speed("Q6_K")
    result = workload("m", 15, 500, 512, [s] * 4)  # the first user's setup, one model's half
    assert not result.stable and result.utilisation > 1 and math.isinf(result.ttft_p95_s)


def test_workload_stable_with_enough_slots():
    s = speed("Q4_K_M", parallel=2)
    result = workload("m", 15, 500, 512, [s] * 4)
    assert result.stable and result.ttft_p50_s <= result.ttft_p95_s
    assert result.ttft_p50_s >= s.ttft_s
