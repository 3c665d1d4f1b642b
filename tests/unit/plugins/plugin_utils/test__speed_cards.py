"""Single-stream decode on every card with a measurement, within 25% (docs/plan.md, speed).

Each case writes down the measured figure and where it comes from; the prediction comes from the
catalogue's card and the model's bytes on the GPU. Llama-2 7B (the public Pascal figures) is not a
catalogued shape: its GPU bytes are computed here by hand, 6.476 B layer parameters plus the Q6_K
output (131.1 M x 6.5625 bits = 107.5 MB): Q4_0 6.476e9 x 4.5/8 + 107.5 MB = 3.750 GB, Q5_0 x 5.5/8
-> 4.560 GB, Q4_K_S (4.57 bits on average, llama.cpp's 3.86 GB file less token_embd) 3.81 GB.
"""
from __future__ import annotations

import pytest

from ansible_collections.llamafleet.fleet.plugins.module_utils.llamafleet_gpus import describe_gpu
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._speed import Device


def device(name: str) -> Device:
    g = describe_gpu({"index": 0, "name": name}, "g")
    return Device("cuda", g["bandwidth_gbs"], g["int8_tops"], 12.0, g["sms"],
                  int(g["compute_capability"].split(".")[0]) >= 7)


def decode_tps(card: str, gpu_bytes: float, n_layer: int, kv_bytes: float = 0.0) -> float:
    dev = device(card)
    return 1.0 / ((gpu_bytes + kv_bytes) / (dev.effective_bandwidth_gbs() * 1e9) + dev.fixed_step_s(n_layer))


CASES = [
    # card, what, GPU bytes, layers, KV bytes read per token, measured tok/s, source
    ("P106-100", "Llama-2 7B Q4_0 tg128", 3.750e9, 32, 0, 30.4, "llama.cpp discussion #15013 (second-hand)"),
    ("GTX 1060 6GB", "Llama-2 7B Q4_0 tg128", 3.750e9, 32, 0, 27.8, "llama.cpp discussion #15013 (second-hand)"),
    ("Tesla P40", "7B Q4_0 tg128", 3.750e9, 32, 0, 56.5, "llama.cpp PR #4766"),
    ("Tesla P40", "7B Q4_K_S tg128", 3.81e9, 32, 0, 54.0, "llama.cpp PR #4766"),
    ("Tesla P40", "7B Q5_0 tg128", 4.560e9, 32, 0, 48.2, "llama.cpp PR #4766"),
    ("H200", "8B Q4_K_M llama-bench tg128", 4403.5 * 2**20, 32, 0, 245.2, "tests/data/cuda-truth/h200-llama-bench.md"),
    ("H200", "8B Q6_K llama-bench tg128", 5872.0 * 2**20, 32, 0, 192.2, "tests/data/cuda-truth/h200-llama-bench.md"),
    # llama-server, one slot, 1000-token prompt + 128 generated: q8_0 KV read 68 KiB x ~1064 tokens per step
    ("H200", "8B Q4_K_M llama-server", 4403.5 * 2**20, 32, 68 * 1024 * 1064, 206.4, "tests/data/cuda-truth/h200.json seed-q4km"),
    ("H200", "8B Q6_K llama-server", 5872.0 * 2**20, 32, 68 * 1024 * 1064, 164.0, "tests/data/cuda-truth/h200.json seed-q6k"),
    ("H200", "8B Q6_K llama-server f16 KV", 5872.0 * 2**20, 32, 128 * 1024 * 1064, 184.1, "tests/data/cuda-truth/h200.json q6k-f16kv"),
]
ROWS: list[str] = []


@pytest.mark.parametrize("card,what,gpu_bytes,n_layer,kv,measured,source", CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_single_slot_decode_within_25_percent(card, what, gpu_bytes, n_layer, kv, measured, source):
    predicted = decode_tps(card, gpu_bytes, n_layer, kv)
    ROWS.append(f"{card:12s} {what:32s} predicted {predicted:6.1f} measured {measured:6.1f} "
                f"({predicted / measured - 1:+.0%}) {source}")
    print(ROWS[-1])
    assert abs(predicted / measured - 1) <= 0.25, ROWS[-1]


def test_effective_bandwidth_by_hand():
    # P106-100: 192.2 x 0.8816 / (1 + 192.2 / 2294) = 169.44 / 1.0838 = 156.3 GB/s (its OpenCL read
    # test: 166.6 GB/s, facts.md); fixed 32 x (14.6 + 2927 / 10) us = 9.83 ms, no CUDA graphs on CC 6.1
    p106 = device("P106-100")
    assert p106.effective_bandwidth_gbs() == pytest.approx(156.3, abs=0.2)
    assert p106.fixed_step_s(32) == pytest.approx(9.83e-3, rel=0.005)
    # H200: 4800 x 0.8816 / (1 + 4800 / 2294) = 4231.7 / 3.0924 = 1368.4 GB/s; graphs on:
    # 32 x (14.6 + 2927 / 132) us x 0.598 = 0.704 ms
    h200 = device("H200")
    assert h200.effective_bandwidth_gbs() == pytest.approx(1368.4, abs=0.5)
    assert h200.fixed_step_s(32) == pytest.approx(0.704e-3, rel=0.01)


def test_slots_share_a_step_h200():
    # llama-batched-bench, Q4_K_M: per-sequence 243 / 220 / 183 / 156 / 104 tok/s at 1/2/3/4/8 sequences;
    # model: step(n) = step(1) + (n - 1) x 0.232 x weights' read time (3.374 ms)
    from ansible_collections.llamafleet.fleet.plugins.plugin_utils._memory import server_memory
    from ansible_collections.llamafleet.fleet.plugins.plugin_utils._shapes import model_info_from_shape
    from ansible_collections.llamafleet.fleet.plugins.plugin_utils._speed import server_speed
    model = model_info_from_shape("llama-3.1-8b", "Q4_K_M", "t")
    for n, measured in ((1, 243), (2, 220), (3, 183), (4, 156), (8, 104)):
        args = {"ctx_size": 8192 * n, "parallel": n, "flash_attn": "on", "cache_type_k": "q8_0",
                "cache_type_v": "q8_0", "n_gpu_layers": 99, "batch_size": 128, "ubatch_size": 64}
        mem = server_memory(model, args, "cuda", "cuda:0")
        s = server_speed(model, mem, device("H200"), prompt_tokens=256, reply_tokens=128)
        per_slot = s.batch_decode_tps / n
        print(f"H200 {n} sequences: predicted {per_slot:.0f} measured {measured} tok/s per sequence")
        assert abs(per_slot / measured - 1) <= 0.25
