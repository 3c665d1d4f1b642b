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
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._overhead import Overhead, estimate
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._server_args import KV_TYPE_BYTES, QUANTIZED_KV_TYPES, effective

MIB = 1024 * 1024

# Per-process CUDA cost outside llama.cpp's buffers ("unaccounted" in its breakdown) is modelled
# from the card and the settings in _overhead.py; this is only what a caller that names no GPU
# gets (unit tests of the other terms). The plan always passes the GPU.
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
    host_model: float = 0.0          # weights left in host RAM (mmap: the mapped range)
    host_weights: float = 0.0        # the CPU-resident tensors themselves (read per token)
    host_compute: float = 0.0        # CPU-side graph buffers when offloading
    host_output: float = 0.0         # llama.cpp's output buffer (logits/embeddings rows), host RAM
    host_prompt_cache: float = 0.0   # --cache-ram cap (inf when unlimited)
    host_overhead: float = 0.0
    kv: KVLayout | None = None
    overhead_detail: Overhead | None = None  # how the CUDA overhead was obtained, with its uncertainty
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return self.model + self.context + self.compute + self.overhead

    @property
    def host_total_without_cache(self) -> float:
        return self.host_model + self.host_compute + self.host_output + self.host_overhead

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


def embeddings_enabled(args: dict) -> bool:
    """--embeddings (or a pooling type) makes llama.cpp output every token of every batch."""
    return bool(args.get("embeddings")) or args.get("pooling") not in (None, "none")


def n_outputs_max(model: ModelInfo, args: dict, layout: KVLayout) -> int:
    """Rows llama.cpp's graph and output buffer hold: one per slot, or every token of a batch.

    tools/server/server-context.cpp server_output_limits: an embedding server's n_outputs_max is
    n_batch (= n_ubatch there, tools/server/server.cpp); src/llama-context.cpp decode() then
    outputs every token (output_all = cparams.embeddings), and encoders (no memory) always do.
    A chat server outputs one token per slot (n_outputs_max = n_parallel).
    """
    if embeddings_enabled(args) or not model.has_kv_cache:
        return min(layout.n_ctx, layout.n_ubatch) if model.causal else layout.n_ubatch
    return layout.n_seq


def compute_bytes(model: ModelInfo, args: dict, layout: KVLayout, fa: bool, backend: str = "cpu",
                  offloaded_weight_bytes: float = 0.0) -> float:
    """Peak of the reserve graph's buffers (prompt-processing graph, n_ubatch tokens).

    ggml-alloc reuses memory, so the buffer is the largest set of tensors alive at once, not a
    sum. Alive through the whole graph: the KQ mask(s) (F16 with flash attention, F32 without;
    one per cache kind) and the residual stream (layer input, residual, norm output: 3 x n_embd
    rows). On top, the largest of three phases:
      - attention: Q, K, V projections (twice, before and after RoPE), plus without flash
        attention the KQ scores (n_head x n_kv x n_tokens, F32); on CUDA with a quantized K or V
        cache, flash attention's F16 copies of K and V (n_kv x n_embd_kv x 2 B);
      - FFN: gate, up and their product (3 x n_ff rows), plus on CUDA with layers left on the CPU
        the GPU copy of the largest CPU-resident weight matrix (ops of >= 32 tokens are offloaded,
        ggml-cuda op_offload);
      - output: the logits (n_vocab x outputs, F32) of a decoder model. An embedding server runs
        the output layer for every token (n_outputs_max), which dominates on large vocabularies.
    Checked against llama.cpp's reported compute buffers (tests/integration/test_memory_accuracy.py
    on the CPU, tests/integration/test_cuda_truth.py on an H200).
    """
    # non-causal models: llama-server sets n_batch = n_ubatch, so ubatch_size alone decides
    n_tokens = min(layout.n_ctx, layout.n_ubatch) if model.causal else layout.n_ubatch
    f32 = 4
    n_head = max(model.n_head)
    n_embd_q = n_head * model.head_dim_k
    n_kv_base = layout.cells_base if model.has_kv_cache else n_tokens
    mask_el = 2 if fa else 4
    n_tok_pad = pad(n_tokens, 64)
    # one row per token of the ubatch over one stream's cells: n_kv x (n_tokens / n_stream) x n_stream
    # (src/llama-graph.cpp build_attn_inp_kq_mask), so the slots' streams do not multiply it
    masks = (n_kv_base + layout.cells_swa) * n_tok_pad * mask_el
    residual = 3 * model.n_embd * n_tokens * f32
    ffn = 3 * model.n_ff * n_tokens * f32
    if backend == "cuda" and n_tokens >= 32:
        ffn += offloaded_weight_bytes
    attn = (n_embd_q + 2 * model.n_head_kv[0] * model.head_dim_k) * n_tokens * f32 * 2
    if not fa:
        attn += n_head * n_kv_base * n_tokens * f32
    elif backend == "cuda" and model.has_kv_cache and (
            args.get("cache_type_k") in QUANTIZED_KV_TYPES or args.get("cache_type_v") in QUANTIZED_KV_TYPES):
        n_embd_kv = max(model.n_head_kv) * (model.head_dim_k + model.head_dim_v)
        attn += n_kv_base * layout.streams * n_embd_kv * 2
    outputs = n_outputs_max(model, args, layout)
    # decoders project every output row to the vocabulary; encoders (BERT family) emit n_embd rows
    logits = (model.n_vocab if model.causal else model.n_embd) * outputs * f32
    return max(masks + residual + max(ffn, attn), logits + residual)


