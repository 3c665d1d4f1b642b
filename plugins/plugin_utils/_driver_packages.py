# Copyright: llamafleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which packages install an NVIDIA driver branch on a supported distribution, and which must go first.

Headless compute hosts: the kernel module (DKMS, built against the running kernel's headers),
nvidia-smi, the CUDA user-space library and the persistence daemon; no X server.

- Ubuntu 22.04/24.04 (its restricted archive, or NVIDIA's repository, which uses the same names up
  to branch 580): the branch is part of every name (nvidia-headless-580, nvidia-utils-580,
  nvidia-compute-utils-580 with nvidia-persistenced); `-open` picks the open kernel modules.
- Debian 12 from Debian: one branch only, 535 (bookworm's nvidia-graphics-drivers, components
  contrib and non-free): nvidia-kernel-dkms, nvidia-smi, libcuda1, nvidia-persistenced.
- Debian 12 from NVIDIA's repository: unversioned names (nvidia-driver-cuda, nvidia-kernel-dkms or
  nvidia-kernel-open-dkms, nvidia-persistenced) held on the branch by an apt pin, as NVIDIA's driver
  installation guide describes for Debian.
A branch change removes the old branch's packages first: installing over them is what ends in
apt's "held broken packages".
"""
from __future__ import annotations

import re

SUPPORTED = {("Debian", "12"): "debian12", ("Ubuntu", "22.04"): "ubuntu2204", ("Ubuntu", "24.04"): "ubuntu2404"}
DEBIAN_ARCHIVE_BRANCH = {"12": 535}
SOURCES = ("distribution", "nvidia")

# Packages of the driver (not the container toolkit, which has its own role and versions).
_DRIVER_NAME = re.compile(r"nvidia|libcuda|libnvcuvid|libnvoptix|libxnvctrl")
_NOT_DRIVER = re.compile(r"^(lib)?nvidia-container|^nvidia-docker")
_BRANCH_IN_NAME = re.compile(r"(?:nvidia[a-z0-9-]*?|cuda-drivers)-([0-9]{3})(?=-|$)")
_BRANCH_IN_VERSION = re.compile(r"^(?:[0-9]+:)?([0-9]{3})\.")


def _release(distribution: str, version: str) -> str:
    """Debian's point releases (12.15) are Debian 12; Ubuntu's releases are year.month."""
    return str(version).split(".", maxsplit=1)[0] if distribution == "Debian" else str(version)


def supported(distribution: str, version: str) -> str | None:
    """NVIDIA's repository directory for this distribution (debian12, ubuntu2204...), None if unsupported.

    distribution and version as Ansible's facts give them (distribution, distribution_version).
    """
    return SUPPORTED.get((str(distribution), _release(distribution, version)))


def driver_packages(distribution: str, version: str, source: str, branch: int, kernel_modules: str,
                    kernel_release: str, repo_url: str = "") -> dict:
    """{packages, repo_dist, pin, errors}: what to install for this branch, or why it cannot be done.

    pin: the apt version pattern that holds unversioned package names on the branch, or None.
    """
    errors: list[str] = []
    dist = supported(distribution, version)
    version = _release(distribution, version)
    if dist is None:
        names = ", ".join(f"{d} {v}" for d, v in SUPPORTED)
        return {"packages": [], "repo_dist": None, "pin": None,
                "errors": [f"{distribution} {version} is not supported by nvidia_driver (supported: {names}); "
                           f"nothing was changed. Install the driver yourself and set nvidia_driver_manage: false"]}
    if source not in SOURCES:
        errors.append(f"nvidia_driver_source must be one of {', '.join(SOURCES)}, got {source!r}")
    if kernel_modules not in ("proprietary", "open"):
        errors.append(f"kernel modules must be proprietary or open, got {kernel_modules!r}")
    if source == "nvidia" and not repo_url:
        errors.append("nvidia_driver_source is nvidia but nvidia_driver_nvidia_repo_url is empty: set it to NVIDIA's "
                      f"CUDA repository for {dist} (the directory with its Packages index) or your mirror of it")
    headers = [f"linux-headers-{kernel_release}", "dkms"]
    packages: list[str] = []
    pin = None
    if distribution == "Ubuntu":
        suffix = "-open" if kernel_modules == "open" else ""
        packages = [f"nvidia-headless-{branch}{suffix}", f"nvidia-utils-{branch}", f"nvidia-compute-utils-{branch}"]
    elif source == "distribution":
        debian_branch = DEBIAN_ARCHIVE_BRANCH[str(version)]
        if int(branch) != debian_branch:
            errors.append(f"Debian {version} packages driver branch {debian_branch} only, and branch {branch} is wanted: "
                          f"set nvidia_driver_source: nvidia with nvidia_driver_nvidia_repo_url, or pin "
                          f"nvidia_driver_branch: {debian_branch} if it supports your GPUs")
        if kernel_modules == "open":
            errors.append(f"the open kernel modules were chosen for these GPUs (NVIDIA's choice from Turing on; Blackwell "
                          f"needs them) and Debian {version}'s own driver packages carry the proprietary ones only: "
                          f"set nvidia_driver_source: nvidia")
        packages = ["nvidia-kernel-dkms", "nvidia-smi", "libcuda1", "nvidia-persistenced"]
    else:
        module = "nvidia-kernel-open-dkms" if kernel_modules == "open" else "nvidia-kernel-dkms"
        packages = ["nvidia-driver-cuda", module, "nvidia-persistenced"]
        pin = f"{branch}.*"
    return {"packages": packages + headers, "repo_dist": dist, "pin": pin, "errors": errors}


def installed_branch(name: str, version: str) -> int | None:
    """The driver branch an installed driver package belongs to, None for other packages."""
    if not _DRIVER_NAME.search(name) or _NOT_DRIVER.search(name):
        return None
    match = _BRANCH_IN_NAME.search(name) or _BRANCH_IN_VERSION.match(version or "")
    return int(match.group(1)) if match else None


def stale_driver_packages(installed: str, branch: int) -> list[str]:
    """Installed driver packages of another branch, from `dpkg-query -W -f '${Package} ${Version}\\n'`."""
    stale = []
    for line in installed.splitlines():
        name, _sep, version = line.strip().partition(" ")
        found = installed_branch(name, version.strip())
        if found is not None and found != int(branch):
            stale.append(name)
    return sorted(set(stale))
