"""Memory model against numbers written down independently of the code.

Sources: llama.cpp's own reports (facts.md, testing.md: sizes llama-bench prints, the memory
breakdown of llama-server -lv 4 on this machine) and hand calculations on a toy model with round
sizes (tests/support/toy.py), worked out in the comments.
"""
from __future__ import annotations

import pytest

from ansible_collections.llamafleet.fleet.plugins.plugin_utils._memory import (
    kv_layout,
    placement,
    resolve_parallel,
    server_memory,
)
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._shapes import model_info_from_shape
from tests.support.toy import toy

L8 = {q: model_info_from_shape("llama-3.1-8b", q, "t") for q in ("Q6_K", "Q5_K_M", "Q4_K_M")}
GEMMA = model_info_from_shape("gemma-3-270m", "Q8_0", "t")
NOMIC = model_info_from_shape("nomic-embed-text-v1.5", "F16", "t")
USER = {"ctx_size": 8192, "parallel": 1, "batch_size": 128, "ubatch_size": 64, "flash_attn": "on",
        "cache_type_k": "q8_0", "cache_type_v": "q8_0", "n_gpu_layers": 99}


@pytest.mark.parametrize("quant,gib,vram", [("Q6_K", 6.14, 5871), ("Q5_K_M", 5.33, 5113), ("Q4_K_M", 4.58, 4408)])
def test_llama8b_weights_match_published_sizes(quant, gib, vram):
    info = L8[quant]
    assert info.weights_bytes / 2**30 == pytest.approx(gib, abs=0.01)
    mem = server_memory(info, USER, "cuda", "cuda:0")
    # token_embd stays on the CPU; everything else is on the GPU at full offload
    assert mem.model == pytest.approx(vram, rel=0.002)
    assert mem.gpu_layers == 32 and mem.output_on_device


@pytest.mark.parametrize("ctk,mib", [("f16", 1024), ("q8_0", 544), ("q4_0", 288)])
def test_llama8b_kv_cache_at_8k(ctk, mib):
    mem = server_memory(L8["Q6_K"], dict(USER, cache_type_k=ctk, cache_type_v=ctk), "cuda", "cuda:0")
    assert mem.context == pytest.approx(mib)


def test_gemma_swa_cache_and_swa_full():
    one = {"ctx_size": 8192, "parallel": 1}
    assert server_memory(GEMMA, one, "cpu").context == pytest.approx(39, abs=0.5)
    assert server_memory(GEMMA, dict(one, swa_full=True), "cpu").context == pytest.approx(144)


def test_parallel_splits_context_unless_unified():
    split = kv_layout(GEMMA, {"ctx_size": 4096, "parallel": 2})
    assert (split.cells_base, split.streams, split.cells_swa) == (2048, 2, 1024)
    unified = kv_layout(GEMMA, {"ctx_size": 4096, "parallel": 2, "kv_unified": True})
    assert (unified.cells_base, unified.streams) == (4096, 1)
    auto = kv_layout(GEMMA, {"ctx_size": 4096})
    assert (auto.n_seq, auto.unified) == (4, True)


def test_context_is_padded_to_256():
    assert kv_layout(GEMMA, {"ctx_size": 1000, "parallel": 1}).cells_base == 1024


def test_embedding_models_have_no_kv_cache():
    mem = server_memory(NOMIC, {"ctx_size": 2048, "cache_type_k": "q8_0", "embeddings": True}, "cuda", "cuda:0")
    assert mem.context == 0 and mem.host_prompt_cache == 0


# -ngl counts the output layer first (src/llama-model.cpp: il = n_layer is on the GPU once ngl >= 1)
@pytest.mark.parametrize("ngl,layers,output", [(99, 32, True), (33, 32, True), (32, 31, True), (28, 27, True),
                                               (1, 0, True), (0, 0, False), (-1, 32, True)])
