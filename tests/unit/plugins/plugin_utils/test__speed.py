"""Speed model: roofline figures against facts.md, hand-worked rooflines on the toy model, and the
queueing arithmetic against textbook M/M/c values."""
from __future__ import annotations

import math

import pytest

from ansible_collections.llamafleet.fleet.plugins.module_utils.llamafleet_gpus import lookup
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._memory import server_memory
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._shapes import model_info_from_shape
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._speed import (
    Device,
    MixRequest,
    Speed,
    busy_beside,
    erlang_c,
    home_hit,
    layer_params,
    mix_workload,
    mixture_quantile,
    prompt_outcomes,
    server_speed,
    shared_step_s,
    stalled_decode_s,
    step_s,
    workload,
)
from tests.support.toy import toy

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
    # facts.md #7: Q6_K is 5,871 MiB on the GPU at full offload, 171 MiB per layer, output.weight 411 MiB.
    # -ngl 28 counts the output layer first (i_gpu_start = n_layer + 1 - ngl = 5): output + layers 5-31 on the
    # GPU, layers 0-4 on the CPU: 5 x 171 = 855 MiB = 896,532,480 B read at the host's 12 GB/s = 0.074711 s;
    # 5,871 - 855 = 5,016 MiB = 5,259,657,216 B at the flat 60% of 192.2 GB/s (this Device names no SM count)
    # = 115.32 GB/s = 0.045609 s: 1 / 0.120320 s = 8.31 tok/s, still far below the full offload
    got = speed("Q6_K", n_gpu_layers=28).decode_tps
    assert got == pytest.approx(8.31, rel=0.03)  # the KV read (27 layers of q8_0) is the rest
    assert got < speed("Q6_K").decode_tps / 2


def test_more_slots_raise_aggregate_throughput():
    one, four = speed("Q4_K_M"), speed("Q4_K_M", parallel=4)
    # a Pascal card decoding 4 sequences at once: 115.5 tok/s in total vs 52.6 alone on a P40
    # (PR #7314, FA on), 2.2x; the weights are read once per step, but each sequence adds its matmuls
    assert 1.6 * one.batch_decode_tps < four.batch_decode_tps < 2.8 * one.batch_decode_tps
    assert four.batch_decode_tps / 4 < one.decode_tps


def test_each_more_slot_adds_its_matmul_work_to_a_step():
    # P40 batched decode (PR #7314, FA on, 7B Q4_0): 52.6 / 96.8 / 115.5 / 147.5 tok/s in total at
    # 1 / 2 / 4 / 8 sequences -> steps of 19.0 / 20.7 / 34.6 / 54.2 ms: (54.2 - 19.0) / 7 = 5.0 ms per sequence.
    # P40: dp4a 47 TOPS; Llama-2 7B block parameters 32 x (4 x 4096^2 + 3 x 4096 x 11008) = 6.48 G.
    llama2 = model_info_from_shape("llama-3.1-8b", "Q4_0", "t")
    p40 = Device("cuda", 347.0, 47.0, 12.0)
    extra = shared_step_s(llama2, p40)
    # Llama-3.1-8B has 6.98 G block parameters (GQA, wider FFN): scale the P40's 5.0 ms by 6.98 / 6.48
    assert extra == pytest.approx(5.0e-3 * 6.98 / 6.48, rel=0.1)


def test_prompts_starting_beside_a_reply_stall_it():
    # 64 tokens at 40 tok/s = 1.6 s alone; one other prompt every 10 s, each 1 s of prefill, holds
    # it 10% of the time: 1.6 / 0.9 = 1.778 s
    assert stalled_decode_s(64, 40.0, 0.1, 1.0) == pytest.approx(1.7778, abs=1e-3)
    assert stalled_decode_s(64, 40.0, 0.0, 1.0) == pytest.approx(1.6)
    assert math.isinf(stalled_decode_s(64, 40.0, 1.0, 1.0))


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


# -- the toy model (tests/support/toy.py) by hand ------------------------------------------------------
# A GPU of 100 GB/s and 10 TOPS on a host of 10 GB/s. Planning efficiencies (facts.md): decode reaches
# 60% of peak bandwidth, prefill 23.5% of the integer peak.
TOY = toy()
GPU = Device("cuda", 100.0, 10.0, 10.0)
ONE = {"ctx_size": 4096, "parallel": 1, "flash_attn": "on"}


