# Copyright: llamafleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The long flags of llama-server at the llama.cpp refs llamafleet pins, recorded from their --help.

The plan checks every server's args against the flags of its host's `llamacpp_build_source.ref`
when that ref is recorded here, so an argument the binary would refuse stops the plan before
anything is built. A ref that is not here is checked after its build only (the llama_server role
compares the args with the built binary's --help). The record is kept true by
tests/integration/test_lab_fleet.py, which compares it with the lab image's --help.

To record a ref: `docker run --rm --network none <image> --help | python3 -c 'import re, sys;
print(sorted(set(re.findall(r"(?<![\\w-])(--[a-z0-9][a-z0-9-]*)", sys.stdin.read()))))'`.
"""
from __future__ import annotations

PINNED_FLAGS: dict[str, frozenset[str]] = {}