def test_layer_placement(ngl, layers, output):
    on_gpu, out = placement(L8["Q6_K"], ngl)
    assert (len(on_gpu), out) == (layers, output)
    if on_gpu:
        assert on_gpu[-1] == 31  # the last layers are offloaded first


def test_partial_offload_moves_weights_to_the_host():
    full = server_memory(L8["Q6_K"], USER, "cuda", "cuda:0")
    part = server_memory(L8["Q6_K"], dict(USER, n_gpu_layers=28), "cuda", "cuda:0")
    # H200, llama.cpp's breakdown at -ngl 28: CUDA0 model 5,018 MiB (27 layers + output.weight);
    # Host model 1,675 MiB at exit: the mapped range token_embd .. blk.4, output.weight included
    assert part.model == pytest.approx(5018, abs=1)
    assert part.host_model == pytest.approx(1675, abs=1)
    # without mmap only the CPU tensors: token_embd 411 + 5 layers x 170.6 = 1,264 (llama.cpp's projection)
    anon = server_memory(L8["Q6_K"], dict(USER, n_gpu_layers=28, load_mode="none"), "cuda", "cuda:0")
    assert anon.host_model == pytest.approx(1264, abs=1)
    assert full.host_model == pytest.approx(411, abs=1)


def test_flash_attention_off_grows_compute():
    on = server_memory(L8["Q4_K_M"], dict(USER, ubatch_size=512, batch_size=512), "cpu")
    off = server_memory(L8["Q4_K_M"], dict(USER, ubatch_size=512, batch_size=512, flash_attn="off",
                                           cache_type_v="f16"), "cpu")
    assert off.compute > on.compute + 100  # the KQ scores: n_head x n_kv x n_ubatch x 4 B


def test_default_prompt_cache_is_8_gib_and_unlimited_is_inf():
    assert server_memory(GEMMA, {}, "cpu").host_prompt_cache == 8192
    assert server_memory(GEMMA, {"cache_ram": -1}, "cpu").host_prompt_cache == float("inf")


# -- embedding servers on decoder models: every token is an output ---------------------------------
LAB_EMBED = {"embeddings": True, "pooling": "mean", "ctx_size": 512, "parallel": 1, "batch_size": 512,
             "ubatch_size": 512, "threads": 1}


def test_embedding_server_on_a_decoder_computes_logits_for_every_token():
    mem = server_memory(GEMMA, LAB_EMBED, "cpu")
    # logits 262,144 x 512 x 4 B = 512 MiB + residual 3 x 640 x 512 x 4 B = 3.75 MiB
    assert mem.compute == pytest.approx(515.75, abs=0.01)
    # output buffer: (262,144 logits + 640 embedding) floats x 512 rows = 513.25 MiB, host RAM
    assert mem.host_output == pytest.approx(513.25, abs=0.01)


def test_chat_server_outputs_one_row_per_slot():
    mem = server_memory(GEMMA, {"ctx_size": 4096, "parallel": 2, "ubatch_size": 256, "batch_size": 256}, "cpu")
    assert mem.host_output == pytest.approx(2.0)  # 262,144 x 2 slots x 4 B
    # FFN phase: masks (2048 + 768 SWA cells: PAD256(512 + 256)) x 256 rows x 2 B = 1.375 MiB (one
    # row per token, whatever the streams) + residual 3 x 640 x 256 x 4 = 1.875 MiB + FFN 3 x 2048 x
    # 256 x 4 = 6 MiB = 9.25 MiB; the output phase is only 2 MiB + 1.875
    assert mem.compute == pytest.approx(9.25)


def test_pooling_none_still_outputs_every_token():
    none = server_memory(GEMMA, dict(LAB_EMBED, pooling="none", ubatch_size=256, batch_size=256), "cpu")
    assert none.compute == pytest.approx(256 + 3 * 640 * 256 * 4 / 2**20)  # 256 MiB of logits + 1.875


