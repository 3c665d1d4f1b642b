"""Make the collection llamafleet.fleet importable exactly as Ansible imports it.

scripts/bootstrap.sh links this checkout as collections/ansible_collections/llamafleet/fleet; with
collections/ on sys.path, `ansible_collections.llamafleet.fleet.plugins...` imports in tests as in
plugins. No package path is patched.
"""
from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTIONS = os.path.join(ROOT, "collections")
for path in (COLLECTIONS, ROOT):
    if path not in sys.path:
        sys.path.insert(0, path)

LAB_MODEL = os.path.join(ROOT, ".cache", "models", "gemma-3-270m-q4_k_m.gguf")

# Rows of the memory accuracy table (tests/integration/test_memory_accuracy.py), printed at the end.
ACCURACY_ROWS: list[str] = []
# Rows of the H200 table (tests/unit/test_cuda_truth.py): planned/llama.cpp at exit, MiB.
CUDA_TRUTH_ROWS: list[str] = []
# Fault figures of the watchdog (tests/integration/test_watchdog.py), printed at the end.
FAULT_ROWS: list[str] = []


def pytest_terminal_summary(terminalreporter):
    """The memory accuracy table, predicted/measured, whenever accuracy tests ran."""
    if ACCURACY_ROWS:
        terminalreporter.write_sep("=", "memory accuracy: predicted/measured MiB (llama-server -lv 4 fit projection)")
        for row in ACCURACY_ROWS:
            terminalreporter.write_line(row)
    if CUDA_TRUTH_ROWS:
        terminalreporter.write_sep("=", "CUDA truth: planned/measured MiB on an H200 (llama.cpp breakdown at exit; "
                                        "total vs nvidia-smi per process)")
        for row in CUDA_TRUTH_ROWS:
            terminalreporter.write_line(row)
    if FAULT_ROWS:
        terminalreporter.write_sep("=", "watchdog: faults on the lab (times from the fault, seconds)")
        for row in FAULT_ROWS:
            terminalreporter.write_line(row)
