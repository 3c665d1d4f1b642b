"""The GPU stack rule and the GPU comparison.

Expected values are written from the sources, not from the module's constants:
- P106-100 is Pascal, compute capability 6.1 (../shared/facts.md #1). NVIDIA: "release 580 series will
  be the last to support ... Maxwell, Pascal, and Volta"; CUDA 12.9 (12.9.1) is the last toolkit that
  compiles sm_61, CUDA 13.0 removed sm_5x/6x/7.0; build 61-real (facts.md #2). NVIDIA's open kernel
  modules support Turing and later only, so Pascal needs the proprietary ones (driver installation
  guide, "Kernel Modules").
- RTX 3090 is GA102, compute capability 8.6; H100 is GH100, compute capability 9.0 (NVIDIA's CUDA GPUs
  list). Both run on the R580 long-term branch (supported to 2028, the minimum driver for CUDA 13);
  R580 ships CUDA 13.0, whose latest update is 13.0.2 (CUDA release notes).
"""
from __future__ import annotations

import os

import pytest

from ansible_collections.llamafleet.fleet.plugins.module_utils.llamafleet_gpus import describe_gpu
from ansible_collections.llamafleet.fleet.plugins.module_utils.nvidia_smi import read
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._gpus import (
    arch_covers,
    cuda_elf_missing,
    elf_architectures,
    gpu_differences,
    gpu_stack,
    unresolved_libraries,
)

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "modules", "fixtures")


def gpus(*names):
    return [describe_gpu({"index": i, "name": n}, f"llamafleet_gpus[{i}]") for i, n in enumerate(names)]


def stack(names, **pins):
    result = gpu_stack(gpus(*names), pins)
    return {k: result[k] for k in ("driver_branch", "cuda_version", "cuda_architectures", "kernel_modules")}, \
        [e["code"] for e in result["errors"]], " ".join(e["message"] for e in result["errors"])


@pytest.mark.parametrize("names,expected", [
    (["P106-100"] * 8, {"driver_branch": 580, "cuda_version": "12.9.1", "cuda_architectures": "61-real",
                        "kernel_modules": "proprietary"}),
    (["RTX 3090"], {"driver_branch": 580, "cuda_version": "13.0.2", "cuda_architectures": "86-real",
                    "kernel_modules": "open"}),
    (["H100"], {"driver_branch": 580, "cuda_version": "13.0.2", "cuda_architectures": "90-real",
                "kernel_modules": "open"}),
    # one Pascal card pulls the whole host down to what Pascal can use, with code for both
    (["P106-100", "RTX 3090"], {"driver_branch": 580, "cuda_version": "12.9.1", "cuda_architectures": "61-real;86-real",
                                "kernel_modules": "proprietary"}),
], ids=["p106-100-x8", "rtx-3090", "h100", "p106-and-3090"])
def test_choice_per_generation(names, expected):
    got, codes, _ = stack(names)
    assert (got, codes) == (expected, [])


def test_pins_that_work_are_kept():
    got, codes, _ = stack(["H100"], driver_branch=590, cuda_version="12.8.1", cuda_architectures="90a-real")
    assert codes == [] and got["driver_branch"] == 590 and got["cuda_version"] == "12.8.1"
    assert got["cuda_architectures"] == "90a-real"
    got, codes, _ = stack(["P106-100"], driver_branch="535")   # Debian 12's own branch still runs Pascal
    assert codes == [] and got["driver_branch"] == 535


@pytest.mark.parametrize("names,pins,code,words", [
    (["P106-100"], {"driver_branch": 590}, "driver-branch-unsupported", "580 is the last branch"),
    (["P106-100"], {"driver_branch": "latest"}, "driver-branch-unsupported", "must be a driver branch number"),
    (["P106-100"], {"cuda_version": "13.0.1"}, "cuda-arch-unsupported", "llamacpp_build_cuda_version: 12.9.1"),
    (["P106-100"], {"cuda_architectures": "75-real;86-real"}, "cuda-arch-unsupported", "'61-real'"),
    (["RTX 3090"], {"cuda_architectures": "61-real;86-real", "cuda_version": "13.0.2"}, "cuda-arch-unsupported",
     "CUDA 13 cannot compile"),
    (["H100"], {"cuda_version": "11.7.1"}, "cuda-arch-unsupported", "needs CUDA 11.8"),
    (["H100"], {"driver_branch": 550, "cuda_version": "13.0.2"}, "driver-branch-unsupported",
     "needs driver branch 580"),
    (["H100"], {"driver_branch": 470}, "driver-branch-unsupported", "predates"),
], ids=["590-drops-pascal", "branch-not-a-number", "cuda13-pascal", "arch-without-sm61", "cuda13-sm61-pin",
        "cuda-too-old-for-hopper", "cuda13-needs-580", "470-predates-hopper"])