def test_encoder_embedding_output_buffer():
    mem = server_memory(NOMIC, {"embeddings": True, "ctx_size": 2048, "batch_size": 2048, "ubatch_size": 2048,
                                "n_gpu_layers": 99}, "cuda", "cuda:0")
    # llama.cpp allocates logits rows even for BERT: (30,522 + 768) x 2048 x 4 B = 244.45 MiB pinned host
    assert mem.host_output == pytest.approx((30522 + 768) * 2048 * 4 / 2**20)
    # H200: CUDA0 model 216 MiB (no output projection on an encoder; token_embd stays on the host)
    assert mem.model == pytest.approx(216, abs=1)
    # H200: CUDA0 compute 92 MiB, Host compute 20 MiB
    assert mem.compute == pytest.approx(92, rel=0.1)
    assert mem.host_compute == pytest.approx(20, abs=4)


@pytest.mark.parametrize("ctk,ub,measured", [("q8_0", 64, 37), ("f16", 64, 14), ("q8_0", 512, 116)])
def test_cuda_compute_matches_h200(ctk, ub, measured):
    args = dict(USER, cache_type_k=ctk, cache_type_v=ctk, ubatch_size=ub, batch_size=max(ub, 128))
    mem = server_memory(L8["Q6_K"], args, "cuda", "cuda:0")
    # ub 64 q8_0: masks 8192 x 64 x 2 B = 1 MiB + residual 3 x 4096 x 64 x 4 = 3 MiB + attention
    # (Q,K,V twice: 6144 x 64 x 8 B = 3 MiB; F16 K and V: 8192 x 2048 x 2 B = 32 MiB) = 39 MiB
    # ub 512 q8_0: masks 8 + residual 24 + FFN 3 x 14336 x 512 x 4 = 84 -> 116 MiB
    assert mem.compute == pytest.approx(measured, abs=max(4, 0.1 * measured))


def test_partial_offload_copies_a_cpu_weight_to_the_gpu():
    mem = server_memory(L8["Q6_K"], dict(USER, n_gpu_layers=28), "cuda", "cuda:0")
    # FFN phase: masks 1 + residual 3 + FFN 10.5 + the Q6_K ffn matrix 14336 x 4096 x 210/256 B = 45.9 MiB
    assert mem.compute == pytest.approx(60.4, abs=0.1)  # llama.cpp on the H200: 61


# -- llama.cpp's memory breakdown, measured on this machine (testing.md, CPU backend, -lv 4) -----------
def test_gemma_270m_at_4k_with_two_slots_matches_llama_cpp():
    # "Gemma 3 270M Q4_K_M, -c 4096 -np 2: context 42 (non-SWA 12 MiB + SWA 30 MiB) + compute 20"
    mem = server_memory(model_info_from_shape("gemma-3-270m", "Q4_K_M", "t"), {"ctx_size": 4096, "parallel": 2}, "cpu")
    assert mem.context == 42
    assert mem.compute == pytest.approx(20, abs=2.5)


def test_llama8b_q6k_on_the_cpu_matches_llama_cpp():
    # "Llama-3.1-8B-shaped Q6_K, -c 8192 -np 1 -b 128 -ub 64 -fa on -ctk q8_0 -ctv q8_0:
    #  Host 6841 MiB = model 6282 + context 544 + compute 14"
    mem = server_memory(L8["Q6_K"], dict(USER, n_gpu_layers=0), "cpu")
    assert mem.model == pytest.approx(6282, abs=1)
    assert mem.context == 544
    assert mem.compute == pytest.approx(14, abs=1.5)
    assert mem.device == "cpu" and mem.gpu_layers == 0 and not mem.output_on_device


# -- the toy model (tests/support/toy.py), worked out by hand ---------------------------------------
TOY = toy()
ONE = {"ctx_size": 4096, "parallel": 1, "flash_attn": "on"}