def test_toy_layer_params():
    # per layer: Q and O 8 x 64 x 512 each, K and V 2 x 64 x 512 each, FFN 3 x 512 x 1024 = 2,228,224; x 4 layers
    assert layer_params(TOY) == 8_912_896


def test_toy_decode_and_prefill_fully_offloaded():
    mem = server_memory(TOY, ONE, "cuda", "cuda:0")
    s = server_speed(TOY, mem, GPU, prompt_tokens=512, reply_tokens=256)
    # a step reads 44 MiB of weights = 46,137,344 B and the KV of 512 + 256/2 = 640 tokens x 2,048 B = 1,310,720 B
    # at 0.6 x 100 GB/s: 47,448,064 / 6e10 = 790.80 us -> 1,264.54 tok/s
    assert s.decode_tps == pytest.approx(1264.54, abs=0.01)
    assert s.batch_decode_tps == pytest.approx(1264.54, abs=0.01) and s.slots == 1
    # prefill: 0.235 x 10e12 / (2 x 8,912,896) = 131,831.45 tok/s; TTFT = 512 / that + one decode step
    assert s.prefill_tps == pytest.approx(131_831.45, abs=0.01)
    assert s.ttft_s == pytest.approx(512 / 131_831.45 + 790.80e-6, rel=1e-5)
    # no calibration file: the figures are the model's estimate
    assert s.to_dict() == {"decode_tps": 1264.54, "prefill_tps": 131831.45, "ttft_s": 0.0, "batch_decode_tps": 1264.54,
                           "slots": 1, "source": "estimated"}


def test_toy_two_slots_read_the_weights_once():
    mem = server_memory(TOY, dict(ONE, parallel=2), "cuda", "cuda:0")
    s = server_speed(TOY, mem, GPU, prompt_tokens=512, reply_tokens=256)
    # 2 streams of 2048 cells: still 2,048 B per token. One step for both: 46,137,344 + 2 x 1,310,720 B
    # = 48,758,784 B / 6e10 = 812.65 us, plus the second slot's matmuls: 2 x 8,912,896 FLOP at 24% of
    # the prefill rate (0.24 x 0.235 x 10e12 = 5.64e11 FLOP/s) = 31.61 us -> 2 / 844.25 us = 2,368.96 tok/s
    assert s.slots == 2
    assert s.batch_decode_tps == pytest.approx(2368.96, abs=0.01)
    assert s.decode_tps == pytest.approx(1264.54, abs=0.01)


def test_toy_partial_offload_reads_cpu_layers_and_uploads_them_per_ubatch():
    mem = server_memory(TOY, dict(ONE, n_gpu_layers=3), "cuda", "cuda:0")
    s = server_speed(TOY, mem, GPU, prompt_tokens=512, reply_tokens=256)
    # -ngl 3 offloads the output layer first (i_gpu_start = 4 + 1 - 3 = 2): GPU: layers 2-3 + output 3 + norm 1
    # = 24 MiB = 25,165,824 B at 6e10 B/s = 419.43 us; host: layers 0-1 = 20 MiB = 20,971,520 B (token_embd is a
    # lookup) at 10 GB/s = 2,097.15 us; KV of the 2 GPU layers: 640 x 1,024 B at 6e10 = 10.92 us: 2,527.51 us
    assert s.decode_tps == pytest.approx(1 / 2527.51e-6, rel=1e-5)
    # prefill uploads the 20 MiB of CPU weights once per ubatch of 512 at 3 GB/s (PCIe): 6,990.51 us
    assert s.ttft_s == pytest.approx(512 / 131_831.45 + 6990.51e-6 + 2527.51e-6, rel=1e-5)
    # a 1024-token prompt is two ubatches: two uploads
    s2 = server_speed(TOY, mem, GPU, prompt_tokens=1024, reply_tokens=256)
    # the decode step now reads 1152 tokens of KV: 1,179,648 B at 6e10 = 19.66 us
    step = 419.43e-6 + 2097.15e-6 + 19.66e-6
    assert s2.ttft_s == pytest.approx(1024 / 131_831.45 + 2 * 6990.51e-6 + step, rel=1e-5)


