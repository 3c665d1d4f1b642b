"""A toy model with round sizes, so that memory and speed can be worked out by hand in a comment.

4 layers of 10 MiB, token_embd 2 MiB, output 3 MiB, output_norm 1 MiB (46 MiB in all); n_embd 512,
n_ff 1024, 8 query heads and 2 KV heads of 64 dimensions, 1,000 tokens, trained context 4096.
One token of KV cache in f16 is 4 layers x 2 heads x (64 + 64) x 2 B = 2,048 B.
"""
from __future__ import annotations

from ansible_collections.llamafleet.fleet.plugins.module_utils.llamafleet_gguf import ModelInfo, TensorInfo

MIB = 1024 * 1024


def toy(n_swa: int = 0, swa_layers=(False,) * 4, tied: bool = False, causal: bool = True, name: str = "toy",
        layer_mib: int = 10, architecture: str = "llama") -> ModelInfo:
    tensors = [TensorInfo("token_embd.weight", "Q8_0", 2 * MIB, None)]
    if not tied:
        tensors.append(TensorInfo("output.weight", "Q8_0", 3 * MIB, None))
    tensors.append(TensorInfo("output_norm.weight", "F32", 1 * MIB, None))
    tensors += [TensorInfo(f"blk.{i}.ffn_up.weight", "Q8_0", layer_mib * MIB, i) for i in range(4)]
    return ModelInfo(source=name, architecture=architecture, name=name, file_size=sum(t.n_bytes for t in tensors),
                     n_layer=4, n_embd=512, n_ff=1024, n_vocab=1000, n_ctx_train=4096, n_head=[8] * 4,
                     n_head_kv=[2] * 4, head_dim_k=64, head_dim_v=64, n_swa=n_swa, swa_layers=list(swa_layers),
                     causal=causal, has_kv_cache=causal, file_type="Q8_0", tensors=tensors)