def test_toy_on_the_cpu():
    mem = server_memory(TOY, ONE, "cpu")
    assert mem.model == 46                 # 2 + 3 + 1 + 4 x 10 MiB
    assert mem.context == 8                # 4096 cells x 2,048 B
    # compute at ubatch 512 (default), FA on: KQ mask 4096 x 512 x 2 B = 4 MiB + residual 3 x 512 x 512 x 4 B
    # = 3 MiB + the larger of FFN 3 x 1024 x 512 x 4 B = 6 MiB and attention (512 + 2 x 2 x 64) x 512 x 4 B x 2
    # = 3 MiB; the logits (1000 x 1 slot x 4 B) + residual are smaller: 13 MiB
    assert mem.compute == 13
    assert (mem.overhead, mem.host_overhead, mem.host_prompt_cache) == (0, 64, 8192)
    assert mem.total == 46 + 8 + 13
    assert mem.columns() == {"model": 46, "context": 8, "compute": 13, "overhead": 0, "total": 67}


def test_toy_without_flash_attention():
    # F32 mask 4096 x 512 x 4 B = 8 MiB + residual 3 MiB + attention 3 MiB + KQ scores 8 heads x 4096 x 512 x 4 B
    # = 64 MiB: 78 MiB
    assert server_memory(TOY, dict(ONE, flash_attn="off"), "cpu").compute == 78


def test_toy_compute_follows_the_physical_batch():
    # ubatch 1024 clamped to batch 256: mask 4096 x 256 x 2 B = 2 MiB + residual 1.5 MiB + FFN 3 MiB = 6.5 MiB
    assert server_memory(TOY, dict(ONE, ubatch_size=1024, batch_size=256), "cpu").compute == 6.5
    # ubatch 100: tokens padded to 128 rows in the mask: 4096 x 128 x 2 B = 1 MiB; residual 3 x 512 x 100 x 4 B
    # = 614,400 B; FFN 3 x 1024 x 100 x 4 B = 1,228,800 B: 1,048,576 + 614,400 + 1,228,800 = 2,891,776 B
    assert server_memory(TOY, dict(ONE, ubatch_size=100), "cpu").compute * 2**20 == 2_891_776


def test_toy_logits_dominate_a_large_vocabulary():
    # 4 slots (unified, 4096 cells), ubatch 8: the mask phase is mask 4096 x 64 rows x 2 B = 524,288 B + residual
    # 3 x 512 x 8 x 4 B = 49,152 B + FFN 3 x 1024 x 8 x 4 B = 98,304 B = 671,744 B; the logits phase,
    # 1000 x 4 outputs x 4 B + residual = 65,152 B, is smaller
    mem = server_memory(TOY, {"ctx_size": 4096, "ubatch_size": 8, "flash_attn": "on"}, "cpu")
    assert mem.compute * 2**20 == 671_744
    big_vocab = toy()
    big_vocab.n_vocab = 100_000
    # logits 100,000 x 4 slots x 4 B = 1,600,000 B + residual 49,152 B = 1,649,152 B: now the peak
    mem = server_memory(big_vocab, {"ctx_size": 4096, "ubatch_size": 8, "flash_attn": "on"}, "cpu")
    assert mem.compute * 2**20 == 1_649_152


def test_toy_fully_offloaded_on_cuda():
    mem = server_memory(TOY, ONE, "cuda", "cuda:1")
    assert mem.device == "cuda:1"
    assert (mem.gpu_layers, mem.n_layer, mem.output_on_device) == (4, 4, True)
    assert mem.model == 44                 # 4 layers + output 3 + output_norm 1; token_embd stays on the CPU
    assert mem.host_model == 2             # token_embd
    assert mem.context == 8 and mem.compute == 13
    assert mem.overhead == 250             # the planning default for a CUDA process
    # n_embd 512 x 512 tokens x 4 B x 3 (token_embd's get_rows result, its scaled copy, the first GPU split's input)
    assert mem.host_compute == 3
    assert mem.host_overhead == 64 + 160   # process + CUDA runtime host allocations
    # output buffer: 1,000 logits x 1 row x 4 B = 4,000 B of host RAM
    assert mem.host_output * 2**20 == 4_000
    assert mem.host_total_without_cache * 2**20 == (2 + 3 + 224) * 2**20 + 4_000
    assert mem.total == 44 + 8 + 13 + 250