def test_toy_on_the_cpu_uses_declared_figures_without_efficiency():
    cpu = Device("cpu", 20.0, 0.1, 20.0)
    mem = server_memory(TOY, ONE, "cpu")
    s = server_speed(TOY, mem, cpu, prompt_tokens=512, reply_tokens=256)
    # weights read: 46 - 2 (token_embd lookup) = 44 MiB + KV 1,310,720 B = 47,448,064 B at 20 GB/s: 2,372.40 us
    assert s.decode_tps == pytest.approx(1 / 2372.4032e-6, rel=1e-6)
    # prefill: 0.1 TOPS / 17,825,792 FLOP per token = 5,609.85 tok/s
    assert s.prefill_tps == pytest.approx(5609.85, abs=0.01)
    tied = toy(tied=True)  # the output projection reads token_embd whole: 43 MiB, nothing subtracted
    s = server_speed(tied, server_memory(tied, ONE, "cpu"), cpu, prompt_tokens=512, reply_tokens=256)
    assert s.decode_tps == pytest.approx(20e9 / (43 * 2**20 + 1_310_720), rel=1e-6)


def test_device_efficiencies():
    assert (GPU.decode_efficiency, GPU.prefill_efficiency) == (0.6, 0.235)
    assert (Device("cpu", 1, 1, 1).decode_efficiency, Device("cpu", 1, 1, 1).prefill_efficiency) == (1.0, 1.0)


# -- queueing: M/M/c ---------------------------------------------------------------------------------
@pytest.mark.parametrize("c,a,p", [
    (1, 0.5, 0.5),          # M/M/1: P(wait) = rho
    (2, 1.0, 1 / 3),        # (a^2/2! x 2/(2-1)) / (1 + a + 1) = 1/3
    (3, 2.0, 4 / 9),        # terms 1, 2, 2 and the tail 8/6 x 3/(3-2) = 4: 4/9
    (4, 4.5, 1.0), (2, 2.0, 1.0),  # at or past saturation everyone waits
])
def test_erlang_c_textbook_values(c, a, p):
    assert erlang_c(c, a) == pytest.approx(p)


ONE_SLOT = Speed(decode_tps=10.0, prefill_tps=1000.0, ttft_s=1.0, batch_decode_tps=10.0, slots=1)


def test_workload_waiting_time_quantiles_by_hand():
    # service = TTFT 1 s + 90 tokens at 10 tok/s = 10 s; 3 requests/min = 0.05/s: rho = 0.5 = P(wait).
    # M/M/1: P(W > t) = rho e^-(mu - lambda) t with mu - lambda = 0.1 - 0.05 = 0.05/s
    r = workload("m", 3, 100, 90, [ONE_SLOT])
    assert (r.slots, r.service_s, r.utilisation, r.stable) == (1, 10.0, 0.5, True)
    assert r.ttft_p50_s == 1.0                               # P(W > 0) = 0.5: the median request does not wait
    assert r.ttft_p95_s == pytest.approx(1 + math.log(10) / 0.05)  # 0.5 e^-0.05t = 0.05 -> t = ln(10)/0.05
    assert r.tokens_per_s_per_request == 10.0
    assert r.to_dict() == {"model": "m", "requests_per_minute": 3, "slots": 1, "service_s": 10.0, "utilisation": 0.5,
                           "ttft_p50_s": 1.0, "ttft_p95_s": 47.052, "tokens_per_s_per_request": 10.0, "stable": True}


def test_workload_p50_waits_when_most_requests_wait():
    # 5 requests/min: rho = 5/6 = P(wait); mu - lambda = 0.1 - 1/12 = 1/60: p50 wait = 60 ln((5/6)/0.5)
    r = workload("m", 5, 100, 90, [ONE_SLOT])
    assert r.ttft_p50_s == pytest.approx(1 + 60 * math.log(5 / 3))


