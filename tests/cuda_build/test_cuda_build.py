"""The first user's CUDA image, built here without a GPU (opt-in: scripts/test.sh --cuda-build).

The build play alone, through the llamacpp_build role, on tests/cuda_build/inventory: eight
P106-100, Debian's CUDA toolkit, the lab's pinned llama.cpp, from a clean Docker cache. Then:
the device code is sm_61 (cuobjdump --list-elf), the runtime image starts llama-server without a
GPU and passes the flag check, it carries the CUDA runtime and cuBLAS but neither the compiler nor
the driver, and a second run reuses the image. It proves the build, the architecture and a binary
that starts; it does not run a kernel on a GPU (docs/gpu-hosts.md).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT

BIN = os.path.dirname(sys.executable)
INVENTORY = os.path.join(ROOT, "tests", "cuda_build", "inventory")
BUILD_DIR = "/var/lib/llamafleet/build-cuda"
REPO = "llamafleet/llama-server"


def docker(*args: str, check: bool = True) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check).stdout


def build(report_dir: str) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    result = subprocess.run([os.path.join(BIN, "ansible-playbook"), "-i", INVENTORY, "playbooks/build.yml"],
                            cwd=ROOT, capture_output=True, text=True, timeout=4 * 3600,
                            env=dict(os.environ, ANSIBLE_FORCE_COLOR="0", LLAMAFLEET_REPORT_DIR=report_dir,
                                     ANSIBLE_CALLBACKS_ENABLED="ansible.posix.profile_tasks"))
    return result, time.monotonic() - start


def recap(output: str, host: str) -> dict[str, int]:
    line = next(line for line in output.splitlines() if line.startswith(host + " ") and "ok=" in line)
    return {k: int(v) for k, v in (item.split("=") for item in line.split(":", 1)[1].split())}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Remove every earlier sm_61 image, dangling images and the build cache, then build through the role.

    LLAMAFLEET_CUDA_BUILD_REUSE=1 keeps an image built earlier from the same inputs (the role reuses it),
    to re-check it without hours of compiling; the run then says so instead of a build time.
    """
    reuse = os.environ.get("LLAMAFLEET_CUDA_BUILD_REUSE") == "1"
    if not reuse:
        old = [t for t in docker("images", REPO, "--format", "{{.Repository}}:{{.Tag}}").split() if "-cuda-sm61-" in t]
        if old:
            docker("image", "rm", "--force", *old)
        docker("builder", "prune", "--all", "--force")
        docker("image", "prune", "--force")
    report = str(tmp_path_factory.mktemp("plan"))
    result, seconds = build(report)
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-3000:]
    with open(os.path.join(BUILD_DIR, "current-image"), encoding="utf-8") as handle:
        image = handle.read().strip()
    # what the role did, not what was asked: with REUSE=1 and no earlier image it still compiles
    if "Start the image build" not in result.stdout:
        how = "reused (LLAMAFLEET_CUDA_BUILD_REUSE=1)"
    else:
        how = f"built {'from a clean cache' if not reuse else 'with whatever cache was left'} in {seconds / 60:.1f} min"
    print(f"\nCUDA image {image} {how} (build play alone, {os.cpu_count()} cores)")
    return {"image": image, "output": result.stdout, "report": report, "seconds": seconds}


def test_the_plan_chose_debians_toolkit_for_pascal(built):
    with open(os.path.join(built["report"], "plan.json"), encoding="utf-8") as handle:
        (host,) = json.load(handle)["hosts"]
    # bookworm's non-free archive: nvidia-cuda-toolkit 11.8.89 (../shared/testing.md); P106-100 is CC 6.1
    assert host["gpu_stack"]["cuda_version"] == "11.8.89" and host["gpu_stack"]["cuda_source"] == "debian"
    assert host["gpu_stack"]["cuda_architectures"] == "61-real"
    assert built["image"].startswith(REPO + ":0c1e570-cuda-sm61-")


def test_device_code_is_sm61(built):
    tag = built["image"].split(":", 1)[1]
    with open(os.path.join(BUILD_DIR, tag + ".cuobjdump.txt"), encoding="utf-8") as handle:
        listing = handle.read()
    print("\ncuobjdump --list-elf of the build's binaries:\n" + listing)
    cubins = [line for line in listing.splitlines() if "libggml-cuda" in line and ".cubin" in line]
    assert cubins, "no device code in libggml-cuda"
    assert all(".sm_61.cubin" in line for line in cubins)   # real sm_61 code, and nothing else to JIT


def test_runtime_image_starts_without_a_gpu_and_knows_the_flags(built):
    image = built["image"]
    version = subprocess.run(["docker", "run", "--rm", "--network", "none", image, "--version"],
                             capture_output=True, text=True, timeout=120)
    assert version.returncode == 0, version.stderr
    print("\nllama-server --version:\n" + (version.stdout + version.stderr).strip())
    assert "version" in version.stdout + version.stderr
    help_text = subprocess.run(["docker", "run", "--rm", "--network", "none", image, "--help"],
                               capture_output=True, text=True, timeout=120, check=True).stdout
    # the role's flag check, on every server the plan rendered for these cards
    from ansible_collections.llamafleet.fleet.plugins.filter.llamafleet import llamafleet_unknown_flags
    with open(os.path.join(built["report"], "plan.json"), encoding="utf-8") as handle:
        servers = json.load(handle)["fleet"]["cuda-builder"]["servers"]
    assert len(servers) == 16
    assert [llamafleet_unknown_flags(s["args"], help_text) for s in servers] == [[]] * 16
    assert "--load-mode" in help_text       # the pinned tree's flag (facts.md #6)


def test_image_carries_the_cuda_runtime_but_not_the_compiler_or_the_driver(built):
    image = built["image"]
    found = subprocess.run(
        # as root: the image's own user cannot read /root or /etc/ssl/private, and find then exits 1
        ["docker", "run", "--rm", "--network", "none", "--user", "0", "--entrypoint", "sh", image, "-c",
         "ls /opt/llama.cpp; echo ---; find / -xdev \\( -name 'libcuda.so*' -o -name nvcc -o -name cuobjdump "
         "-o -name 'libnvidia-*' \\) 2>/dev/null"],
        capture_output=True, text=True, timeout=120, check=True).stdout
    shipped, _sep, forbidden = found.partition("---")
    names = shipped.split()
    for lib in ("libcudart.so.11.0", "libcublas.so.11", "libcublasLt.so.11", "libggml-cuda.so"):
        assert lib in names, f"{lib} missing from /opt/llama.cpp: {names}"
    assert forbidden.split() == []          # libcuda comes from the host's driver (NVIDIA container runtime)
    size = int(docker("image", "inspect", image, "--format", "{{.Size}}").strip())
    print(f"\nimage size: {size / 2**20:,.0f} MiB; /opt/llama.cpp: {' '.join(sorted(names))}")


def test_second_run_reuses_the_image(built):
    result, seconds = build(built["report"])
    assert result.returncode == 0, result.stdout[-4000:]
    assert "Start the image build" not in result.stdout
    assert recap(result.stdout, "cuda-builder")["changed"] == 0
    print(f"\nsecond run: {seconds:.0f} s, changed=0, the image reused")
