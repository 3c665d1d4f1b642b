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


@pytest.mark.parametrize("ngl,layers,output", [(99, 32, True), (33, 32, True), (32, 31, False), (0, 0, False), (-1, 32, True)])
def test_layer_placement(ngl, layers, output):
    on_gpu, out = placement(L8["Q6_K"], ngl)
    assert (len(on_gpu), out) == (layers, output)
    if on_gpu:
        assert on_gpu[-1] == 31  # the last layers are offloaded first


def test_partial_offload_moves_weights_to_the_host():
    full = server_memory(L8["Q6_K"], USER, "cuda", "cuda:0")
    part = server_memory(L8["Q6_K"], dict(USER, n_gpu_layers=28), "cuda", "cuda:0")
    assert part.model < full.model
    assert part.host_model - full.host_model == pytest.approx(full.model - part.model, rel=1e-6)


def test_flash_attention_off_grows_compute():
    on = server_memory(L8["Q4_K_M"], dict(USER, ubatch_size=512, batch_size=512), "cpu")
    off = server_memory(L8["Q4_K_M"], dict(USER, ubatch_size=512, batch_size=512, flash_attn="off",
                                           cache_type_v="f16"), "cpu")
    assert off.compute > on.compute + 100  # the KQ scores: n_head x n_kv x n_ubatch x 4 B


def test_default_prompt_cache_is_8_gib_and_unlimited_is_inf():
    assert server_memory(GEMMA, {}, "cpu").host_prompt_cache == 8192
    assert server_memory(GEMMA, {"cache_ram": -1}, "cpu").host_prompt_cache == float("inf")
