# Copyright: llamafleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller-side GPU rules: a CUDA host's software stack, and the GPUs it has against the declared ones.

The stack (driver branch, CUDA toolkit, CMAKE_CUDA_ARCHITECTURES) is decided once, here.

The plan shows it (plan.json hosts[].gpu_stack), the nvidia_driver role installs its driver branch
and the llamacpp_build role builds with its toolkit and architectures; none of them re-derives it.

Sources (../shared/facts.md #2 and NVIDIA's documents it cites):
- R580 is the last driver branch for Maxwell, Pascal and Volta ("release 580 series will be the
  last to support ... Maxwell, Pascal, and Volta"); 590 and later drop them. R580 is a long-term
  support branch (to 2028) and the minimum driver for CUDA 13, so it is also the branch chosen for
  newer generations; pin nvidia_driver_branch to run a later production branch on them.
- CUDA 13.0 removed offline compilation for sm_5x/6x/7.0(7.2); 12.9 is the last toolkit for them.
- CUDA minor-version compatibility: a 12.x toolkit needs driver >= 525, a 13.x toolkit >= 580
  (CUDA release notes, "CUDA Toolkit and Minimum Required Driver Version").
- Blackwell (CC 10.x/12.x) needs CUDA 12.8 (12.1: 12.9), driver branch 570 or later, and NVIDIA's
  open kernel modules; Maxwell to Volta work only with the proprietary modules (the open modules
  start at Turing).
- SASS (-real) runs on the same major generation at an equal or higher minor; PTX (-virtual) is
  JIT-compiled for any newer GPU at first start.
- Where the toolkit comes from (llamacpp_build_cuda_source): `nvidia`, NVIDIA's CUDA images, any
  version; or `debian`, Debian's non-free `nvidia-cuda-toolkit` inside the local Debian image, one
  version per suite (bookworm 11.8.89, trixie 12.4.131; ../shared/testing.md). Both compile Pascal
  to Hopper; Blackwell needs 12.8, which only NVIDIA's source has.
"""
from __future__ import annotations

import re

from ansible_collections.llamafleet.fleet.plugins.module_utils.llamafleet_gpus import cc_int, lookup

DRIVER_BRANCH = 580           # chosen for every generation llamafleet supports (see above)
LAST_BRANCH_PRE_TURING = 580  # the last branch for CC < 7.5 (Maxwell, Pascal, Volta)
CUDA_PRE_TURING = "12.9.1"    # the last toolkit that compiles CC < 7.5
CUDA_TURING_ON = "13.0.2"     # CUDA of the 580 branch, for CC >= 7.5
OPEN_MODULES_FROM = 75        # NVIDIA's open kernel modules support Turing and newer
OPEN_MODULES_ONLY_FROM = 100  # Blackwell runs only with the open kernel modules
CUDA_SOURCES = ("nvidia", "debian")
# Debian suite -> the nvidia-cuda-toolkit version its non-free archive carries
DEBIAN_CUDA = {"bookworm": "11.8.89", "trixie": "12.4.131"}

# compute capability -> (generation, first CUDA that compiles it, minimum driver branch)
GENERATIONS: dict[int, tuple[str, tuple[int, int], int]] = {
    50: ("Maxwell", (6, 0), 525), 52: ("Maxwell", (6, 5), 525), 53: ("Maxwell", (6, 5), 525),
    60: ("Pascal", (8, 0), 525), 61: ("Pascal", (8, 0), 525), 62: ("Pascal", (8, 0), 525),
    70: ("Volta", (9, 0), 525), 72: ("Volta", (10, 0), 525),
    75: ("Turing", (10, 0), 525),
    80: ("Ampere", (11, 0), 525), 86: ("Ampere", (11, 1), 525), 87: ("Ampere", (11, 4), 525),
    89: ("Ada Lovelace", (11, 8), 525),
    90: ("Hopper", (11, 8), 525),
    100: ("Blackwell", (12, 8), 570), 103: ("Blackwell", (12, 9), 570),
    120: ("Blackwell", (12, 8), 570), 121: ("Blackwell", (12, 9), 570),
}
# llama.cpp builds these with the arch-specific suffix (FP4 tensor-core instructions need it;
# ggml/src/ggml-cuda/CMakeLists.txt lists 120a-real and 121a-real).
ARCH_SPECIFIC = {120, 121}


def _version(text) -> tuple[int, ...] | None:
    text = str(text or "").strip()
    return tuple(int(p) for p in text.split(".")) if re.fullmatch(r"[0-9]+(\.[0-9]+){1,2}", text) else None


def _same_release(pin: str, version: str) -> bool:
    """A pin of 11.8 or 11.8.89 names the toolkit 11.8.89."""
    return version == pin or version.startswith(pin + ".")


def min_driver_for_cuda(cuda: tuple[int, ...]) -> int:
    """The lowest driver branch that runs a toolkit of this version (minor-version compatibility)."""
    return 580 if cuda[0] >= 13 else 525


def arch_covers(architectures: str, cc: int) -> bool:
    """Whether a build for these CMAKE_CUDA_ARCHITECTURES runs on a GPU of compute capability cc."""
    for item in str(architectures).replace(",", ";").split(";"):
        item = item.strip()
        if item in ("native", "all", "all-major"):
            return True
        number, _sep, kind = item.partition("-")
        digits = "".join(ch for ch in number if ch.isdigit())
        if not digits:
            continue
        arch = int(digits)
        if kind in ("", "real") and arch // 10 == cc // 10 and arch <= cc:
            return True
        if kind in ("", "virtual") and arch <= cc:
            return True
    return False


def architectures_for(ccs) -> str:
    """CMAKE_CUDA_ARCHITECTURES: real code for each compute capability, nothing else to compile."""
    return ";".join(f"{cc}a-real" if cc in ARCH_SPECIFIC else f"{cc}-real" for cc in sorted(set(ccs)))


def gpu_stack(gpus: list[dict], pins: dict | None = None) -> dict:
    """driver_branch, cuda_version, cuda_architectures and kernel_modules for these GPUs, and errors.

    gpus: dicts with name and compute_capability (the inventory's llamafleet_gpus completed from the
    catalogue, or nvidia_gpu_info's gpus). pins: driver_branch, cuda_version, cuda_architectures,
    each empty/None for "choose"; cuda_source (nvidia, the default, or debian) and debian_suite
    (bookworm, the default), where the toolkit comes from. errors: [{code, message}]; codes are
    documented in docs/findings.md.
    """
    pins = pins or {}
    errors: list[dict] = []

    def error(code: str, message: str) -> None:
        errors.append({"code": code, "message": message})

    if not gpus:
        error("gpu-generation-unsupported", "no GPUs are declared: list them in llamafleet_gpus (index, name)")
        return {"driver_branch": None, "cuda_version": None, "cuda_source": None, "cuda_architectures": None,
                "kernel_modules": None, "generations": [], "errors": errors}

    known: dict[int, str] = {}
    for gpu in gpus:
        cc = cc_int(gpu["compute_capability"])
        if cc not in GENERATIONS:
            error("gpu-generation-unsupported",
                  f"{gpu['name']}: compute capability {gpu['compute_capability']} is not a generation llamafleet "
                  f"knows ({', '.join(sorted({generation[0] for generation in GENERATIONS.values()}, key=str))}, CC 5.0 to 12.1); "
                  f"below 5.0 (Kepler) needs driver 470 and CUDA 11, which llama.cpp's CUDA backend no longer builds for")
        else:
            known[cc] = gpu["name"]
    ccs = sorted(known)
    lowest = ccs[0] if ccs else None
    highest = ccs[-1] if ccs else None

    # -- kernel modules -------------------------------------------------------------------------------
    modules = None
    if ccs:
        if lowest < OPEN_MODULES_FROM and highest >= OPEN_MODULES_ONLY_FROM:
            error("driver-branch-unsupported",
                  f"{known[lowest]} (CC {lowest / 10:.1f}) needs NVIDIA's proprietary kernel modules and {known[highest]} "
                  f"(CC {highest / 10:.1f}) the open ones; one host cannot load both: put them in different hosts")
        modules = "proprietary" if lowest < OPEN_MODULES_FROM else "open"

    # -- driver branch --------------------------------------------------------------------------------
    pinned_branch = pins.get("driver_branch")
    branch = DRIVER_BRANCH
    branch_known = True
    if pinned_branch not in (None, ""):
        if isinstance(pinned_branch, bool) or not re.fullmatch(r"[0-9]{3}", str(pinned_branch)):
            branch_known = False
            error("driver-branch-unsupported",
                  f"nvidia_driver_branch must be a driver branch number such as 580, got {pinned_branch!r}")
        else:
            branch = int(pinned_branch)
            for cc in ccs:
                name, _first_cuda, min_branch = GENERATIONS[cc]
                if cc < OPEN_MODULES_FROM and branch > LAST_BRANCH_PRE_TURING:
                    error("driver-branch-unsupported",
                          f"nvidia_driver_branch {branch} drops {known[cc]} ({name}, CC {cc / 10:.1f}): "
                          f"{LAST_BRANCH_PRE_TURING} is the last branch that supports it. Set nvidia_driver_branch: "
                          f"{LAST_BRANCH_PRE_TURING} (or leave it unset)")
                elif branch < min_branch:
                    error("driver-branch-unsupported",
                          f"nvidia_driver_branch {branch} predates {known[cc]} ({name}, CC {cc / 10:.1f}); it needs "
                          f"{min_branch} or later. Set nvidia_driver_branch: {DRIVER_BRANCH} (or leave it unset)")

    # -- CUDA toolkit ---------------------------------------------------------------------------------
    source = str(pins.get("cuda_source") or "nvidia")
    suite = str(pins.get("debian_suite") or "bookworm")
    pinned_cuda = pins.get("cuda_version")
    cuda_version = (CUDA_PRE_TURING if lowest is not None and lowest < OPEN_MODULES_FROM else CUDA_TURING_ON)
    if source not in CUDA_SOURCES:
        error("cuda-source-unsupported",
              f"llamacpp_build_cuda_source must be one of {', '.join(CUDA_SOURCES)}, got {source!r}")
    elif source == "debian":
        if suite not in DEBIAN_CUDA:
            error("cuda-source-unsupported",
                  f"llamacpp_build_cuda_debian_suite {suite!r} is not a Debian suite llamafleet knows the CUDA "
                  f"toolkit of ({', '.join(f'{k}: {v}' for k, v in DEBIAN_CUDA.items())})")
        else:
            cuda_version = DEBIAN_CUDA[suite]
            if pinned_cuda not in (None, "") and not _same_release(str(pinned_cuda), cuda_version):
                error("cuda-source-unsupported",
                      f"llamacpp_build_cuda_version {pinned_cuda} is not in Debian {suite}'s non-free archive, "
                      f"which has nvidia-cuda-toolkit {cuda_version} only: leave llamacpp_build_cuda_version unset, "
                      f"or set llamacpp_build_cuda_source: nvidia for another version")
            pinned_cuda = None
    if pinned_cuda not in (None, ""):
        cuda_version = str(pinned_cuda)
    cuda = _version(cuda_version)
    if cuda is None:
        error("cuda-arch-unsupported",
              f"llamacpp_build_cuda_version must look like 12.9.1, got {cuda_version!r}")
    else:
        for cc in ccs:
            name, first_cuda, _min_branch = GENERATIONS[cc]
            if cuda[0] >= 13 and cc < OPEN_MODULES_FROM:
                error("cuda-arch-unsupported",
                      f"CUDA {cuda_version} cannot build for {known[cc]} (compute capability {cc / 10:.1f}): CUDA 13 "
                      f"dropped sm_5x/6x/7.0. Set llamacpp_build_cuda_version: {CUDA_PRE_TURING} (the last toolkit "
                      f"for it), or leave it unset")
            elif cuda[:2] < first_cuda:
                fix = (f"Debian {suite}'s toolkit is {cuda_version}: set llamacpp_build_cuda_source: nvidia"
                       if source == "debian" else "Leave llamacpp_build_cuda_version unset")
                error("cuda-arch-unsupported",
                      f"CUDA {cuda_version} cannot build for {known[cc]} ({name}, compute capability {cc / 10:.1f}); "
                      f"it needs CUDA {first_cuda[0]}.{first_cuda[1]} or later. {fix}")
        if branch_known and branch < min_driver_for_cuda(cuda):
            error("driver-branch-unsupported",
                  f"CUDA {cuda_version} needs driver branch {min_driver_for_cuda(cuda)} or later, and "
                  f"nvidia_driver_branch is {branch}: pin an older llamacpp_build_cuda_version or a newer branch")

    # -- architectures --------------------------------------------------------------------------------
    pinned_archs = str(pins.get("cuda_architectures") or "").strip()
    archs = pinned_archs or architectures_for(ccs)
    if pinned_archs:
        for cc in ccs:
            if not arch_covers(pinned_archs, cc):
                error("cuda-arch-unsupported",
                      f"CMAKE_CUDA_ARCHITECTURES={pinned_archs} has no code for {known[cc]} (compute capability "
                      f"{cc / 10:.1f}); its kernels would fail to load. Set llamacpp_build_cuda_architectures: "
                      f"'{architectures_for([cc])}' (or leave it unset)")
        if cuda is not None and cuda[0] >= 13:
            old = [a for a in re.findall(r"[0-9]+", pinned_archs) if int(a) < OPEN_MODULES_FROM]
            if old:
                error("cuda-arch-unsupported",
                      f"CMAKE_CUDA_ARCHITECTURES={pinned_archs} asks CUDA {cuda_version} for sm_{', sm_'.join(old)}, "
                      f"which CUDA 13 cannot compile")

    return {"driver_branch": branch, "cuda_version": cuda_version, "cuda_source": source,
            "cuda_architectures": archs, "kernel_modules": modules, "generations": sorted({GENERATIONS[cc][0] for cc in ccs}), "errors": errors}


# -- the GPUs a host has, against the declared ones ---------------------------------------------------
def _same_model(declared: str, observed: str) -> bool:
    known = lookup(declared)
    if known is not None and known is lookup(observed):
        return True

    def norm(name: str) -> str:
        return name.lower().removeprefix("nvidia ").removeprefix("geforce ").strip()
    return norm(declared) == norm(observed)


def gpu_differences(declared: list[dict], observed: list[dict], tolerance: float = 0.03) -> list[str]:
    """What differs between llamafleet_gpus (completed from the catalogue) and the GPUs nvidia-smi lists.

    observed: nvidia_gpu_info's gpus (index, name, memory_mib, compute_capability, errors).
    """
    problems = []
    seen = {g["index"]: g for g in observed if g.get("index") is not None}
    for i, gpu in enumerate(declared):
        where = f"llamafleet_gpus[{i}] (index {gpu['index']})"
        real = seen.get(gpu["index"])
        if real is None:
            problems.append(f"{where}: the host has no GPU {gpu['index']}; nvidia-smi lists {sorted(seen)}")
            continue
        if real.get("errors"):
            problems.append(f"{where}: nvidia-smi reports " + ", ".join(f"{k} {v}" for k, v in real["errors"].items())
                            + " (reset or reseat the card: nvidia-smi -r -i " + str(gpu["index"]) + ")")
        if real.get("name") and not _same_model(gpu["name"], real["name"]):
            problems.append(f"{where}: declared {gpu['name']!r}, the host has {real['name']!r}")
        if real.get("memory_mib") and abs(real["memory_mib"] - gpu["memory_mib"]) > tolerance * gpu["memory_mib"]:
            problems.append(f"{where}: the plan assumed {gpu['memory_mib']} MiB, the card has {real['memory_mib']} MiB; "
                            f"set memory_mib: {real['memory_mib']}")
        if real.get("compute_capability") and str(real["compute_capability"]) != str(gpu["compute_capability"]):
            problems.append(f"{where}: compute capability declared {gpu['compute_capability']}, "
                            f"the card reports {real['compute_capability']}")
    undeclared = sorted(set(seen) - {g["index"] for g in declared})
    if undeclared:
        problems.append(f"the host has GPUs {undeclared} that llamafleet_gpus does not declare (they stay unused)")
    return problems


# -- the architectures a build really contains --------------------------------------------------------
def elf_architectures(listing: str) -> list[str]:
    """sm_XX names in `cuobjdump --list-elf` output ('ELF file    1: libggml-cuda.1.sm_61.cubin')."""
    return sorted(set(re.findall(r"\.(sm_[0-9]+[a-z]?)\.cubin", listing)))


# Libraries an image may leave unresolved: the NVIDIA container runtime mounts the host driver's.
HOST_DRIVER_LIBRARIES = ("libcuda.so",)


def unresolved_libraries(ldd_output: str) -> list[str]:
    """Libraries `ldd` reports "not found", less those the host's driver provides (libcuda)."""
    missing = []
    for line in ldd_output.splitlines():
        name, _sep, where = line.strip().partition(" => ")
        if where.strip() == "not found" and not name.startswith(HOST_DRIVER_LIBRARIES) and name not in missing:
            missing.append(name)
    return missing


def cuda_elf_missing(listing: str, architectures: str) -> list[str]:
    """The real architectures of CMAKE_CUDA_ARCHITECTURES that the binary has no device code for."""
    found = set(elf_architectures(listing))
    wanted = []
    for item in str(architectures).replace(",", ";").split(";"):
        number, _sep, kind = item.strip().partition("-")
        if number and kind in ("", "real"):
            wanted.append(f"sm_{number}")
    return [w for w in wanted if w not in found]