def test_cuda_overhead_override():
    assert server_memory(TOY, ONE, "cuda", "cuda:0", cuda_overhead_mib=410).overhead == 410
    assert server_memory(TOY, ONE, "cpu", cuda_overhead_mib=410).overhead == 0


def test_a_tied_output_is_copied_to_the_gpu():
    tied = toy(tied=True)  # no output.weight: llama.cpp uses token_embd for the output projection
    mem = server_memory(tied, ONE, "cuda", "cuda:0")
    assert mem.model == 40 + 2 + 1 and mem.host_model == 2


@pytest.mark.parametrize("ctk,ctv,compute", [
    # quantized K or V with FA on CUDA: F16 copies of K and V, 4096 cells x 2 heads x (64 + 64) x 2 B = 2 MiB, in
    # the attention phase. At ubatch 128: mask 4096 x 128 x 2 B = 1 MiB + residual 3 x 512 x 128 x 4 B = 0.75 MiB
    # + the larger of FFN 3 x 1024 x 128 x 4 B = 1.5 MiB and attention (512 + 2 x 2 x 64) x 128 x 4 B x 2
    # = 0.75 MiB + copies 2 MiB = 2.75 MiB: 4.5 MiB; without copies the FFN wins: 1 + 0.75 + 1.5 = 3.25 MiB
    ("q8_0", "q8_0", 4.5), ("q4_0", "f16", 4.5), ("f16", "q8_0", 4.5), ("f16", "f16", 3.25)])
def test_quantized_kv_costs_f16_copies_on_cuda(ctk, ctv, compute):
    args = dict(ONE, cache_type_k=ctk, cache_type_v=ctv, ubatch_size=128)
    assert server_memory(TOY, args, "cuda", "cuda:0").compute == compute


def test_quantized_kv_copies_not_without_flash_attention_nor_on_the_cpu():
    assert server_memory(TOY, dict(ONE, cache_type_k="q8_0", cache_type_v="q8_0"), "cpu").compute == 13
    # FA off: quantized K only (V must stay f16); F32 mask 8 + residual 3 + attention 3 + KQ 64 = 78 MiB
    assert server_memory(TOY, dict(ONE, cache_type_k="q8_0", flash_attn="off"), "cuda", "cuda:0").compute == 78


def test_toy_kv_cache_types():
    # q8_0: 34 B per 32 values: 4096 cells x 4 layers x 2 heads x 128 values x 34/32 B = 4.25 MiB
    assert server_memory(TOY, dict(ONE, cache_type_k="q8_0", cache_type_v="q8_0"), "cpu").context == 4.25
    # K q4_0 (18/32 B) and V f32 (4 B): 4096 x 4 x 2 x 64 x (0.5625 + 4) B = 9.125 MiB
    assert server_memory(TOY, dict(ONE, cache_type_k="q4_0", cache_type_v="f32"), "cpu").context == 9.125


@pytest.mark.parametrize("ngl,on_gpu,output,model,host_model,context,host_kv", [
    # llama.cpp: i_gpu_start = n_layer + 1 - ngl; the output layer is "layer" n_layer, the first offloaded (any
    # ngl >= 1). Host model under mmap: the file range from token_embd to the last CPU layer, so output 3 and
    # output_norm 1 (stored between them) count there too
    (5, [0, 1, 2, 3], True, 44, 2, 8, 0),
    (4, [1, 2, 3], True, 30 + 3 + 1, 2 + 3 + 1 + 10, 6, 2),
    (3, [2, 3], True, 20 + 3 + 1, 2 + 3 + 1 + 20, 4, 4),
    (0, [], False, 0, 46, 0, 8),
    (-2, [0, 1, 2, 3], True, 44, 2, 8, 0),
])
def test_toy_partial_offload(ngl, on_gpu, output, model, host_model, context, host_kv):
    assert placement(TOY, ngl) == (on_gpu, output)
    mem = server_memory(TOY, dict(ONE, n_gpu_layers=ngl), "cuda", "cuda:0")
    assert (mem.gpu_layers, mem.output_on_device) == (len(on_gpu), output)
    assert (mem.model, mem.host_model, mem.context) == (model, host_model, context)
    # KV of the CPU layers + CPU graph inputs 3 x 512 x 512 tokens x 4 B = 3 MiB
    assert mem.host_compute == host_kv + 3