def output_buffer_bytes(model: ModelInfo, args: dict, layout: KVLayout) -> float:
    """llama.cpp's output buffer (src/llama-context.cpp output_reserve): host RAM, outside the breakdown.

    logits (n_vocab floats, always) and, with embeddings, n_embd floats per output row, for
    max(outputs, n_seq) rows. It is allocated in host memory (pinned CUDA_Host memory when the
    output layer is on a GPU) and cleared, so every page is resident. An embedding server grows it
    to a full batch at its first long input: 262,144 x 512 x 4 B = 512 MiB for Gemma 3 at ubatch 512.
    """
    rows = max(n_outputs_max(model, args, layout), layout.n_seq)
    width = model.n_vocab + (model.n_embd if embeddings_enabled(args) or not model.has_kv_cache else 0)
    return float(width * rows * 4)


def placement(model: ModelInfo, n_gpu_layers: int) -> tuple[list[int], bool]:
    """(layers on the GPU, output layer on the GPU) for a given -ngl.

    src/llama-model.cpp load_tensors: i_gpu_start = max(n_layer + 1 - ngl, 0) and the output layer
    is "layer" n_layer, so it is the first one offloaded: -ngl N puts the output layer and the last
    N - 1 repeating layers on the GPU (measured on an H200: -ngl 28 of Llama-3.1-8B = 27 layers +
    output.weight = 5,018 MiB).
    """
    if n_gpu_layers < 0:  # -1 auto (--fit decides; plan as full offload), <= -2 all
        n_gpu_layers = model.n_layer + 1
    start = max(model.n_layer + 1 - n_gpu_layers, 0)
    return [il for il in range(model.n_layer) if il >= start], n_gpu_layers >= 1


def mapped_span_bytes(model: ModelInfo, on_cpu) -> float:
    """Bytes of the file range llama.cpp keeps mapped for the CPU-resident tensors.

    With mmap (the default load mode) the host "model" buffer is one view of the file from the
    first to the last CPU tensor (src/llama-model-loader.cpp: the CPU buffer is made from the
    mapping's [first, last) range; only the head and tail outside it are unmapped), so GPU tensors
    stored between them count too. Tensors are taken in file order, each padded to the GGUF
    alignment (32 B). H200, Llama-3.1-8B Q6_K at -ngl 28: token_embd 411 + output.weight 411 (on
    the GPU, but between them in the file) + 5 layers x 171 = 1,675 MiB at exit.
    """
    offset, first, last = 0, None, None
    for tensor in model.tensors:
        size = tensor.n_bytes + (-tensor.n_bytes % 32)
        if on_cpu(tensor):
            first = offset if first is None else first
            last = offset + size
        offset += size
    return float(last - first) if first is not None else 0.0


def weight_type(model: ModelInfo) -> str:
    """The type holding most of the repeating layers' bytes (decides MMQ or cuBLAS on CUDA)."""
    by_type: dict[str, int] = {}
    for t in model.tensors:
        if t.layer is not None:
            by_type[t.type] = by_type.get(t.type, 0) + t.n_bytes
    return max(by_type, key=by_type.get) if by_type else "F32"


