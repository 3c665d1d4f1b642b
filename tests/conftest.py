"""Make the repository's plugins importable exactly as Ansible imports them.

module_utils are imported as ansible.module_utils.llamafleet_* everywhere (modules, filters,
tests), so the test session adds plugins/module_utils to that package's path, as the filter
plugin does on the controller.
"""
from __future__ import annotations

import os
import sys

import ansible.module_utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULE_UTILS = os.path.join(ROOT, "plugins", "module_utils")
if MODULE_UTILS not in ansible.module_utils.__path__:
    ansible.module_utils.__path__.append(MODULE_UTILS)
for sub in ("plugins/filter", "plugins/modules"):
    path = os.path.join(ROOT, sub)
    if path not in sys.path:
        sys.path.insert(0, path)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

LAB_MODEL = os.path.join(ROOT, ".cache", "models", "gemma-3-270m-q4_k_m.gguf")

# Rows of the memory accuracy table (tests/integration/test_memory_accuracy.py), printed at the end.
ACCURACY_ROWS: list[str] = []


def pytest_terminal_summary(terminalreporter):
    """The memory accuracy table, predicted/measured, whenever accuracy tests ran."""
    if ACCURACY_ROWS:
        terminalreporter.write_sep("=", "memory accuracy: predicted/measured MiB (llama-server -lv 4 fit projection)")
        for row in ACCURACY_ROWS:
            terminalreporter.write_line(row)
