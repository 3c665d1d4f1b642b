# Copyright: llamafleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Memory model of one llama-server process, per device, in the terms llama.cpp reports.

llama.cpp's memory breakdown (``-lv 4``) splits every device into model (weights), context
(KV cache) and compute (the scheduler's graph buffers). This module predicts the same three
columns from GGUF metadata and the server's arguments, adds what the breakdown does not show
(CUDA context and pool, the host prompt cache, process overhead) and sums per device.
Formulas follow the pinned llama.cpp tree (paths relative to it):
  - n_ctx padding and per-sequence split: src/llama-context.cpp (GGML_PAD(n_ctx, 256))
  - SWA cache size: src/llama-kv-cache-iswa.cpp (PAD256(min(n_ctx, n_swa*(unified?n_seq:1)+n_ubatch)))
  - layer placement: src/llama-model.cpp (i_gpu_start = n_layer + 1 - n_gpu_layers; output on GPU
    only when n_gpu_layers > n_layer; token_embd always on the CPU)
  - reserve graph: src/llama-context.cpp sched_reserve (n_tokens = min(n_ctx, n_ubatch),
    outputs = one per sequence in llama-server)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ansible_collections.llamafleet.fleet.plugins.module_utils.llamafleet_gguf import ModelInfo
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._server_args import KV_TYPE_BYTES, QUANTIZED_KV_TYPES, effective

MIB = 1024 * 1024

# Per-process CUDA cost outside llama.cpp's buffers ("unaccounted" in its breakdown): the CUDA
# context with the kernels of ggml-cuda loaded, cuBLAS handles and the ggml CUDA memory pool.
# Public nvidia-smi readings of an idle llama.cpp CUDA process minus its logged buffers are
# 150-300 MiB on Pascal/Turing (facts.md formulas: "CUDA context ~0.1-0.3 GiB"); 250 MiB is the
# planning default and `cuda_overhead_mib` overrides it per host.
CUDA_OVERHEAD_MIB = 250
# Host RAM of a llama-server process besides its buffers: binary, libraries, HTTP threads, heap.
PROCESS_OVERHEAD_MIB = 64
# CUDA runtime host allocations of a process (driver and runtime state, pinned staging).
CUDA_HOST_OVERHEAD_MIB = 160


def pad(value: int, to: int) -> int:
    return (value + to - 1) // to * to


@dataclass
class KVLayout:
    """Cells of each KV cache of one server, as llama.cpp sizes them."""
    n_ctx: int           # padded context (all sequences)
    n_ctx_seq: int       # context per sequence
    n_seq: int
    unified: bool
    cells_base: int      # cells per stream of the full-attention cache
    cells_swa: int       # cells per stream of the sliding-window cache (0 without SWA layers)
    streams: int         # 1 when unified, n_seq otherwise
    n_ubatch: int        # the physical batch: ubatch_size clamped to batch_size, as llama.cpp does


@dataclass
class ServerMemory:
    """Predicted memory of one server. Device columns are MiB on the device it runs on."""
    device: str                      # "cpu" or "cuda:<index>"
    gpu_layers: int                  # layers whose weights sit on the device (cuda)
    n_layer: int
    output_on_device: bool
    model: float = 0.0               # weights on the device
    context: float = 0.0             # KV cache
    compute: float = 0.0             # graph buffers
    overhead: float = 0.0            # CUDA context + pool (cuda only)
    host_model: float = 0.0          # weights left in host RAM (mmap or anonymous)
    host_compute: float = 0.0        # CPU-side graph buffers when offloading
    host_prompt_cache: float = 0.0   # --cache-ram cap (inf when unlimited)
    host_overhead: float = 0.0
    kv: KVLayout | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return self.model + self.context + self.compute + self.overhead

    @property
    def host_total_without_cache(self) -> float:
        return self.host_model + self.host_compute + self.host_overhead

    def columns(self) -> dict:
        return {"model": round(self.model, 1), "context": round(self.context, 1),
                "compute": round(self.compute, 1), "overhead": round(self.overhead, 1),
                "total": round(self.total, 1)}


def resolve_parallel(args: dict) -> tuple[int, bool]:
    """Slots and whether the KV cache is unified, as llama-server resolves them."""
    n_seq = int(args.get("parallel", -1))
    unified = bool(args.get("kv_unified", False))
    if n_seq < 0:  # auto: 4 slots sharing one unified cache (tools/server/server.cpp)
        return 4, True
    return max(n_seq, 1), unified


def kv_layout(model: ModelInfo, args: dict) -> KVLayout:
    n_seq, unified = resolve_parallel(args)
    n_ctx = int(args.get("ctx_size", 0)) or model.n_ctx_train
    n_ctx = pad(n_ctx, 256)
    n_ubatch = min(int(args.get("ubatch_size", 512)), int(args.get("batch_size", 2048)))
    if unified:
        n_ctx_seq, streams = n_ctx, 1
    else:
        n_ctx_seq = pad(n_ctx // n_seq, 256)
        n_ctx = n_ctx_seq * n_seq
        streams = n_seq
    cells_base = n_ctx if unified else n_ctx_seq
    cells_swa = 0
    if any(model.swa_layers):
        cells_swa = pad(min(cells_base, model.n_swa * (n_seq if unified else 1) + n_ubatch), 256)
        if args.get("swa_full"):
            cells_swa = cells_base
    return KVLayout(n_ctx, n_ctx_seq, n_seq, unified, cells_base, cells_swa, streams, n_ubatch)


def kv_bytes(model: ModelInfo, args: dict, layout: KVLayout, layers: list[int] | None = None) -> float:
    """Bytes of K and V over the given layers (default: all)."""
    if not model.has_kv_cache:
        return 0.0
    tk = KV_TYPE_BYTES[args.get("cache_type_k", "f16")]
    tv = KV_TYPE_BYTES[args.get("cache_type_v", "f16")]
    total = 0.0
    for il in (range(model.n_layer) if layers is None else layers):
        cells = (layout.cells_swa if model.swa_layers[il] else layout.cells_base) * layout.streams
        total += cells * model.n_head_kv[il] * (model.head_dim_k * tk + model.head_dim_v * tv)
    return total


def flash_attn_enabled(args: dict) -> bool:
    """-fa auto resolves to on wherever the device supports it: the CPU and every CUDA device."""
    return args.get("flash_attn", "auto") != "off"


def compute_bytes(model: ModelInfo, args: dict, layout: KVLayout, fa: bool) -> float:
    """Peak of the reserve graph's buffers (prompt-processing graph, n_ubatch tokens).

    ggml-alloc reuses memory, so the buffer is the largest set of tensors alive at once, not a
    sum. The live set at the peak is the layer input and residual (n_embd), the attention
    projections or the FFN (gate, up and their product: 3 x n_ff), the KQ mask(s), and without
    flash attention the KQ scores (n_head x n_kv x n_tokens, F32). At the end of the graph the
    logits (n_vocab x outputs) take over. Calibrated against llama.cpp's reported compute
    buffers (tests/integration/test_memory_accuracy.py).
    """
    n_seq = layout.n_seq
    # non-causal models: llama-server sets n_batch = n_ubatch, so ubatch_size alone decides
    n_tokens = min(layout.n_ctx, layout.n_ubatch if model.causal else int(args.get("ubatch_size", 512)))
    f32 = 4
    n_head = max(model.n_head)
    n_embd_q = n_head * model.head_dim_k
    n_kv_base = layout.cells_base if model.has_kv_cache else n_tokens
    # the KQ mask: F16 with FA, F32 without; one per cache kind, rows padded to GGML_KQ_MASK_PAD
    mask_el = 2 if fa else 4
    n_tok_pad = pad(n_tokens, 64)
    masks = (n_kv_base + layout.cells_swa) * n_tok_pad * mask_el * layout.streams
    residual = 3 * model.n_embd * n_tokens * f32  # layer input, residual stream and the norm output
    ffn = 3 * model.n_ff * n_tokens * f32
    attn = (n_embd_q + 2 * model.n_head_kv[0] * model.head_dim_k) * n_tokens * f32 * 2
    if not fa:
        attn += n_head * n_kv_base * n_tokens * f32
    layer_peak = max(ffn, attn)
    outputs = n_seq if model.causal else n_tokens
    logits = (model.n_vocab if model.causal else model.n_embd) * outputs * f32
    return max(masks + residual + layer_peak, logits + residual)


def placement(model: ModelInfo, n_gpu_layers: int) -> tuple[list[int], bool]:
    """(layers on the GPU, output layer on the GPU) for a given -ngl."""
    if n_gpu_layers < 0:  # -1 auto (--fit decides; plan as full offload), <= -2 all
        n_gpu_layers = model.n_layer + 1
    start = max(model.n_layer + 1 - n_gpu_layers, 0)
    return [il for il in range(model.n_layer) if il >= start], n_gpu_layers > model.n_layer


def server_memory(model: ModelInfo, args: dict, backend: str, device: str = "cpu",
                  cuda_overhead_mib: float = CUDA_OVERHEAD_MIB) -> ServerMemory:
    """Predict the memory of one llama-server with these (validated) args."""
    args = effective(args)
    layout = kv_layout(model, args)
    fa = flash_attn_enabled(args)
    cache_ram = int(args.get("cache_ram", 8192))
    prompt_cache = math.inf if cache_ram < 0 else float(cache_ram)
    if not model.has_kv_cache or not model.causal:
        prompt_cache = 0.0  # nothing to cache: no KV state (embedding encoders)
    if backend == "cpu":
        mem = ServerMemory(device="cpu", gpu_layers=0, n_layer=model.n_layer, output_on_device=False,
                           kv=layout)
        mem.model = model.weights_bytes / MIB
        mem.context = kv_bytes(model, args, layout) / MIB
        mem.compute = compute_bytes(model, args, layout, fa) / MIB
        mem.host_overhead = PROCESS_OVERHEAD_MIB
        mem.host_prompt_cache = prompt_cache
        return mem

    gpu_layers, output_on_gpu = placement(model, int(args.get("n_gpu_layers", -1)))
    cpu_layers = [il for il in range(model.n_layer) if il not in gpu_layers]
    mem = ServerMemory(device=device, gpu_layers=len(gpu_layers), n_layer=model.n_layer,
                       output_on_device=output_on_gpu, kv=layout)
    out_bytes = model.output_bytes or (model.token_embd_bytes if model.tied_output else 0)
    dev_weights = sum(model.layer_bytes(il) for il in gpu_layers)
    host_weights = model.token_embd_bytes + sum(model.layer_bytes(il) for il in cpu_layers)
    if output_on_gpu:
        dev_weights += out_bytes + model.non_layer_bytes
    else:
        host_weights += model.output_bytes + model.non_layer_bytes
    mem.model = dev_weights / MIB
    mem.context = kv_bytes(model, args, layout, gpu_layers) / MIB
    mem.compute = compute_bytes(model, args, layout, fa) / MIB
    if fa and (args.get("cache_type_k") in QUANTIZED_KV_TYPES or args.get("cache_type_v") in QUANTIZED_KV_TYPES):
        # Without tensor cores the tile kernel converts quantized K/V to temporary F16 copies for
        # prompt processing (ggml-cuda/fattn.cu): pool memory, outside the compute buffer.
        n_embd_kv = max(model.n_head_kv) * (model.head_dim_k + model.head_dim_v)
        mem.compute += layout.cells_base * layout.streams * n_embd_kv * 2 / MIB
    mem.overhead = float(cuda_overhead_mib)
    mem.host_model = host_weights / MIB
    host_kv = kv_bytes(model, args, layout, cpu_layers) / MIB
    mem.host_compute = host_kv + (model.n_embd * min(layout.n_ctx, layout.n_ubatch) * 4 * 2) / MIB
    mem.host_overhead = PROCESS_OVERHEAD_MIB + CUDA_HOST_OVERHEAD_MIB
    mem.host_prompt_cache = prompt_cache
    return mem
