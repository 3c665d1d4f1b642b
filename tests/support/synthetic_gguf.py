"""Metadata-exact GGUF models of any shape, written with the official gguf package.

The metadata and tensor table are those of a real model of the given architecture and
quantization (the table comes from llamafleet_shapes, the same one the planner uses for declared
shapes); the tensor data is a sparse hole (the file is truncated to its full size), so llama.cpp
loads it like the real thing (all-zero weights) and its buffers have the real sizes, with no
download and almost no disk.
"""
from __future__ import annotations

import os

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter, PoolingType

from ansible_collections.llamafleet.fleet.plugins.plugin_utils._shapes import tensor_bytes, tensor_table


def write_model(path: str, shape: dict, quantization: str, name: str = "synthetic") -> str:
    """Write a sparse, metadata-exact model of this shape and quantization to path."""
    arch = shape["architecture"]
    w = GGUFWriter(path, arch)
    w.add_name(name)
    w.add_block_count(shape["n_layer"])
    w.add_context_length(shape["n_ctx_train"])
    w.add_embedding_length(shape["n_embd"])
    w.add_feed_forward_length(shape["n_ff"])
    w.add_head_count(shape["n_head"])
    w.add_head_count_kv(shape["n_head_kv"])
    w.add_key_length(shape["head_dim"])
    w.add_value_length(shape["head_dim"])
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-6)
    if arch == "llama":
        w.add_rope_dimension_count(shape["head_dim"])
    if shape.get("n_swa"):
        w.add_sliding_window(shape["n_swa"])
    n_vocab = shape["n_vocab"]
    if arch == "nomic-bert":  # an encoder: BERT tokenizer, no causal attention, mean pooling
        w.add_layer_norm_eps(1e-12)
        w.add_causal_attention(False)
        w.add_pooling_type(PoolingType.MEAN)
        w.add_uint32("tokenizer.ggml.token_type_count", 2)
        w.add_tokenizer_model("bert")
        w.add_token_list(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"t{i}" for i in range(n_vocab - 5)])
        w.add_token_types([3, 2, 3, 3, 3] + [1] * (n_vocab - 5))
        w.add_unk_token_id(1)
        w.add_sep_token_id(3)
        w.add_uint32("tokenizer.ggml.cls_token_id", 2)
        w.add_pad_token_id(0)
        w.add_mask_token_id(4)
        return _finish(w, path, shape, quantization)
    # A plain SPM vocabulary: enough for llama.cpp to build its tokenizer.
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tokens += [f"t{i}" for i in range(n_vocab - len(tokens))]
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * n_vocab)
    w.add_token_types([2, 3, 3] + [6] * 256 + [1] * (n_vocab - 259))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    return _finish(w, path, shape, quantization)


def _finish(w: GGUFWriter, path: str, shape: dict, quantization: str) -> str:
    """Tensor table and header; the data section stays a sparse hole."""
    data = 0
    for tname, ne, type_name in tensor_table(shape, quantization):
        nbytes = tensor_bytes(ne, type_name)
        w.add_tensor_info(tname, list(reversed(ne)), np.dtype(np.float32), nbytes,
                          raw_dtype=GGMLQuantizationType[type_name])
        data += nbytes + (-nbytes % 32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    header = os.path.getsize(path)
    with open(path, "r+b") as handle:  # the data section (32-byte aligned) stays a hole
        handle.truncate(header + (-header % 32) + data)
    return path
