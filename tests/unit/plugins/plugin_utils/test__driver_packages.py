"""Driver packages per distribution, source and GPU generation; what a branch change removes first.

Package names are written from the archives' own package lists (Ubuntu: nvidia-graphics-drivers-580
builds nvidia-headless-580, nvidia-utils-580, nvidia-compute-utils-580, nvidia-dkms-580; Debian 12:
nvidia-graphics-drivers 535 in non-free builds nvidia-kernel-dkms, nvidia-smi, libcuda1,
nvidia-persistenced) and NVIDIA's driver installation guide (Debian, compute only:
nvidia-driver-cuda with nvidia-kernel-dkms or nvidia-kernel-open-dkms).
"""
from __future__ import annotations

import pytest

from ansible_collections.llamafleet.fleet.plugins.plugin_utils._driver_packages import driver_packages, stale_driver_packages

KERNEL = "6.8.0-45-generic"
REPO = "http://nvidia-mirror.invalid/compute/cuda/repos/debian12/x86_64/"


@pytest.mark.parametrize("dist,version,source,branch,modules,packages,pin", [
    ("Ubuntu", "24.04", "distribution", 580, "proprietary",
     ["nvidia-headless-580", "nvidia-utils-580", "nvidia-compute-utils-580"], None),
    ("Ubuntu", "22.04", "distribution", 580, "open",
     ["nvidia-headless-580-open", "nvidia-utils-580", "nvidia-compute-utils-580"], None),
    ("Ubuntu", "24.04", "nvidia", 580, "proprietary",
     ["nvidia-headless-580", "nvidia-utils-580", "nvidia-compute-utils-580"], None),
    # Ansible reports Debian's point release (12.15)
    ("Debian", "12.15", "nvidia", 580, "proprietary", ["nvidia-driver-cuda", "nvidia-kernel-dkms", "nvidia-persistenced"],
     "580.*"),
    ("Debian", "12", "nvidia", 580, "open", ["nvidia-driver-cuda", "nvidia-kernel-open-dkms", "nvidia-persistenced"],
     "580.*"),
    ("Debian", "12", "distribution", 535, "proprietary", ["nvidia-kernel-dkms", "nvidia-smi", "libcuda1",
                                                          "nvidia-persistenced"], None),
], ids=["ubuntu2404-pascal", "ubuntu2204-hopper", "ubuntu2404-nvidia-repo", "debian12-nvidia-pascal",
        "debian12-nvidia-hopper", "debian12-debian-535"])
def test_packages(dist, version, source, branch, modules, packages, pin):
    got = driver_packages(dist, version, source, branch, modules, KERNEL, REPO)
    assert got["errors"] == []
    assert got["packages"] == packages + [f"linux-headers-{KERNEL}", "dkms"] and got["pin"] == pin


@pytest.mark.parametrize("dist,version,source,branch,modules,repo,words", [
    ("Debian", "11", "distribution", 580, "proprietary", "", "Debian 11 is not supported"),
    ("Rocky", "9", "nvidia", 580, "proprietary", REPO, "Rocky 9 is not supported"),
    ("Ubuntu", "20.04", "distribution", 580, "proprietary", "", "Ubuntu 20.04 is not supported"),
    ("Debian", "12", "distribution", 580, "proprietary", "", "packages driver branch 535 only"),
    ("Debian", "12", "distribution", 535, "open", "", "carry the proprietary ones only"),
    ("Debian", "12", "nvidia", 580, "proprietary", "", "nvidia_driver_nvidia_repo_url is empty"),
    ("Debian", "12", "ppa", 580, "proprietary", "", "nvidia_driver_source must be one of"),
])
def test_refusals(dist, version, source, branch, modules, repo, words):
    got = driver_packages(dist, version, source, branch, modules, KERNEL, repo)
    assert any(words in e for e in got["errors"]), got["errors"]


UBUNTU_590 = """nvidia-headless-590 590.44.01-0ubuntu1
nvidia-dkms-590 590.44.01-0ubuntu1
libnvidia-compute-590 590.44.01-0ubuntu1
nvidia-firmware-590-590.44.01 590.44.01-0ubuntu1
linux-modules-nvidia-590-6.8.0-45-generic 6.8.0-45.45
nvidia-utils-580 580.95.05-0ubuntu1
nvidia-container-toolkit 1.17.8-1
libnvidia-container1 1.17.8-1
nvidia-prime 0.8.17.2
"""
DEBIAN_535 = """nvidia-kernel-dkms 535.247.01-1~deb12u1
nvidia-smi 535.247.01-1~deb12u1
libcuda1 535.247.01-1~deb12u1
nvidia-persistenced 535.171.04-1
nvidia-cuda-toolkit 12.0.140~12.0.1-4
nvidia-container-toolkit 1.17.8-1
"""


def test_a_branch_change_removes_the_old_branch_first():
    assert stale_driver_packages(UBUNTU_590, 580) == [
        "libnvidia-compute-590", "linux-modules-nvidia-590-6.8.0-45-generic", "nvidia-dkms-590",
        "nvidia-firmware-590-590.44.01", "nvidia-headless-590"]
    assert stale_driver_packages(DEBIAN_535, 580) == ["libcuda1", "nvidia-kernel-dkms", "nvidia-persistenced", "nvidia-smi"]
    assert stale_driver_packages(DEBIAN_535, 535) == []