SWA = toy(n_swa=256, swa_layers=(True, True, True, False))


@pytest.mark.parametrize("args,cells,swa_cells,streams,kv_mib", [
    # one slot: SWA layers keep PAD256(min(4096, 256 + 512)) = 768 cells; 3 x 768 x 512 B + 4096 x 512 B
    ({"parallel": 1}, 4096, 768, 1, 3.125),
    # unified, 2 slots: the window is per sequence, so PAD256(256 x 2 + 512) = 1024 cells; 1.5 + 2 MiB
    ({"parallel": 2, "kv_unified": True}, 4096, 1024, 1, 3.5),
    # auto (-1): 4 slots, unified: PAD256(256 x 4 + 512) = 1536 cells; 2.25 + 2 MiB
    ({}, 4096, 1536, 1, 4.25),
    # 2 slots split: 2048 cells each, SWA PAD256(min(2048, 256 + 512)) = 768, 2 streams: 2 x (1.125 + 1) MiB
    ({"parallel": 2}, 2048, 768, 2, 4.25),
    # swa_full: the SWA layers get the full context
    ({"parallel": 1, "swa_full": True}, 4096, 4096, 1, 8),
    # ubatch 1024 clamped to batch 128: PAD256(256 + 128) = 512 cells
    ({"parallel": 1, "ubatch_size": 1024, "batch_size": 128}, 4096, 512, 1, 2.75),
])
def test_sliding_window_cache(args, cells, swa_cells, streams, kv_mib):
    mem = server_memory(SWA, dict(args, ctx_size=4096), "cpu")
    assert (mem.kv.cells_base, mem.kv.cells_swa, mem.kv.streams) == (cells, swa_cells, streams)
    assert mem.context == kv_mib


def test_swa_masks_are_counted_in_compute():
    # one slot, FA on: masks (4096 + 768 cells) x 512 x 2 B = 4.75 MiB + residual 3 + FFN 6 = 13.75 MiB
    assert server_memory(SWA, dict(ONE), "cpu").compute == 13.75


@pytest.mark.parametrize("args,expected", [
    ({}, (4, True)), ({"parallel": -1, "kv_unified": False}, (4, True)), ({"parallel": 0}, (1, False)),
    ({"parallel": 3}, (3, False)), ({"parallel": 3, "kv_unified": True}, (3, True)),
])
def test_resolve_parallel(args, expected):
    assert resolve_parallel(args) == expected


def test_kv_layout_defaults_and_split():
    default = kv_layout(TOY, {})
    # ctx 0 = the trained context 4096; auto: 4 unified slots; physical batch min(512, 2048)
    assert (default.n_ctx, default.n_ctx_seq, default.n_seq, default.unified, default.n_ubatch) == (4096, 4096, 4, True, 512)
    three = kv_layout(TOY, {"ctx_size": 4096, "parallel": 3})
    # 4096 / 3 = 1365 cells per sequence, padded to 1536; the context grows to 3 x 1536
    assert (three.n_ctx_seq, three.n_ctx, three.cells_base, three.streams) == (1536, 4608, 1536, 3)
    assert kv_layout(TOY, {"ctx_size": 4096, "ubatch_size": 1024}).n_ubatch == 1024