def test_busy_beside_by_hand():
    # 2 servers x 2 slots, a = 1 Erlang: P(m) ~ 1, 1/2, 1/6 and (1/24) / (1 - 1/4) = 1/18 for m = 1..4.
    # Spread by least connections a request in service sees 1, 1, (2 x 2 + 1 x 1) / 3 = 5/3 and 2 busy on its
    # server; weighting each m by m P(m): sum m P(m) x busy(m) = 1 + 1 + 5/6 + 8/18 = 59/18 over
    # sum m P(m) = 1 + 1 + 1/2 + 4/18 = 49/18: 59/49
    assert busy_beside(4, 2, 1.0) == pytest.approx(59 / 49)
    assert busy_beside(4, 2, 0.0) == pytest.approx(1.0)       # alone on its server
    assert busy_beside(4, 2, 4.0) == 2.0                      # overloaded: every slot busy
    assert busy_beside(1, 1, 0.5) == pytest.approx(1.0)       # one slot: always alone


TWO_SLOTS = Speed(decode_tps=10.0, prefill_tps=1000.0, ttft_s=1.0, batch_decode_tps=16.0, slots=2)


def test_a_reply_decodes_alone_when_its_server_is_mostly_idle():
    # 0.6 requests/min on 2 servers of 2 slots: a second request on the same server is rare, so a
    # reply decodes at about the speed alone (10 tok/s), not at the 8 tok/s of both slots busy
    r = workload("m", 0.6, 100, 90, [TWO_SLOTS, TWO_SLOTS])
    assert 9.9 < r.tokens_per_s_per_request <= 10.0


def test_busy_slots_follow_the_load_consistently():
    # 4 requests/min on one 2-slot server: check the fixed point with the formulas written out here.
    r = workload("m", 4, 100, 90, [TWO_SLOTS])
    assert r.stable
    a = r.service_s / 15                                       # offered Erlang: 1/15 requests/s                                      # offered Erlang
    # the size-biased busy count (one server, c = 2): m = 1 sees 1, m = 2 sees 2; P(2) = a^2/2 / (1 - a/2)
    p1, p2 = a, a * a / 2 / (1 - a / 2)
    busy = (1 * p1 * 1 + 2 * p2 * 2) / (p1 + 2 * p2)
    step = 0.1 + (busy - 1) * (2 / 16 - 0.1)                   # 1/10 s alone, 2/16 s with both busy
    # each other busy slot starts a prompt once per service time, stalling this reply by its 1 s prefill
    decode = 90 * step / (1 - (busy - 1) / r.service_s * 1.0)
    assert r.service_s == pytest.approx(1.0 + decode, rel=1e-6)
    assert r.tokens_per_s_per_request == pytest.approx(90 / decode, rel=1e-6)
    assert 8.0 < r.tokens_per_s_per_request < 10.0


def test_workload_overloaded_and_without_servers():
    r = workload("m", 6, 100, 90, [ONE_SLOT])  # 0.1/s x 10 s = 1 Erlang on 1 slot
    assert not r.stable and r.utilisation == 1.0 and math.isinf(r.ttft_p50_s)
    assert r.to_dict() == {"model": "m", "requests_per_minute": 6, "slots": 1, "service_s": 10.0, "utilisation": 1.0,
                           "ttft_p50_s": None, "ttft_p95_s": None, "tokens_per_s_per_request": 10.0, "stable": False}
    with pytest.raises(ValueError, match="workload for m: no chat server serves this model"):
        workload("m", 1, 1, 1, [])


def test_defaults_are_512_prompt_and_256_reply_tokens():
    mem = server_memory(TOY, ONE, "cuda", "cuda:0")
    assert server_speed(TOY, mem, GPU) == server_speed(TOY, mem, GPU, prompt_tokens=512, reply_tokens=256)


def test_one_token_ubatches_upload_cpu_layers_per_token():
    mem = server_memory(TOY, dict(ONE, n_gpu_layers=3, ubatch_size=1), "cuda", "cuda:0")
    s = server_speed(TOY, mem, GPU, prompt_tokens=512, reply_tokens=256)
    # 512 uploads of the 20 MiB of CPU weights (layers 0-1; the output layer is on the GPU) at 3 GB/s:
    # 512 x 6,990.51 us = 3.579 s
    assert s.ttft_s == pytest.approx(512 / 131_831.45 + 512 * 6990.51e-6 + 2527.51e-6, rel=1e-5)


