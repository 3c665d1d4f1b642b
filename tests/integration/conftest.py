"""Shared fixtures of the slow tests: the lab's llama.cpp image (built or reused by the build role)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
CURRENT_IMAGE = "/var/lib/llamafleet/build/current-image"


def playbook(*args: str, check: bool = True, timeout: int = 3000) -> subprocess.CompletedProcess:
    """Run ansible-playbook from the repository root as a user would; output kept for asserts."""
    result = subprocess.run([os.path.join(BIN, "ansible-playbook"), *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=timeout, env=dict(os.environ, ANSIBLE_FORCE_COLOR="0"))
    if check and result.returncode != 0:
        raise AssertionError(f"ansible-playbook {' '.join(args)} failed:\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="session")
def lab_image() -> str:
    """The llama-server image of the lab inventory (the build role reuses it when it exists)."""
    playbook("playbooks/build.yml")
    with open(CURRENT_IMAGE, encoding="utf-8") as handle:
        return handle.read().strip()
