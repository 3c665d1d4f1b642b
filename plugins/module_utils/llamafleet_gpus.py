# Copyright: llamafleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A small catalogue of NVIDIA GPUs: the figures the memory and speed model need.

memory_mib: total memory as the driver reports it (nvidia-smi / llama.cpp), not the marketing GB.
bandwidth_gbs: peak memory bandwidth, GB/s. fp32_tflops: peak FP32. int8_tops: the integer
throughput llama.cpp's quantized matmuls (MMQ) can use: dp4a (4x FP32) on CC 6.1, dense INT8
tensor-core TOPS from CC 7.5 on; 0 where neither exists (CC 6.0 has no dp4a).
Sources: NVIDIA product briefs and datasheets (Tesla P40/P100/T4, L4, A100, H100 SXM), the
TechPowerUp GPU database for consumer cards; P106-100 per ../shared/facts.md #1 (6063 MiB as
llama.cpp reports GP106 6 GB cards). sms: streaming multiprocessors (same sources; H200 per
nvidia-smi on the card measured in tests/data/cuda-truth); the CUDA overhead estimate scales with
them (plugins/plugin_utils/_overhead.py). sms is optional for a GPU declared in the inventory.
"""
from __future__ import annotations

CATALOGUE: dict[str, dict] = {
    "P106-100":    {"memory_mib": 6063,  "bandwidth_gbs": 192.2,  "fp32_tflops": 4.375, "int8_tops": 17.5,   "compute_capability": "6.1", "sms": 10},
    "GTX 1060 6GB": {"memory_mib": 6063, "bandwidth_gbs": 192.2,  "fp32_tflops": 4.375, "int8_tops": 17.5,   "compute_capability": "6.1", "sms": 10},
    "GTX 1070":    {"memory_mib": 8113,  "bandwidth_gbs": 256.3,  "fp32_tflops": 6.463, "int8_tops": 25.9,   "compute_capability": "6.1", "sms": 15},
    "GTX 1080":    {"memory_mib": 8113,  "bandwidth_gbs": 320.3,  "fp32_tflops": 8.873, "int8_tops": 35.5,   "compute_capability": "6.1", "sms": 20},
    "Tesla P40":   {"memory_mib": 22919, "bandwidth_gbs": 347.1,  "fp32_tflops": 11.76, "int8_tops": 47.0,   "compute_capability": "6.1", "sms": 30},
    "Tesla P100":  {"memory_mib": 16280, "bandwidth_gbs": 732.2,  "fp32_tflops": 9.526, "int8_tops": 0.0,    "compute_capability": "6.0", "sms": 56},
    "Tesla T4":    {"memory_mib": 15360, "bandwidth_gbs": 320.0,  "fp32_tflops": 8.141, "int8_tops": 130.0,  "compute_capability": "7.5", "sms": 40},
    "RTX 3060":    {"memory_mib": 12288, "bandwidth_gbs": 360.0,  "fp32_tflops": 12.74, "int8_tops": 101.9,  "compute_capability": "8.6", "sms": 28},
    "RTX 3090":    {"memory_mib": 24576, "bandwidth_gbs": 936.2,  "fp32_tflops": 35.58, "int8_tops": 284.0,  "compute_capability": "8.6", "sms": 82},
    "RTX 4090":    {"memory_mib": 24564, "bandwidth_gbs": 1008.0, "fp32_tflops": 82.58, "int8_tops": 660.6,  "compute_capability": "8.9", "sms": 128},
    "L4":          {"memory_mib": 23034, "bandwidth_gbs": 300.0,  "fp32_tflops": 30.29, "int8_tops": 242.0,  "compute_capability": "8.9", "sms": 58},
    "A100 40GB":   {"memory_mib": 40960, "bandwidth_gbs": 1555.0, "fp32_tflops": 19.5,  "int8_tops": 624.0,  "compute_capability": "8.0", "sms": 108},
    "A100 80GB":   {"memory_mib": 81920, "bandwidth_gbs": 2039.0, "fp32_tflops": 19.5,  "int8_tops": 624.0,  "compute_capability": "8.0", "sms": 108},
    "H100":        {"memory_mib": 81559, "bandwidth_gbs": 3350.0, "fp32_tflops": 66.9,  "int8_tops": 1979.0, "compute_capability": "9.0", "sms": 132},
    # measured (tests/data/cuda-truth): nvidia-smi total 143,771 MiB, of which CUDA (llama.cpp) sees 143,155
    "H200":        {"memory_mib": 143155, "bandwidth_gbs": 4800.0, "fp32_tflops": 66.9, "int8_tops": 1979.0, "compute_capability": "9.0", "sms": 132},
}

# Names as nvidia-smi prints them map onto catalogue keys.
ALIASES = {
    "p106-100": "P106-100", "nvidia p106-100": "P106-100",
    "geforce gtx 1060 6gb": "GTX 1060 6GB", "gtx 1060": "GTX 1060 6GB",
    "geforce gtx 1070": "GTX 1070", "geforce gtx 1080": "GTX 1080",
    "p40": "Tesla P40", "tesla p40": "Tesla P40", "p100": "Tesla P100", "tesla p100-pcie-16gb": "Tesla P100",
    "t4": "Tesla T4", "tesla t4": "Tesla T4",
    "geforce rtx 3060": "RTX 3060", "geforce rtx 3090": "RTX 3090", "geforce rtx 4090": "RTX 4090",
    "nvidia l4": "L4", "a100": "A100 80GB", "a100-sxm4-40gb": "A100 40GB", "a100-sxm4-80gb": "A100 80GB",
    "h100": "H100", "h100 80gb hbm3": "H100", "h200": "H200", "nvidia h200": "H200",
}

GPU_FIELDS = ("memory_mib", "bandwidth_gbs", "fp32_tflops", "int8_tops", "compute_capability")


class GPUError(ValueError):
    """A GPU description that cannot be planned; the message names the field."""


def lookup(name: str) -> dict | None:
    """Catalogue entry for a GPU name as the inventory or nvidia-smi spells it, or None."""
    low = name.strip().lower()
    for cand in (low, low.removeprefix("nvidia ")):
        if cand in ALIASES:
            return CATALOGUE[ALIASES[cand]]
        for key, entry in CATALOGUE.items():
            if key.lower() == cand:
                return entry
    return None


def describe_gpu(gpu: dict, where: str) -> dict:
    """A GPU from the inventory, completed from the catalogue; every field checked."""
    if not isinstance(gpu, dict):
        raise GPUError(f"{where} must be a mapping with index and name, got {gpu!r}")
    index = gpu.get("index")
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise GPUError(f"{where}.index must be an integer >= 0, got {index!r}")
    name = gpu.get("name")
    if not isinstance(name, str) or not name:
        raise GPUError(f"{where}.name must be the GPU's name (e.g. P106-100), got {name!r}")
    known = lookup(name) or {}
    out = {"index": index, "name": name}
    for fld in GPU_FIELDS:
        value = gpu.get(fld, known.get(fld))
        if value is None:
            raise GPUError(f"{where}.{fld} is required: '{name}' is not in the catalogue "
                           f"({', '.join(sorted(CATALOGUE))})")
        if fld == "compute_capability":
            value = str(value)
            parts = value.split(".")
            if len(parts) != 2 or not all(p.isdigit() for p in parts):
                raise GPUError(f"{where}.compute_capability must look like '6.1', got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (
                fld == "memory_mib" and value <= 0):
            raise GPUError(f"{where}.{fld} must be a positive number, got {value!r}")
        out[fld] = value
    sms = gpu.get("sms", known.get("sms"))
    if sms is not None and (isinstance(sms, bool) or not isinstance(sms, int) or sms <= 0):
        raise GPUError(f"{where}.sms must be the number of streaming multiprocessors (an integer > 0), got {sms!r}")
    out["sms"] = sms
    return out


def cc_int(compute_capability: str) -> int:
    """'6.1' -> 61, the form CMAKE_CUDA_ARCHITECTURES uses."""
    major, minor = str(compute_capability).split(".")
    return int(major) * 10 + int(minor)
