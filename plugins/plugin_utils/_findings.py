# Copyright: llamafleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The catalogue of the plan's finding codes and the levels each may have.

Every finding the plan emits is built by `finding()`, which refuses a code that is not here, and
docs/findings.md is checked against this table (tests/unit/plugins/plugin_utils/test__findings.py),
so the documentation lists exactly the codes the code can emit.
"""
from __future__ import annotations

ERROR, WARNING, INFO = "error", "warning", "info"

CODES: dict[str, frozenset[str]] = {
    # memory and speed of the servers on their devices and hosts
    "does-not-fit": frozenset({ERROR}),
    "partial-offload": frozenset({WARNING}),
    "cuda-graphs-inactive": frozenset({INFO}),
    "ubatch-exceeds-batch": frozenset({WARNING}),
    "quantized-v-needs-flash-attn": frozenset({ERROR}),
    "kv-cache-type-no-effect": frozenset({INFO}),
    "embed-input-exceeds-ubatch": frozenset({ERROR, WARNING}),
    "prompt-cache-exceeds-container": frozenset({ERROR}),
    "container-memory-too-small": frozenset({ERROR}),
    "cuda-overhead-estimated": frozenset({INFO, WARNING}),
    "cuda-overhead-measured": frozenset({INFO}),
    "cuda-overhead-calibrated": frozenset({INFO}),
    "cuda-overhead-unknown": frozenset({ERROR}),
    "mlock-without-memlock-limit": frozenset({WARNING}),
    "host-memory-overcommitted": frozenset({ERROR, WARNING}),
    "capacity-exceeded": frozenset({ERROR, WARNING}),
    "cache-reuse-without-shift": frozenset({WARNING}),
    "cont-batching-single-slot": frozenset({INFO}),
    "host-cpu": frozenset({INFO, WARNING}),
    # the GPU host's software stack (the gpu_stack rule)
    "cuda-arch-unsupported": frozenset({ERROR}),
    "cuda-source-unsupported": frozenset({ERROR}),
    "driver-branch-unsupported": frozenset({ERROR}),
    "gpu-generation-unsupported": frozenset({ERROR}),
    # calibration files
    "calibration-stale": frozenset({ERROR}),
    "calibration-gpu-absent": frozenset({ERROR}),
    "calibration-invalid": frozenset({ERROR}),
    # the gateway's pools
    "conversation-pattern": frozenset({ERROR}),
    "prompt-cache-small": frozenset({WARNING}),
    # inputs that later plays read
    "api-key-invalid": frozenset({ERROR}),
    "build-source-invalid": frozenset({ERROR}),
    "flag-unknown": frozenset({ERROR}),
}


def finding(level: str, code: str, host: str, server: str | None, message: str, **data) -> dict:
    """One finding of the plan; a code or level outside the catalogue is a programming error."""
    if level not in CODES.get(code, ()):
        raise ValueError(f"finding {code!r} at level {level!r} is not in the catalogue (_findings.CODES)")
    out = {"level": level, "code": code, "host": host, "server": server, "message": message}
    out.update(data)
    return out
