"""Shared fixtures of the slow tests: the lab's image, and the lab fleet brought up once per session.

Every end-to-end test that needs running servers takes the `lab` fixture: site.yml runs once for the
whole session, and a test that changes the fleet puts it back as the inventory says before it ends.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
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
        raise AssertionError(f"ansible-playbook {' '.join(args)} failed:\n{failures(result.stdout)}"
                             f"{result.stdout[-6000:]}\n{result.stderr[-3000:]}")
    return result


def failures(output: str) -> str:
    """Every failed task of a run with its task line: the recap's tail alone may not reach back to them."""
    lines = output.splitlines()
    found = []
    for i, line in enumerate(lines):
        if line.startswith(("fatal:", "failed:")) or "[ERROR]" in line:
            task = next((lines[j] for j in range(i, -1, -1) if lines[j].startswith("TASK [")), "")
            found.append(f"{task}\n{line[:2000]}")
    return "every failure of the run:\n" + "\n".join(found) + "\n...\n" if found else ""


@pytest.fixture(scope="session")
def lab_image() -> str:
    """The llama-server image of the lab inventory (the build role reuses it when it exists)."""
    playbook("playbooks/build.yml")
    with open(CURRENT_IMAGE, encoding="utf-8") as handle:
        return handle.read().strip()


def containers() -> dict[str, dict]:
    """`docker inspect` of the lab host's llama-server containers, by server name."""
    ids = subprocess.run(["docker", "ps", "-aq", "--filter", "label=llamafleet.host=lab"], capture_output=True,
                         text=True, check=True).stdout.split()
    if not ids:
        return {}
    out = json.loads(subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True, check=True).stdout)
    return {c["Config"]["Labels"]["llamafleet.server"]: c for c in out}


# The lab servers' key, as the host holds it (inventory/lab reads it from there: every clone manages the
# same servers); llama_server writes it before any server starts.
LAB_KEY_FILE = "/etc/llamafleet/api_key"


def lab_server_key() -> str:
    with open(LAB_KEY_FILE, encoding="utf-8") as handle:
        return handle.read().split()[0]


WATCHDOG_MAINTENANCE = "/run/llamafleet/watchdog/maintenance"  # watchdog_state_dir, role default


@contextlib.contextmanager
def watchdog_holds_off(*names: str):
    """The watchdog's maintenance flags for these servers or containers: a test that stops them on
    purpose keeps the watchdog from starting them again meanwhile (docs/watchdog.md, Pausing it)."""
    os.makedirs(WATCHDOG_MAINTENANCE, exist_ok=True)
    flags = [os.path.join(WATCHDOG_MAINTENANCE, name) for name in names]
    for flag in flags:
        with open(flag, "w", encoding="utf-8"):
            pass
    try:
        yield
    finally:
        for flag in flags:
            os.remove(flag)


def recap_changed(output: str) -> int:
    """The sum of changed= over every host of an ansible-playbook recap."""
    return sum(int(n) for n in re.findall(r"^\S+\s+: ok=\d+\s+changed=(\d+)", output, re.M))


@pytest.fixture(scope="session")
def lab() -> dict[str, dict]:
    """The lab fleet as the inventory declares it, brought up by site.yml once per test session.

    Whatever state the machine's lab was left in (another checkout's configuration included), the
    session starts from the declared one: recreating whole model groups is allowed here only.
    """
    playbook("site.yml", "-e", '{"llama_server_recreate_whole_groups": true}')
    return containers()
