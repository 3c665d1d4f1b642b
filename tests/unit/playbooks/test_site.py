"""site.yml plans once; every playbook run alone still plans first (issue 17: one site.yml run carried
the preflight's two plays nine times, 35 plays of which 16 were skipped)."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

PLAN_PLAYS = ["Plan memory and speed of the fleet", "Name every host's llama-server image in the fleet model"]
STEPS = ["gpu_hosts", "build", "images", "models", "servers", "gateway", "watchdog", "monitoring", "smoke"]


def plays(playbook: str) -> list[str]:
    """The names of the plays one ansible-playbook run of this playbook goes through, in order."""
    result = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), playbook, "--list-tasks"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return re.findall(r"^  play #\d+ \([^)]*\): (.+?)\t", result.stdout, re.M)


def test_site_yml_runs_the_preflight_once_and_every_step_once():
    names = plays("site.yml")
    assert names[:2] == PLAN_PLAYS
    assert [n for n in names if n in PLAN_PLAYS] == PLAN_PLAYS
    assert len(names) == len(set(names)), names
    assert len(names) == 17, names   # 2 of the preflight, 15 of the steps (listed in the order site.yml runs them)


@pytest.mark.parametrize("step", STEPS)
def test_a_step_run_alone_plans_first_then_runs_the_same_plays_as_in_site_yml(step):
    alone = plays(f"playbooks/{step}.yml")
    assert alone[:2] == PLAN_PLAYS and len(alone) > 2
    assert alone[2:] == plays(f"playbooks/plays/{step}.yml")
