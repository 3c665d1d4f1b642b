# Copyright: llamafleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Models described by their published shape and a quantization, before any file exists.

Planning a model you have not downloaded (or hardware you have not bought) needs its tensor
table. For the shapes below it is rebuilt from the architecture's published configuration
(config.json of the upstream checkpoint) and llama.cpp's quantization mix (src/llama-quant.cpp:
the _M mixes give attn_v and ffn_down Q6_K on the layers use_more_bits() picks, and the output
matrix Q6_K). The same table writes metadata-exact test models (tests/support/synthetic_gguf.py).
A real file's header always wins over this: see llamafleet_plan.describe_model.
"""
from __future__ import annotations

from ansible_collections.llamafleet.fleet.plugins.module_utils.llamafleet_gguf import ModelInfo, TensorInfo

# ggml block sizes: type -> (values per block, bytes per block) (ggml/src/ggml-common.h)
BLOCK = {"F32": (1, 4), "F16": (1, 2), "BF16": (1, 2), "Q8_0": (32, 34), "Q4_0": (32, 18),
         "Q4_1": (32, 20), "Q5_0": (32, 22), "Q5_1": (32, 24), "Q2_K": (256, 84), "Q3_K": (256, 110),
         "Q4_K": (256, 144), "Q5_K": (256, 176), "Q6_K": (256, 210)}

# name -> published shape (upstream config.json)
SHAPES: dict[str, dict] = {
    "llama-3.1-8b": {"architecture": "llama", "n_layer": 32, "n_embd": 4096, "n_head": 32,
                     "n_head_kv": 8, "head_dim": 128, "n_ff": 14336, "n_vocab": 128256,
                     "n_ctx_train": 131072, "tied_output": False},
    "gemma-3-270m": {"architecture": "gemma3", "n_layer": 18, "n_embd": 640, "n_head": 4,
                     "n_head_kv": 1, "head_dim": 256, "n_ff": 2048, "n_vocab": 262144,
                     "n_ctx_train": 32768, "n_swa": 512, "tied_output": True},
    "nomic-embed-text-v1.5": {"architecture": "nomic-bert", "n_layer": 12, "n_embd": 768,
                              "n_head": 12, "n_head_kv": 12, "head_dim": 64, "n_ff": 3072,
                              "n_vocab": 30522, "n_ctx_train": 2048, "tied_output": True},
}

# quantization name -> (base type, type of attn_v/ffn_down on more-bits layers, output type, token_embd type)
MIXES = {
    "F16": ("F16", "F16", "F16", "F16"),
    "Q8_0": ("Q8_0", "Q8_0", "Q8_0", "Q8_0"),
    "Q6_K": ("Q6_K", "Q6_K", "Q6_K", "Q6_K"),
    "Q5_K_M": ("Q5_K", "Q6_K", "Q6_K", "Q5_K"),
    "Q4_K_M": ("Q4_K", "Q6_K", "Q6_K", "Q4_K"),
    "Q4_0": ("Q4_0", "Q4_0", "Q6_K", "Q4_0"),
}


class ShapeError(ValueError):
    """An unknown shape or quantization; the message lists the valid ones."""


def use_more_bits(i_layer: int, n_layer: int) -> bool:
    return i_layer < n_layer // 8 or i_layer >= 7 * n_layer // 8 or (i_layer - n_layer // 8) % 3 == 2


def tensor_bytes(ne: list[int], type_name: str) -> int:
    block, size = BLOCK[type_name]
    n = 1
    for d in ne:
        n *= d
    if ne[0] % block:
        raise ShapeError(f"a row of {ne[0]} values cannot be stored as {type_name} (blocks of {block})")
    return n // block * size


def tensor_table(shape: dict, quantization: str) -> list[tuple[str, list[int], str]]:
    """(name, ggml shape, type) of every tensor of the architecture at this quantization."""
    if quantization not in MIXES:
        raise ShapeError(f"quantization '{quantization}' has no known mix; valid: {', '.join(MIXES)}")
    base, more, out_t, embd_t = MIXES[quantization]
    arch, e, hd = shape["architecture"], shape["n_embd"], shape["head_dim"]
    n_layer, n_ff, n_head, n_kv = shape["n_layer"], shape["n_ff"], shape["n_head"], shape["n_head_kv"]

    def fit(type_name: str, row: int) -> str:
        # llama.cpp falls back to a legacy type when a row does not divide into K-quant blocks
        return type_name if row % BLOCK[type_name][0] == 0 else "Q8_0" if row % 32 == 0 else "F16"

    t = [("token_embd.weight", [e, shape["n_vocab"]], fit(embd_t, e))]
    if arch == "nomic-bert":
        t += [("token_types.weight", [e, 2], "F32"), ("token_embd_norm.weight", [e], "F32"),
              ("token_embd_norm.bias", [e], "F32")]
        for i in range(n_layer):
            b = f"blk.{i}."
            t += [(b + "attn_qkv.weight", [e, 3 * e], fit(base, e)),
                  (b + "attn_output.weight", [e, e], fit(base, e)),
                  (b + "attn_output_norm.weight", [e], "F32"), (b + "attn_output_norm.bias", [e], "F32"),
                  (b + "ffn_up.weight", [e, n_ff], fit(base, e)), (b + "ffn_gate.weight", [e, n_ff], fit(base, e)),
                  (b + "ffn_down.weight", [n_ff, e], fit(more if use_more_bits(i, n_layer) else base, n_ff)),
                  (b + "layer_output_norm.weight", [e], "F32"), (b + "layer_output_norm.bias", [e], "F32")]
        return t
    t.append(("output_norm.weight", [e], "F32"))
    if not shape.get("tied_output"):
        t.append(("output.weight", [e, shape["n_vocab"]], fit(out_t, e)))
    for i in range(n_layer):
        b = f"blk.{i}."
        v_type = more if use_more_bits(i, n_layer) else base
        t += [
            (b + "attn_norm.weight", [e], "F32"),
            (b + "attn_q.weight", [e, n_head * hd], fit(base, e)),
            (b + "attn_k.weight", [e, n_kv * hd], fit(base, e)),
            (b + "attn_v.weight", [e, n_kv * hd], fit(v_type, e)),
            (b + "attn_output.weight", [n_head * hd, e], fit(base, n_head * hd)),
            (b + "ffn_norm.weight", [e], "F32"),
            (b + "ffn_gate.weight", [e, n_ff], fit(base, e)),
            (b + "ffn_up.weight", [e, n_ff], fit(base, e)),
            (b + "ffn_down.weight", [n_ff, e], fit(v_type, n_ff)),
        ]
        if arch == "gemma3":
            t += [(b + "attn_q_norm.weight", [hd], "F32"), (b + "attn_k_norm.weight", [hd], "F32"),
                  (b + "post_attention_norm.weight", [e], "F32"), (b + "post_ffw_norm.weight", [e], "F32")]
    return t


def model_info_from_shape(shape_name: str, quantization: str, source: str) -> ModelInfo:
    """A ModelInfo for a catalogued shape at a quantization (no file needed)."""
    if shape_name not in SHAPES:
        raise ShapeError(f"{source}: shape '{shape_name}' is not catalogued; valid: {', '.join(SHAPES)}")
    s = SHAPES[shape_name]
    tensors = []
    for name, ne, type_name in tensor_table(s, quantization):
        layer = int(name.split(".")[1]) if name.startswith("blk.") else None
        tensors.append(TensorInfo(name, type_name, tensor_bytes(ne, type_name), layer))
    n_layer = s["n_layer"]
    n_swa = s.get("n_swa", 0)
    from ansible_collections.llamafleet.fleet.plugins.module_utils.llamafleet_gguf import NO_KV_CACHE_ARCHS, SWA_DEFAULT_PATTERN
    pattern = SWA_DEFAULT_PATTERN.get(s["architecture"], 0)
    swa = [bool(n_swa) and (pattern == 0 or i % pattern < pattern - 1) for i in range(n_layer)]
    no_kv = s["architecture"] in NO_KV_CACHE_ARCHS
    return ModelInfo(
        source=source, architecture=s["architecture"], name=f"{shape_name} {quantization} (declared shape)",
        file_size=sum(t.n_bytes for t in tensors), n_layer=n_layer, n_embd=s["n_embd"], n_ff=s["n_ff"],
        n_vocab=s["n_vocab"], n_ctx_train=s["n_ctx_train"], n_head=[s["n_head"]] * n_layer,
        n_head_kv=[s["n_head_kv"]] * n_layer, head_dim_k=s["head_dim"], head_dim_v=s["head_dim"],
        n_swa=n_swa, swa_layers=swa, causal=not no_kv, has_kv_cache=not no_kv,
        file_type=quantization, tensors=tensors)