# -- a measured mix of requests (mix_workload, the plan beside a run) --------------------------------
# a server of 3 slots: 25 tok/s alone (a 40 ms step), 50 tok/s with all three (60 ms a step), prefill 300 tok/s
THREE_SLOTS = Speed(decode_tps=25.0, prefill_tps=300.0, ttft_s=1.04, batch_decode_tps=50.0, slots=3)


def test_home_hit_by_hand():
    assert home_hit("random", 0.9, 4, 3) == 0.25
    assert home_hit("pool", 0.9, 4, 3) == 0.25
    # balanced homes, rho 0.5, 2 slots: b = 0.25; (1 - b)^2 + b^2 / 3 = 0.5625 + 0.0625 / 3
    assert home_hit("affine", 0.5, 4, 2) == pytest.approx(0.5625 + 0.0625 / 3)
    # 2 conversations hashed over 2 one-slot servers at rho 0.5: alone at home (p 1/2) it is busy 0.5,
    # b = 0.5, meeting 0.25 + 0.25 / 1; sharing the home (p 1/2) it is busy 1.0: both turns go to the
    # other server, meeting 1.0; 0.5 x 0.5 + 0.5 x 1.0
    assert home_hit("affine", 0.5, 2, 1, conversations=2) == pytest.approx(0.75)
    assert home_hit("affine", 0.3, 1, 3) == 1.0
    # 2,000 conversations over 4 homes: every home holds close to its share (500), so the same as balanced
    # homes, (1 - b)^2 + b^2 / 3 with b = 0.5^2; math.comb would overflow a float here
    assert home_hit("affine", 0.5, 4, 2, conversations=2000) == pytest.approx(0.5625 + 0.0625 / 3, rel=0.05)


def test_prompt_outcomes_by_hand():
    later = MixRequest(prompt_tokens=1000, home_tokens=700, shared_tokens=300, shared_warm=0.5)
    assert prompt_outcomes(later, 0.4) == [(0.4, 300), (0.3, 700), (0.3, 1000)]
    first = MixRequest(prompt_tokens=400, shared_tokens=300, shared_warm=0.25)
    assert prompt_outcomes(first, 0.9) == [(0.25, 100), (0.75, 400)]  # a first turn has no home to hit


def test_step_s_between_one_slot_and_all():
    assert step_s(THREE_SLOTS, 0.0) == 0.0
    assert step_s(THREE_SLOTS, 0.5) == pytest.approx(0.02)
    assert step_s(THREE_SLOTS, 1.0) == pytest.approx(0.04)
    assert step_s(THREE_SLOTS, 2.0) == pytest.approx(0.05)
    assert step_s(THREE_SLOTS, 3.0) == pytest.approx(0.06)


def test_mixture_quantile_by_hand():
    # no spread, a wait above t with probability 0.5 e^-t: p95 where 0.5 e^-t = 0.05, t = ln 10
    assert mixture_quantile([(1.0, 0.0)], [(0.5, 1.0)], 0.95) == pytest.approx(math.log(10), abs=1e-6)
    # two values, never a wait: the median is the lower, p95 the upper
    parts = [(0.5, 1.0), (0.5, 3.0)]
    assert mixture_quantile(parts, [(0.0, 1.0)], 0.5) == pytest.approx(1.0, abs=1e-6)
    assert mixture_quantile(parts, [(0.0, 1.0)], 0.95) == pytest.approx(3.0, abs=1e-6)


def test_mix_workload_with_almost_no_load_is_the_prompt_computed():
    # 1 request an hour: no wait, no other slot busy, nothing overlapping; 300 tokens at 300 tok/s
    r = mix_workload("m", 1 / 60, 64, [THREE_SLOTS], [MixRequest(300)], "pool", 128)
    assert r.ttft_p50_s == pytest.approx(1.0, rel=1e-3)
    assert r.ttft_p95_s == pytest.approx(1.0, rel=1e-3)