def test_pins_that_cannot_work_are_errors(names, pins, code, words):
    _, codes, messages = stack(names, **pins)
    assert code in codes and words in messages


# Debian's non-free archive: nvidia-cuda-toolkit 11.8.89 in bookworm, 12.4.131 in trixie (../shared/testing.md)
@pytest.mark.parametrize("suite,version", [("bookworm", "11.8.89"), ("trixie", "12.4.131"), (None, "11.8.89")])
def test_debian_toolkit_compiles_pascal(suite, version):
    result = gpu_stack(gpus(*["P106-100"] * 8), {"cuda_source": "debian", "debian_suite": suite})
    assert (result["cuda_version"], result["cuda_source"], result["cuda_architectures"], result["errors"]) == \
        (version, "debian", "61-real", [])
    # a pin of the same release is kept as that release
    assert gpu_stack(gpus("P106-100"), {"cuda_source": "debian", "cuda_version": "11.8"})["errors"] == []


def rtx_5090():
    return describe_gpu({"index": 0, "name": "RTX 5090", "memory_mib": 32607, "bandwidth_gbs": 1792,
                         "fp32_tflops": 104.8, "int8_tops": 838, "compute_capability": "12.0"}, "g")


@pytest.mark.parametrize("suite", ["bookworm", "trixie"])
def test_debian_toolkit_cannot_compile_blackwell(suite):
    # Blackwell (CC 12.0) needs CUDA 12.8; Debian has 11.8 and 12.4: the fix is NVIDIA's source
    result = gpu_stack([rtx_5090()], {"cuda_source": "debian", "debian_suite": suite})
    [err] = result["errors"]
    assert err["code"] == "cuda-arch-unsupported"
    assert "needs CUDA 12.8 or later" in err["message"] and "set llamacpp_build_cuda_source: nvidia" in err["message"]
    assert gpu_stack([rtx_5090()], {})["errors"] == []      # NVIDIA's 13.0.2 builds it


@pytest.mark.parametrize("pins,words", [
    ({"cuda_source": "debian", "cuda_version": "12.9.1"},
     "llamacpp_build_cuda_version 12.9.1 is not in Debian bookworm's non-free archive, which has nvidia-cuda-toolkit "
     "11.8.89 only"),
    ({"cuda_source": "debian", "debian_suite": "trixie", "cuda_version": "11.8.89"}, "has nvidia-cuda-toolkit 12.4.131"),
    ({"cuda_source": "conda"}, "llamacpp_build_cuda_source must be one of nvidia, debian, got 'conda'"),
    ({"cuda_source": "debian", "debian_suite": "sid"}, "llamacpp_build_cuda_debian_suite 'sid'"),
], ids=["pin-not-in-bookworm", "pin-not-in-trixie", "unknown-source", "unknown-suite"])
def test_a_toolkit_the_source_lacks_is_refused(pins, words):
    errors = gpu_stack(gpus("P106-100"), pins)["errors"]
    assert [e["code"] for e in errors] == ["cuda-source-unsupported"] and words in errors[0]["message"]


def test_unknown_and_too_old_generations_are_refused():
    kepler = describe_gpu({"index": 0, "name": "Tesla K80", "memory_mib": 11441, "bandwidth_gbs": 240,
                           "fp32_tflops": 4.1, "int8_tops": 0, "compute_capability": "3.7"}, "g")
    result = gpu_stack([kepler], {})
    assert [e["code"] for e in result["errors"]] == ["gpu-generation-unsupported"]
    assert "Kepler" in result["errors"][0]["message"]
    assert gpu_stack([], {})["errors"][0]["code"] == "gpu-generation-unsupported"


def test_pascal_and_blackwell_cannot_share_a_host():
    blackwell = describe_gpu({"index": 1, "name": "RTX 5090", "memory_mib": 32607, "bandwidth_gbs": 1792,
                              "fp32_tflops": 104.8, "int8_tops": 838, "compute_capability": "12.0"}, "g")
    result = gpu_stack(gpus("P106-100") + [blackwell], {})
    assert "driver-branch-unsupported" in [e["code"] for e in result["errors"]]
    assert "120a-real" in result["cuda_architectures"]   # llama.cpp's own list builds Blackwell as 120a-real