def server_memory(model: ModelInfo, args: dict, backend: str, device: str = "cpu",
                  cuda_overhead_mib: float | None = None, gpu: dict | None = None,
                  calibration: dict | None = None) -> ServerMemory:
    """Predict the memory of one llama-server with these (validated) args.

    On CUDA the per-process overhead is cuda_overhead_mib when given (llamafleet_cuda_overhead_mib,
    an override), else calibrated (the host's calibration file from calibrate.yml, checked by
    _calibration) or estimated for the gpu (_overhead.estimate); with neither, CUDA_OVERHEAD_MIB.
    A calibration's process_overhead_mib replaces PROCESS_OVERHEAD_MIB.
    """
    calibration = calibration or {}
    process_overhead = float(calibration.get("process_overhead_mib") or PROCESS_OVERHEAD_MIB)
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
        mem.host_output = output_buffer_bytes(model, args, layout) / MIB
        mem.host_overhead = process_overhead
        mem.host_prompt_cache = prompt_cache
        return mem

    gpu_layers, output_on_gpu = placement(model, int(args.get("n_gpu_layers", -1)))
    cpu_layers = [il for il in range(model.n_layer) if il not in gpu_layers]
    mem = ServerMemory(device=device, gpu_layers=len(gpu_layers), n_layer=model.n_layer,
                       output_on_device=output_on_gpu, kv=layout)
    # encoders (BERT family) have no output projection; a tied decoder copies token_embd to the GPU
    out_bytes = model.output_bytes or (model.token_embd_bytes if model.tied_output and model.causal else 0)
    dev_weights = sum(model.layer_bytes(il) for il in gpu_layers)
    host_weights = model.token_embd_bytes + sum(model.layer_bytes(il) for il in cpu_layers)
    if output_on_gpu:
        dev_weights += out_bytes + model.non_layer_bytes
    else:
        host_weights += model.output_bytes + model.non_layer_bytes
    mem.model = dev_weights / MIB
    mem.context = kv_bytes(model, args, layout, gpu_layers) / MIB
    largest_cpu_matrix = max((t.n_bytes for t in model.tensors if t.layer in cpu_layers), default=0)
    mem.compute = compute_bytes(model, args, layout, fa, "cuda", largest_cpu_matrix) / MIB
    if cuda_overhead_mib is not None:
        mem.overhead_detail = Overhead(float(cuda_overhead_mib), 0.0, "set", {"llamafleet_cuda_overhead_mib": cuda_overhead_mib})
    elif gpu is not None:
        n_tokens_pp = min(layout.n_ctx, layout.n_ubatch) if model.causal else layout.n_ubatch
        try:
            mem.overhead_detail = estimate(gpu, weight_type(model), fa, n_tokens_pp, max(model.n_ff, 3 * model.n_embd),
                                           max(model.n_head), layout.cells_base if model.has_kv_cache else n_tokens_pp,
                                           (calibration.get("gpus") or {}).get(gpu["name"]))
        except ValueError as err:  # no SM count: the plan turns this note into an error finding
            mem.notes.append(f"cuda-overhead-unknown: {err}")
    mem.overhead = mem.overhead_detail.mib if mem.overhead_detail else float(CUDA_OVERHEAD_MIB)
    mem.host_model = mem.host_weights = host_weights / MIB
    if args.get("load_mode", "auto") in ("auto", "mmap", "mlock", "mmap+mlock"):
        # the mapped range, not just the CPU tensors (see mapped_span_bytes)
        gpu_set = set(gpu_layers)

        def on_cpu(t):
            if t.layer is not None:
                return t.layer not in gpu_set
            return t.name == "token_embd.weight" or not output_on_gpu
        mem.host_model = max(mem.host_model, mapped_span_bytes(model, on_cpu) / MIB)
    host_kv = kv_bytes(model, args, layout, cpu_layers) / MIB
    # the CPU side of the graph: token_embd's get_rows result, its scaled copy and the input of the
    # first GPU split, n_embd floats per token each (H200: 3 MiB at ubatch 64, 24 MiB at 512 for n_embd 4096)
    n_tokens = min(layout.n_ctx, layout.n_ubatch) if model.causal else layout.n_ubatch
    mem.host_compute = host_kv + (model.n_embd * n_tokens * 4 * 3) / MIB
    mem.host_output = output_buffer_bytes(model, args, layout) / MIB
    mem.host_overhead = process_overhead + CUDA_HOST_OVERHEAD_MIB
    mem.host_prompt_cache = prompt_cache
    return mem
