"""Every plugin imports, and ansible-doc renders every plugin's documentation."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
FILTERS = sorted(f[:-4] for f in os.listdir(os.path.join(ROOT, "plugins", "filter")) if f.endswith(".yml"))
MODULES = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "plugins", "modules")) if f.endswith(".py"))
CALLBACKS = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "plugins", "callback")) if f.endswith(".py"))
ANSIBLE_DOC = os.path.join(os.path.dirname(sys.executable), "ansible-doc")


def test_filter_plugin_exports_every_documented_filter():
    from ansible_collections.llamafleet.fleet.plugins.filter import llamafleet
    assert sorted(llamafleet.FilterModule().filters()) == FILTERS


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name):
    __import__(f"ansible_collections.llamafleet.fleet.plugins.modules.{name}")


@pytest.mark.parametrize("kind,name", [("filter", f) for f in FILTERS] + [("module", m) for m in MODULES]
                         + [("callback", c) for c in CALLBACKS])
def test_ansible_doc(kind, name):
    result = subprocess.run([ANSIBLE_DOC, "-t", kind, f"llamafleet.fleet.{name}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    if kind != "callback":  # callbacks document options, not examples or return values
        assert "EXAMPLES" in result.stdout and "RETURN" in result.stdout
