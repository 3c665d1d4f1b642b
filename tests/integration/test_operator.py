"""What an Ansible operator does first, on the running lab: check mode with diffs, and one phase by tag.

Check mode with one changed `args` value must run to the end, name exactly that server and change
nothing (container ids, images and files as they were). Every phase's tag runs alone.
"""
from __future__ import annotations

import json
import os
import re

import pytest

from tests.integration.conftest import containers, playbook, recap_changed

WATCHED_FILES = ["/etc/llamafleet/api_key", "/var/lib/llamafleet/build/current-image",
                 "/var/lib/llamafleet/models/SmolLM2-135M-Instruct.Q4_1.gguf.verified",
                 "/var/lib/llamafleet/models/gemma-3-270m-q4_k_m.gguf.verified"]


def state() -> dict:
    """Containers (id, start time, image) and watched files (mtime): what check mode must leave alone."""
    out = {n: (c["Id"], c["State"]["StartedAt"], c["Image"]) for n, c in containers().items()}
    out.update({path: os.stat(path).st_mtime_ns for path in WATCHED_FILES})
    return out


def test_check_mode_names_exactly_the_server_a_change_would_recreate_and_changes_nothing(lab):
    """One changed value on the up-to-date lab: check mode reports exactly that one change (every other
    task of the run, check-mode-only reports included, says unchanged) and leaves every container and file."""
    before = state()
    override = {"llamafleet_servers": [{"name": "chat-1", "args": {"ubatch_size": 128}}]}
    result = playbook("site.yml", "--check", "--diff", "-e", json.dumps(override))
    run_task = result.stdout[result.stdout.index("TASK [llamafleet.fleet.llama_server : Run one container per server]"):]
    run_task = run_task[:run_task.index("\nTASK [")]
    assert re.search(r"^changed: \[lab\] => \(item=chat-1 ", run_task, re.M), run_task
    assert not re.search(r"^changed: .*item=(chat-0|embed-0|embed-1) ", run_task, re.M), run_task
    assert "--ubatch-size" in run_task and "128" in run_task  # the diff shows the new argument
    assert recap_changed(result.stdout) == 1, result.stdout[-4000:]
    assert "Check mode: the smoke requests are sent only in a real run" in result.stdout
    assert state() == before


# tag -> a task name that only that phase runs
PHASES = {
    "plan": "Show the plan",
    "docker": "llamafleet.fleet.docker_engine : Ask the Docker daemon whether it answers",
    "gpus": "Read the GPUs with nvidia-smi",
    "build": "llamafleet.fleet.llamacpp_build : Look for an image built from exactly these inputs",
    "models": "llamafleet.fleet.llm_models : Place each model",
    "servers": "llamafleet.fleet.llama_server : Run one container per server",
    "smoke": "Ask every chat server for a few tokens",
}


@pytest.mark.parametrize("tag", PHASES)
def test_each_phase_runs_alone_by_its_tag(lab, tag):
    result = playbook("site.yml", "--tags", tag)
    assert recap_changed(result.stdout) == 0, result.stdout[-3000:]
    ran = set(re.findall(r"^TASK \[(.+?)\]", result.stdout, re.M))
    assert PHASES[tag] in ran, sorted(ran)
    assert not (set(PHASES.values()) - {PHASES[tag], PHASES["plan"]}) & ran, sorted(ran)