@pytest.mark.parametrize("args,cache", [({}, 8192), ({"cache_ram": 0}, 0), ({"cache_ram": 300}, 300),
                                        ({"cache_ram": -1}, float("inf"))])
def test_prompt_cache_cap(args, cache):
    assert server_memory(TOY, dict(ONE, **args), "cpu").host_prompt_cache == cache
    assert server_memory(TOY, dict(ONE, **args), "cuda", "cuda:0").host_prompt_cache == cache


ENC = toy(causal=False, architecture="nomic-bert")  # an encoder: no KV cache, every token is an output


def test_toy_encoder_compute():
    # ctx 512, ubatch 256: 256 tokens attend to each other (no cache): F16 mask 256 x 256 x 2 B = 0.125 MiB + residual
    # 3 x 512 x 256 x 4 B = 1.5 MiB + FFN 3 MiB = 4.625 MiB; its outputs (n_embd per token, 0.5 MiB) are smaller
    mem = server_memory(ENC, {"ctx_size": 512, "ubatch_size": 256, "embeddings": True}, "cpu")
    assert (mem.context, mem.compute, mem.host_prompt_cache) == (0, 4.625, 0)
    # FA off: F32 mask 0.25 MiB + residual 1.5 + attention 1.5 + KQ 8 heads x 256 x 256 x 4 B = 2 MiB: 5.25 MiB
    mem = server_memory(ENC, {"ctx_size": 512, "ubatch_size": 256, "embeddings": True, "flash_attn": "off"}, "cpu")
    assert mem.compute == 5.25


def test_host_inputs_follow_a_context_smaller_than_the_batch():
    # ctx 256 < ubatch 512: 256 tokens at most: 512 x 256 x 4 B x 3 = 1.5 MiB of CPU graph inputs
    assert server_memory(TOY, dict(ONE, ctx_size=256), "cuda", "cuda:0").host_compute == 1.5


def test_columns_round_to_a_tenth():
    # layers of 10.0625 MiB: 4 x 10.0625 + 3 + 1 = 44.25 on the GPU; q8_0 KV 4.25; compute at ubatch 200 =
    # mask 4096 x 256 (200 padded to 64) x 2 B = 2 + residual 1.171875 + the larger of FFN 2.34375 and attention
    # 768 x 200 x 8 B = 1.171875 + F16 copies 2 = 3.171875: 6.34375; overhead 250.25;
    # total 44.25 + 4.25 + 6.34375 + 250.25 = 305.09375
    mem = server_memory(toy(layer_mib=10.0625), dict(ONE, cache_type_k="q8_0", cache_type_v="q8_0", ubatch_size=200),
                        "cuda", "cuda:0", cuda_overhead_mib=250.25)
    assert mem.columns() == {"model": 44.2, "context": 4.2, "compute": 6.3, "overhead": 250.2, "total": 305.1}


def test_cpu_servers_have_no_gpu_layers():
    mem = server_memory(TOY, ONE, "cpu")
    assert (mem.n_layer, mem.output_on_device, mem.gpu_layers) == (4, False, 0)
    assert mem.output_on_device is False


def test_context_just_past_a_multiple_of_256_pads_up():
    assert kv_layout(TOY, {"ctx_size": 257, "parallel": 1}).cells_base == 512


def test_encoder_outputs_are_embeddings_not_logits():
    # nomic-embed (768 wide, 12 heads of 64, n_ff 3072, 30,522 tokens), 512 tokens, FA on: mask 512 x 512 x 2 B = 0.5
    # + residual 3 x 768 x 512 x 4 B = 4.5 + FFN 3 x 3072 x 512 x 4 B = 18: 23 MiB. Its outputs are 768 floats per
    # token (1.5 MiB), not 30,522 logits (59.6 MiB)
    mem = server_memory(NOMIC, {"ctx_size": 2048, "embeddings": True, "flash_attn": "on"}, "cpu")
    assert mem.compute == 23
