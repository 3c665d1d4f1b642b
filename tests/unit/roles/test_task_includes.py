"""No task file of a role includes itself, directly or through another (issue 17: llama_server's
main.yml included rolling_server.yml, which included main.yml again at three places, so every inner
pass re-ran the whole role). Each role's include graph, read from its task files, has no cycle."""
from __future__ import annotations

import glob
import os

import yaml

from tests.conftest import ROOT

INCLUDES = ("ansible.builtin.include_tasks", "ansible.builtin.import_tasks", "include_tasks", "import_tasks")


def included(tasks) -> set[str]:
    """The task files a list of tasks includes, blocks, rescues and always sections included."""
    found = set()
    for task in tasks or []:
        for key in INCLUDES:
            if key in task:
                value = task[key]
                found.add(value["file"] if isinstance(value, dict) else value)
        for section in ("block", "rescue", "always"):
            found |= included(task.get(section))
    return found


def graph(role_dir: str) -> dict[str, set[str]]:
    out = {}
    for path in glob.glob(os.path.join(role_dir, "tasks", "*.yml")):
        with open(path, encoding="utf-8") as handle:
            out[os.path.basename(path)] = included(yaml.safe_load(handle))
    return out


def cycle(edges: dict[str, set[str]]) -> list[str]:
    """A cycle of the graph as a path (first file repeated at the end), or [] when there is none."""
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str]:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
            if state.get(nxt) is None:
                found = visit(nxt, path + [nxt])
                if found:
                    return found
        state[node] = 2
        return []

    for start in sorted(edges):
        if state.get(start) is None:
            found = visit(start, [start])
            if found:
                return found
    return []


def test_the_cycle_finder_finds_a_cycle_through_another_file():
    assert cycle({"main.yml": {"rolling_server.yml"}, "rolling_server.yml": {"main.yml", "readmit.yml"}}) == \
        ["main.yml", "rolling_server.yml", "main.yml"]
    assert cycle({"main.yml": {"main.yml"}}) == ["main.yml", "main.yml"]
    assert cycle({"main.yml": {"a.yml", "b.yml"}, "a.yml": {"b.yml"}, "b.yml": set()}) == []


def test_no_task_file_includes_itself():
    roles = sorted(glob.glob(os.path.join(ROOT, "roles", "*")))
    assert len(roles) >= 10
    found = {os.path.basename(r): cycle(graph(r)) for r in roles}
    assert {role: path for role, path in found.items() if path} == {}
    assert graph(os.path.join(ROOT, "roles", "llama_server"))["main.yml"] >= {"checks.yml", "apply.yml", "rolling_server.yml"}
