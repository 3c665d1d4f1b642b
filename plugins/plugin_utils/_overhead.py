# Copyright: llamafleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Per-process CUDA memory outside llama.cpp's buffers, from the card and the server's settings.

llama.cpp's memory breakdown calls it "unaccounted": device memory a llama-server process holds
beyond its model, context and compute buffers. nvidia-smi's per-process figure is the sum of the
four (H200: within 8 MiB, tests/data/cuda-truth/h200.json). It has three parts:

1. The CUDA context with ggml-cuda's kernels loaded. The driver reserves local memory for every
   thread the card can keep resident (SMs x max threads per SM), so it grows with the card.
   Fitted, least squares, to the three llama.cpp "unaccounted" readings with quantized weights
   and flash attention (docs/plan.md, "CUDA overhead"):
       GTX 1080   20 SMs x 2048 =  40,960 threads -> 174 MiB  (one log of a fork)
       RTX 4090  128 SMs x 1536 = 196,608 threads -> 451-456 MiB (PR #15860)
       H200      132 SMs x 2048 = 270,336 threads -> 608-613 MiB (cuda-truth, 6 configurations)
   mean x = 169,301, mean y = 411.8; slope = Sxy/Sxx = 5.148e7 / 2.7425e10 = 0.001877 MiB per
   thread; intercept = 411.8 - 0.001877 x 169,301 = 94.0 MiB. Residuals +3 / -10 / +7 MiB.
2. cuBLAS, loaded only when a matrix multiplication goes through it: weights that are not
   quantized (F16/BF16/F32: MMQ handles the quantized types) or attention without flash
   attention (KQ and KQV are cuBLAS batched GEMMs). The H200 embedding server (F16 weights,
   ubatch 2048) held 702 - 608 = 94 MiB more than the chat servers; less its pool (below, 24 MiB)
   that leaves 70 MiB for cuBLAS's handle, workspace and kernels.
3. ggml's CUDA memory pool (ggml-cuda.cu ggml_cuda_pool_vmm: grows to the peak of temporary
   buffers and never shrinks) for what cuBLAS needs converted: the F16 copy of src1 and the F16
   result of each GEMM, n_tokens x the widest matrix x 2 B each; without flash attention the KQ
   product (n_head x n_kv x n_tokens, F16) and its F16 copy for KQV, at the full context in the
   worst case. Flash attention's F16 copies of a quantized K/V cache are in the compute buffer
   (the H200's compute rises from 14 to 37 MiB at ubatch 64 with q8_0 K/V): not here.

Cards that were never measured carry the spread of the public readings as their uncertainty:
a P40 total-minus-free reading of 148 MiB in one build and 294 MiB in another, against 209 from
the fit, puts a card without a reading of its own at +/- 90 MiB. A card measured by
cuda-truth or by calibrate.yml carries the spread of its own readings instead.
"""
from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024

CONTEXT_BASE_MIB = 94.0          # intercept of the fit above
CONTEXT_MIB_PER_THREAD = 0.001877  # slope of the fit above
CUBLAS_MIB = 70.0                 # H200 embedding server 702 - 608 - 24 MiB pool
UNMEASURED_UNCERTAINTY_MIB = 90.0  # P40: 294 (another build) - 209 (fit)

# Per-process "unaccounted" readings of llama.cpp on real cards: name -> (MiB readings, source).
MEASURED = {
    "H200": ((608, 609, 610, 610, 608, 613), "tests/data/cuda-truth/h200.json (llama.cpp 0c1e570, driver 580, CUDA 13.0)"),
    "RTX 4090": ((451, 456), "llama.cpp PR #15860"),
    "GTX 1080": ((174,), "one llama.cpp log (a fork) found by text search"),
}
MEASURED_UNCERTAINTY_MIB = 10.0   # the H200's six chat servers: 608-613 MiB


def max_threads_per_sm(compute_capability: str) -> int:
    """Resident threads per SM (CUDA C Programming Guide, compute capability table)."""
    major, minor = (int(p) for p in str(compute_capability).split("."))
    if (major, minor) == (7, 5):
        return 1024
    if major == 8 and minor in (6, 7, 9) or major == 12:
        return 1536
    return 2048


@dataclass
class Overhead:
    mib: float
    uncertainty_mib: float
    source: str          # "calibrated", "measured" or "estimated"
    parts: dict

    def describe(self, gpu_name: str) -> str:
        return (f"CUDA overhead of {gpu_name} {self.source} at {self.mib:,.0f} +/- "
                f"{self.uncertainty_mib:,.0f} MiB")


def uses_cublas(weight_type: str, flash_attn: bool) -> bool:
    """Whether a server's prompt processing goes through cuBLAS (and loads it)."""
    return weight_type in ("F16", "BF16", "F32") or not flash_attn


def pool_bytes(weight_type: str, flash_attn: bool, n_tokens: int, widest: int, n_head: int, n_kv: int) -> float:
    """Peak of ggml's CUDA pool for one server (see the module docstring, part 3)."""
    peak = 0.0
    if weight_type in ("F16", "BF16", "F32"):
        peak = 2.0 * n_tokens * widest * 2  # src1 and dst, F16
    if not flash_attn:
        peak = max(peak, 2.0 * n_head * n_kv * n_tokens * 2)  # KQ (F16) and its F16 copy for KQV
    return peak


def estimate(gpu: dict, weight_type: str, flash_attn: bool, n_tokens: int, widest: int, n_head: int,
             n_kv: int, calibrated: dict | None = None) -> Overhead:
    """The per-process overhead of one server on this GPU, with its uncertainty and where it comes from.

    calibrated: {"overhead_mib": .., "uncertainty_mib": ..} measured on the host by calibrate.yml
    for this GPU model (base context + cuBLAS as measured; the pool is added for the settings).
    """
    pool = pool_bytes(weight_type, flash_attn, n_tokens, widest, n_head, n_kv) / MIB
    cublas = CUBLAS_MIB if uses_cublas(weight_type, flash_attn) else 0.0
    if calibrated:
        base = float(calibrated["overhead_mib"])
        return Overhead(base + cublas + pool, float(calibrated.get("uncertainty_mib", MEASURED_UNCERTAINTY_MIB)),
                        "calibrated", {"context": base, "cublas": cublas, "pool": pool})
    sms = gpu.get("sms")
    threads = int(sms) * max_threads_per_sm(gpu["compute_capability"]) if sms else None
    measured = next((v for k, v in MEASURED.items() if _same(k, gpu.get("name", ""))), None)
    if measured and len(measured[0]) > 1:
        base = sum(measured[0]) / len(measured[0])
        spread = max(MEASURED_UNCERTAINTY_MIB, (max(measured[0]) - min(measured[0])) / 2)
        return Overhead(base + cublas + pool, spread, "measured", {"context": base, "cublas": cublas, "pool": pool})
    if threads is None:
        raise ValueError(f"{gpu.get('name')}: no SM count (sms) to estimate the CUDA overhead from; "
                         f"set sms on the GPU in llamafleet_gpus, or llamafleet_cuda_overhead_mib, "
                         f"or run playbooks/calibrate.yml")
    base = CONTEXT_BASE_MIB + CONTEXT_MIB_PER_THREAD * threads
    return Overhead(base + cublas + pool, UNMEASURED_UNCERTAINTY_MIB, "estimated",
                    {"context": base, "cublas": cublas, "pool": pool})


def _same(key: str, name: str) -> bool:
    def norm(text: str) -> str:
        return text.lower().removeprefix("nvidia ").removeprefix("geforce ").strip()
    return norm(key) == norm(name)
