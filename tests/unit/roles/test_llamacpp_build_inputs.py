"""The CUDA build path, argument-checked without a GPU: toolkit, architectures, image naming."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

GIT = {"type": "git", "repo_url": "http://git-mirror.invalid/llama.cpp.git", "ref": "b6700"}
P106 = [{"index": 0, "name": "P106-100"}, {"index": 1, "name": "P106-100"}]


def inputs(tmp_path, **extra):
    out = tmp_path / "decision.json"
    variables = {"llamacpp_build_source": GIT, "out_file": str(out), **extra}
    result = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"),
                             "tests/support/build_inputs.yml", "-e", json.dumps(variables)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    return result, (json.loads(out.read_text()) if out.exists() else None)


def test_pascal_gets_real_sm61_code_and_cuda_12(tmp_path):
    result, got = inputs(tmp_path, llamacpp_build_backend="cuda", llamacpp_build_gpus=P106)
    assert result.returncode == 0, result.stdout
    assert "-DGGML_CUDA=ON" in got["cmake"] and "-DCMAKE_CUDA_ARCHITECTURES=61-real" in got["cmake"]
    assert "-DGGML_CUDA_GRAPHS=ON" in got["cmake"]
    # the Celeron has no AVX2: the CPU part is built for every x86 level and picked at run time
    assert "-DGGML_CPU_ALL_VARIANTS=ON" in got["cmake"]
    assert got["images"]["build"] == "nvidia/cuda:12.9.1-devel-ubuntu22.04"
    repo, tag = got["image"].split(":")
    assert repo == "llamafleet/llama-server" and tag.startswith("b6700-cuda-sm61-") and len(tag.split("-")[-1]) == 12


def test_mixed_generations_get_code_for_each(tmp_path):
    gpus = [{"index": 0, "name": "P106-100"}, {"index": 1, "name": "RTX 3060"}]
    _, got = inputs(tmp_path, llamacpp_build_backend="cuda", llamacpp_build_gpus=gpus)
    assert "-DCMAKE_CUDA_ARCHITECTURES=61-real;86-real" in got["cmake"]


def test_hopper_gets_cuda_13_of_the_580_branch(tmp_path):
    # H100 is compute capability 9.0; R580 ships CUDA 13.0 (latest update 13.0.2)
    _, got = inputs(tmp_path, llamacpp_build_backend="cuda", llamacpp_build_gpus=[{"index": 0, "name": "H100"}])
    assert "-DCMAKE_CUDA_ARCHITECTURES=90-real" in got["cmake"]
    assert got["images"] == {"build": "nvidia/cuda:13.0.2-devel-ubuntu22.04", "runtime": "nvidia/cuda:13.0.2-runtime-ubuntu22.04"}


def test_cuda_13_is_refused_for_pascal(tmp_path):
    result, got = inputs(tmp_path, llamacpp_build_backend="cuda", llamacpp_build_gpus=P106,
                         llamacpp_build_cuda_version="13.0.1")
    assert result.returncode != 0 and got is None
    assert "CUDA 13.0.1 cannot build for P106-100 (compute capability 6.1)" in " ".join(result.stdout.split())


def test_debian_toolkit_builds_pascal_in_the_local_debian_image(tmp_path):
    result, got = inputs(tmp_path, llamacpp_build_backend="cuda", llamacpp_build_gpus=P106,
                         llamacpp_build_cuda_source="debian")
    assert result.returncode == 0, result.stdout
    # the same CUDA options as NVIDIA's source: real sm_61 code, CUDA graphs compiled in
    assert "-DCMAKE_CUDA_ARCHITECTURES=61-real" in got["cmake"] and "-DGGML_CUDA_GRAPHS=ON" in got["cmake"]
    assert got["images"] == {"build": "llamafleet/debian:bookworm", "runtime": "llamafleet/debian:bookworm"}
    assert got["toolkit"]["APT_COMPONENTS"] == "contrib non-free"
    assert got["toolkit"]["BUILD_PACKAGES"].split() == ["build-essential", "cmake", "nvidia-cuda-toolkit",
                                                       "nvidia-cuda-toolkit-gcc"]
    # the runtime image gets the CUDA runtime and cuBLAS from the build stage, not the driver's libcuda
    assert got["toolkit"]["RUNTIME_LIBS"] == "libcudart|libcublas"
    _, nvidia = inputs(tmp_path, llamacpp_build_backend="cuda", llamacpp_build_gpus=P106)
    assert nvidia["toolkit"] == {} and nvidia["image"] != got["image"]


@pytest.mark.parametrize("extra,words", [
    ({"llamacpp_build_gpus": [{"index": 0, "name": "RTX 5090", "memory_mib": 32607, "bandwidth_gbs": 1792,
                               "fp32_tflops": 104.8, "int8_tops": 838, "compute_capability": "12.0"}]},
     "it needs CUDA 12.8 or later. Debian bookworm's toolkit is 11.8.89: set llamacpp_build_cuda_source: nvidia"),
    ({"llamacpp_build_cuda_version": "12.9.1"}, "is not in Debian bookworm's non-free archive"),
], ids=["blackwell", "pin-not-in-debian"])
def test_debian_toolkit_refuses_what_it_cannot_build(tmp_path, extra, words):
    result, got = inputs(tmp_path, **{"llamacpp_build_backend": "cuda", "llamacpp_build_gpus": P106,
                                      "llamacpp_build_cuda_source": "debian", **extra})
    assert result.returncode != 0 and got is None
    assert words in " ".join(result.stdout.split())


def test_cuda_without_gpus_or_architectures_is_refused(tmp_path):
    result, got = inputs(tmp_path, llamacpp_build_backend="cuda")
    assert result.returncode != 0 and got is None


@pytest.mark.parametrize("bad", [{"type": "svn", "ref": "x"}, {"type": "git", "ref": "b1"}, {"type": "archive", "ref": "r"}])
def test_bad_source_is_refused(tmp_path, bad):
    result, got = inputs(tmp_path, llamacpp_build_source=bad)
    assert result.returncode != 0 and got is None
    assert "llamacpp_build_source" in result.stdout


def test_cpu_image_has_no_cuda_and_its_tag_follows_its_inputs(tmp_path):
    _, cpu = inputs(tmp_path, llamacpp_build_cpu_variants="avx2")
    assert "GGML_CUDA" not in cpu["cmake"] and cpu["image"].split(":")[1].startswith("b6700-cpu-")
    _, portable = inputs(tmp_path, llamacpp_build_cpu_variants="portable")
    assert portable["image"] != cpu["image"]  # another input, another image; the old one stays


def test_a_simulated_host_gets_the_simulators_image_with_its_refs_flags(tmp_path):
    result, got = inputs(tmp_path, llamacpp_build_backend="sim", llamacpp_build_source={"ref": "0c1e570"})
    assert result.returncode == 0, result.stdout
    repo, tag = got["image"].split(":")
    assert repo == "llamafleet/llama-server" and tag.startswith("0c1e570-sim-") and len(tag.split("-")[-1]) == 12
    assert got["cmake"] is None                       # nothing of llama.cpp is built
    assert "--slot-prompt-similarity" in got["sim_flags"] and "--cache-ram" in got["sim_flags"]


def test_a_simulated_host_with_an_unrecorded_ref_is_refused(tmp_path):
    result, got = inputs(tmp_path, llamacpp_build_backend="sim", llamacpp_build_source={"ref": "b6700"})
    assert result.returncode != 0 and got is None
    assert "llamacpp_build_source.ref b6700: a simulated llama-server carries the flags of a recorded ref" in " ".join(
        result.stdout.split())
