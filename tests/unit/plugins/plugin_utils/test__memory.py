"""Memory model: the figures facts.md derives, checked against the formulas' implementation."""
from __future__ import annotations

import pytest

from ansible_collections.llamafleet.fleet.plugins.plugin_utils._memory import kv_layout, placement, server_memory
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._shapes import model_info_from_shape

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