def test_mix_workload_affine_finds_the_history_pool_does_not():
    # every turn has 700 of its 1000 tokens at home; 4 idle servers: affine finds home always
    # (300 tokens: 1.0 s), pool 1 in 4 (the rest 1000 tokens: 3.33 s), so pool's p50 is the cold prefill
    turns = [MixRequest(1000, home_tokens=700)] * 8
    affine = mix_workload("m", 1 / 60, 64, [THREE_SLOTS] * 4, turns, "affine", 128)
    pool = mix_workload("m", 1 / 60, 64, [THREE_SLOTS] * 4, turns, "pool", 128)
    assert affine.ttft_p50_s == pytest.approx(1.0, rel=1e-3)
    assert pool.ttft_p50_s == pytest.approx(1000 / 300, rel=1e-3)


def test_mix_workload_decodes_beside_a_prompt_and_waits():
    # at 15 requests a minute on 3 slots some slots are generating while a prompt fills: each of its
    # batches carries their decode step, so it takes longer than the prompt alone, and some wait
    r = mix_workload("m", 15, 64, [THREE_SLOTS], [MixRequest(600)] * 10, "pool", 128)
    assert r.stable
    assert r.ttft_p50_s > 2.0
    assert r.ttft_p95_s > r.ttft_p50_s


def test_mix_workload_refuses_an_unknown_routing_and_no_requests():
    with pytest.raises(ValueError, match="routing must be one of random, pool, affine"):
        mix_workload("m", 1, 64, [THREE_SLOTS], [MixRequest(300)], "roundrobin", 128)
    with pytest.raises(ValueError, match="no requests"):
        mix_workload("m", 1, 64, [THREE_SLOTS], [], "pool", 128)


# one slot: 25 tok/s, prefill 300 tok/s (TTFT 1.0 s + one 40 ms step for 300 tokens)
ONE_SLOT_25 = Speed(decode_tps=25.0, prefill_tps=300.0, ttft_s=1.04, batch_decode_tps=25.0, slots=1)


def test_mix_workload_pool_by_hand():
    # 6/min = 0.1/s of 300-token prompts, 64-token replies, on one one-slot server:
    # service 1.04 + 64/25 = 3.6 s, a = 0.36, Erlang C(1, a) = 0.36, decay 1/3.6 - 0.1 = 0.17778/s;
    # nothing decodes beside a prompt (one slot): x = 300/300 = 1.0 s; another prompt is prefilling with
    # chance 0.1 x 1.0 = 0.1, adding its residual E[x^2]/2E[x] = 0.5 s: x = 1.0 (0.9) or 1.5 (0.1);
    # mean 1.05, Cs^2 = (0.9 x 0.05^2 + 0.1 x 0.45^2) / 3.6^2 = 0.001736: decay x 2 / 1.001736 = 0.35494/s.
    # p50: P(x + W > 1.0) = 0.9 x 0.36 + 0.1 = 0.424 < 0.5, so 1.0 s.
    # p95: 0.9 x 0.36 e^-r(t-1) + 0.1 x 0.36 e^-r(t-1.5) = 0.05 -> e^-rt = 0.05 / 0.52337 -> t = 6.616 s
    r = mix_workload("m", 6, 64, [ONE_SLOT_25], [MixRequest(300)], "pool", 128)
    assert r.service_s == pytest.approx(3.6) and r.utilisation == pytest.approx(0.36)
    assert r.ttft_p50_s == pytest.approx(1.0, abs=1e-6)
    assert r.ttft_p95_s == pytest.approx(6.616, abs=2e-3)


def test_mix_workload_random_by_hand():
    # the same load over two such servers at random: each 0.05/s, a = 0.18, C(1, a) = 0.18, decay
    # 1/3.6 - 0.05 = 0.22778/s; overlap 0.05 x 1.0: x = 1.0 (0.95) or 1.5 (0.05); Cs^2 = 0.011875 / 12.96,
    # decay x 2 / 1.000916 = 0.45514/s; p95: 0.95 x 0.18 e^-r(t-1) + 0.05 x 0.18 e^-r(t-1.5) = 0.05
    # -> e^-rt = 0.05 / 0.287384 -> t = 3.842 s
    r = mix_workload("m", 6, 64, [ONE_SLOT_25] * 2, [MixRequest(300)], "random", 128)
    assert r.utilisation == pytest.approx(0.18)
    assert r.ttft_p50_s == pytest.approx(1.0, abs=1e-6)
    assert r.ttft_p95_s == pytest.approx(3.842, abs=2e-3)
