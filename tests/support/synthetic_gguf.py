"""Metadata-exact GGUF models of any shape, written with the official gguf package.

The metadata and tensor table are those of a real model of the given architecture and types; the
tensor data is a sparse hole (the file is truncated to its full size), so llama.cpp loads it like
the real thing (all-zero weights) and its buffers have the real sizes, with almost no disk used.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter, LlamaFileType

Q = GGMLQuantizationType


@dataclass
class Shape:
    arch: str = "llama"
    n_layer: int = 4
    n_embd: int = 512
    n_head: int = 8
    n_head_kv: int = 2
    head_dim: int = 64
    n_ff: int = 1536
    n_vocab: int = 4096
    n_ctx_train: int = 8192
    n_swa: int = 0                 # gemma3: sliding window
    weight_type: GGMLQuantizationType = Q.Q8_0
    embd_type: GGMLQuantizationType = Q.Q8_0
    tied_output: bool = False
    name: str = "synthetic"


def _nbytes(shape_ggml: list[int], qtype: GGMLQuantizationType) -> int:
    block, size = GGML_QUANT_SIZES[qtype]
    n = 1
    for d in shape_ggml:
        n *= d
    assert shape_ggml[0] % block == 0, f"row of {shape_ggml[0]} not a multiple of {block} for {qtype.name}"
    return n // block * size


def tensor_table(s: Shape) -> list[tuple[str, list[int], GGMLQuantizationType]]:
    """(name, ggml shape [ne0, ne1], type) of every tensor llama.cpp expects for the arch."""
    hd, e = s.head_dim, s.n_embd
    t = [("token_embd.weight", [e, s.n_vocab], s.embd_type), ("output_norm.weight", [e], Q.F32)]
    if not s.tied_output:
        t.append(("output.weight", [e, s.n_vocab], s.weight_type))
    for i in range(s.n_layer):
        b = f"blk.{i}."
        t += [
            (b + "attn_norm.weight", [e], Q.F32),
            (b + "attn_q.weight", [e, s.n_head * hd], s.weight_type),
            (b + "attn_k.weight", [e, s.n_head_kv * hd], s.weight_type),
            (b + "attn_v.weight", [e, s.n_head_kv * hd], s.weight_type),
            (b + "attn_output.weight", [s.n_head * hd, e], s.weight_type),
            (b + "ffn_norm.weight", [e], Q.F32),
            (b + "ffn_gate.weight", [e, s.n_ff], s.weight_type),
            (b + "ffn_up.weight", [e, s.n_ff], s.weight_type),
            (b + "ffn_down.weight", [s.n_ff, e], s.weight_type),
        ]
        if s.arch == "gemma3":
            t += [(b + "attn_q_norm.weight", [hd], Q.F32), (b + "attn_k_norm.weight", [hd], Q.F32),
                  (b + "post_attention_norm.weight", [e], Q.F32), (b + "post_ffw_norm.weight", [e], Q.F32)]
    return t


def write_model(path: str, s: Shape) -> str:
    """Write the synthetic model to path (sparse) and return path."""
    w = GGUFWriter(path, s.arch)
    w.add_name(s.name)
    w.add_block_count(s.n_layer)
    w.add_context_length(s.n_ctx_train)
    w.add_embedding_length(s.n_embd)
    w.add_feed_forward_length(s.n_ff)
    w.add_head_count(s.n_head)
    w.add_head_count_kv(s.n_head_kv)
    w.add_key_length(s.head_dim)
    w.add_value_length(s.head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(LlamaFileType.MOSTLY_Q8_0 if s.weight_type == Q.Q8_0 else LlamaFileType.ALL_F32)
    if s.arch == "llama":
        w.add_rope_dimension_count(s.head_dim)
    if s.n_swa:
        w.add_sliding_window(s.n_swa)
    # A plain SPM-style vocabulary: enough for llama.cpp to build its tokenizer.
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tokens += [f"t{i}" for i in range(s.n_vocab - len(tokens))]
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * s.n_vocab)
    w.add_token_types([2, 3, 3] + [6] * 256 + [1] * (s.n_vocab - 259))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    total = 0
    for name, shape, qtype in tensor_table(s):
        nbytes = _nbytes(shape, qtype)
        w.add_tensor_info(name, list(reversed(shape)), np.dtype(np.float32), nbytes, raw_dtype=qtype)
        total += nbytes + (-nbytes % 32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    # the data section starts at the next 32-byte boundary; leave it as a hole
    header = os.path.getsize(path)
    with open(path, "r+b") as handle:
        handle.truncate(header + (-header % 32) + total)
    return path