@pytest.mark.parametrize("archs,cc,covers", [
    ("61-real", 61, True), ("61-real", 62, True), ("61-real", 70, False), ("60-real", 61, True),
    ("61-virtual", 86, True), ("86-real", 61, False), ("75-real;86-real", 61, False), ("native", 61, True),
])
def test_arch_covers(archs, cc, covers):
    # SASS runs on the same major generation at an equal or higher minor; PTX on any newer GPU (JIT)
    assert arch_covers(archs, cc) is covers


LISTING = """ELF file    1: libggml-cuda.1.sm_61.cubin
ELF file    2: libggml-cuda.2.sm_61.cubin
ELF file    3: libggml-cuda.3.sm_86.cubin
"""


def test_cuobjdump_listing():
    assert elf_architectures(LISTING) == ["sm_61", "sm_86"]
    assert cuda_elf_missing(LISTING, "61-real;86-real") == []
    assert cuda_elf_missing(LISTING, "61-real;90-real") == ["sm_90"]
    assert cuda_elf_missing(LISTING, "61-real;90-virtual") == []   # PTX-only entries have no ELF
    assert cuda_elf_missing("", "61-real") == ["sm_61"]


def observed(fixture):
    with open(os.path.join(FIXTURES, fixture)) as handle:
        return read(0, handle.read(), "")["gpus"]


def test_the_example_host_matches_its_inventory():
    assert gpu_differences(gpus(*["P106-100"] * 8), observed("nvidia-smi-p106-100-x8.csv")) == []


def test_differences_are_named():
    problems = gpu_differences(gpus("P106-100", "P106-100", "RTX 3090"), observed("nvidia-smi-gtx-1060.csv"))
    assert any("llamafleet_gpus[0] (index 0): declared 'P106-100', the host has 'NVIDIA GeForce GTX 1060 6GB'" in p
               for p in problems)
    assert any("the host has no GPU 1" in p for p in problems) and any("the host has no GPU 2" in p for p in problems)
    problems = gpu_differences(gpus("RTX 3090"), observed("nvidia-smi-h100.csv"))
    assert any("assumed 24576 MiB, the card has 81559 MiB" in p for p in problems)
    assert any("compute capability declared 8.6, the card reports 9.0" in p for p in problems)


def test_a_faulty_card_and_undeclared_cards_are_named():
    problems = gpu_differences(gpus("P106-100", "P106-100"), observed("nvidia-smi-gpu-requires-reset.csv"))
    assert any("(index 1): nvidia-smi reports memory.total [GPU requires reset]" in p for p in problems)
    assert any("GPUs [2] that llamafleet_gpus does not declare" in p for p in problems)


# `ldd /opt/llama.cpp/libggml-cuda.so` in the first user's CUDA image (Debian's toolkit, 2026-12-03),
# shortened: the host's driver provides libcuda.so.1 through the NVIDIA container runtime
LDD_CUDA_IMAGE = """\tlinux-vdso.so.1 (0x00007fa8c7a2b000)
\tlibggml-base.so.0 => /opt/llama.cpp/libggml-base.so.0 (0x00007fa8c2c1b000)
\tlibcudart.so.11.0 => /opt/llama.cpp/libcudart.so.11.0 (0x00007fa8c2800000)
\tlibcublas.so.11 => /opt/llama.cpp/libcublas.so.11 (0x00007fa8bca00000)
\tlibcuda.so.1 => not found
\tlibstdc++.so.6 => /lib/x86_64-linux-gnu/libstdc++.so.6 (0x00007fa8bc7e6000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007fa8c7a2d000)
\tlibcublasLt.so.11 => /opt/llama.cpp/libcublasLt.so.11 (0x00007fa898000000)
"""


def test_only_the_host_drivers_libcuda_may_be_missing_from_an_image():
    # the role's earlier Jinja chain let 'libcuda.so.1' through and refused this very image
    assert unresolved_libraries(LDD_CUDA_IMAGE) == []
    without_cublas = LDD_CUDA_IMAGE.replace("libcublas.so.11 => /opt/llama.cpp/libcublas.so.11 (0x00007fa8bca00000)",
                                            "libcublas.so.11 => not found")
    # ldd of two binaries lists a missing library twice: named once
    assert unresolved_libraries(without_cublas + without_cublas) == ["libcublas.so.11"]
