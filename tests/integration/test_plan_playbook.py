"""playbooks/plan.yml as a user runs it: reports written either way, non-zero exit on errors."""
from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading

import pytest

from ansible_collections.llamafleet.fleet.plugins.plugin_utils._shapes import SHAPES
from tests.conftest import ROOT
from tests.support.synthetic_gguf import write_model
from tests.unit.plugins.module_utils.test_llamafleet_gguf import RangeHandler


def plan(tmp_path, *args):
    result = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "playbooks/plan.yml",
                             "-e", f"llamafleet_report_dir={tmp_path}", *args],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    report = json.loads((tmp_path / "plan.json").read_text()) if (tmp_path / "plan.json").exists() else None
    return result, report


def test_production_example_is_refused_with_reasons_and_alternatives(tmp_path):
    result, report = plan(tmp_path, "-i", "inventory/production.example")
    assert result.returncode != 0
    assert "Nothing was changed on any host" in result.stdout
    codes = {f["code"] for f in report["findings"] if f["level"] == "error"}
    assert {"does-not-fit", "prompt-cache-exceeds-container", "capacity-exceeded"} <= codes
    chat0 = next(s for s in report["servers"] if s["name"] == "chat-0")
    assert chat0["memory_mib"]["model"] == pytest.approx(5872, abs=2)
    assert chat0["memory_mib"]["context"] == pytest.approx(544)
    dev0 = next(d for d in report["devices"] if d["device"] == "cuda:0")
    assert not dev0["fits"] and dev0["capacity_mib"] == 6063
    fit = next(f for f in report["findings"] if f["code"] == "does-not-fit" and f["server"] == "chat-0")
    winners = [a for a in fit["alternatives"] if a["fits"] and a.get("workload", {}).get("stable")]
    assert winners and winners[0]["change"].startswith("model: stheno-q4km")
    # no P106-100 was ever measured: its CUDA overhead is estimated, +/- 90 MiB per process (docs/plan.md), from
    # 94.0 + 0.001877 x (10 SMs x 2048 threads) = 132.4 MiB; the F16 embedder adds cuBLAS 70 and its pool 24: 226.4
    assert (chat0["overhead_detail"]["source"], chat0["overhead_detail"]["uncertainty_mib"]) == ("estimated", 90)
    assert ("(CUDA overhead of P106-100 estimated, per process: chat-0 132 +/- 90 MiB, embed-0 226 +/- 90 MiB; run "
            "playbooks/calibrate.yml to measure it)") in fit["message"]
    # and it still says what fits: Q4_K_M with more to spare than the two estimates together may be off by
    assert winners[0]["spare_mib"] > winners[0]["uncertainty_mib"] == 180
    # the embedding containers hold llama.cpp's 244 MiB host output buffer (640m in the example)
    assert "container-memory-too-small" not in codes
    assert "does-not-fit" in (tmp_path / "plan.md").read_text()
    # the build and driver settings for its P106-100 cards (CC 6.1): branch 580, the last for Pascal; CUDA 12.9.1,
    # the last toolkit that compiles sm_61; real code for sm_61 (facts.md #1, #2)
    (host,) = report["hosts"]
    assert host["gpu_stack"] == {"driver_branch": 580, "cuda_version": "12.9.1", "cuda_source": "nvidia",
                                 "cuda_architectures": "61-real",
                                 "kernel_modules": "proprietary"}
    assert "| gpu-box-1 | 580 | 12.9.1 | nvidia | 61-real | proprietary |" in (tmp_path / "plan.md").read_text()
    # every server, device and finding carries the fields plan.json promises
    assert set(chat0) >= {"host", "name", "role", "model", "device", "memory_mib", "host_memory_mib", "gpu_layers",
                          "speed", "findings"}
    assert set(chat0["memory_mib"]) >= {"model", "context", "compute", "overhead", "total"}
    assert set(dev0) >= {"host", "device", "capacity_mib", "planned_mib", "fits"}
    assert all(set(f) >= {"level", "code", "message", "host", "server"} for f in report["findings"])


def test_a_driver_branch_that_drops_the_p106_is_refused_before_any_host_is_touched(tmp_path):
    result, report = plan(tmp_path, "-i", "inventory/production.example", "-e", "nvidia_driver_branch=590")
    assert result.returncode != 0
    (err,) = [f for f in report["findings"] if f["code"] == "driver-branch-unsupported"]
    assert err["level"] == "error" and "590 drops" in err["message"]


def test_lab_plan_passes(tmp_path):
    result, report = plan(tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    assert report["summary"]["errors"] == 0 and report["devices"][0]["device"] == "cpu"


def test_bad_inventory_is_named_and_no_report_pretends(tmp_path):
    bad = json.dumps({"llamafleet_servers": [{"name": "chat-0", "args": {"cache_type_k": "q3"}}]})
    result, report = plan(tmp_path, "-e", bad)
    assert result.returncode != 0 and report is None
    assert "server chat-0: args.cache_type_k must be one of" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def host_state() -> list[str]:
    """What a run could change on the lab host: its containers, images and llamafleet's files (with mtimes)."""
    def out(*argv: str) -> list[str]:
        return subprocess.run(argv, capture_output=True, text=True, check=False).stdout.split("\n")
    files = []
    for top in ("/var/lib/llamafleet", "/etc/llamafleet"):
        for base, dirs, names in os.walk(top):
            # what the running fleet writes itself, not a play: Prometheus's database, build logs
            dirs[:] = [d for d in dirs if os.path.join(base, d) != "/var/lib/llamafleet/prometheus"]
            files += [f"{base}/{n} {os.stat(os.path.join(base, n)).st_mtime_ns}" for n in names
                      if os.path.isfile(os.path.join(base, n)) and not n.endswith(".log")]
    return (out("docker", "ps", "-a", "--no-trunc", "--format", "{{.ID}} {{.Names}} {{.Image}}")
            + out("docker", "images", "-q", "--no-trunc") + sorted(files))


# What a later play would refuse, the plan refuses first, naming the variable; site.yml with it changes nothing.
BAD_INPUTS = {
    "servers' key with a space": ({"llama_server_api_key": "sk-lab servers-key-0123456789"},
                                  "ERROR [api-key-invalid] lab: llama_server_api_key must be 16 or more letters"),
    "no build source": ({"llamacpp_build_source": {}}, "ERROR [build-source-invalid] lab: llamacpp_build_source is not set"),
    "git source without repo_url": ({"llamacpp_build_source": {"type": "git", "ref": "b6700"}},
                                    "llamacpp_build_source.repo_url is not set"),
    "parallel 0": ({"llamafleet_servers": [{"name": "chat-0", "args": {"parallel": 0}}]},
                   "server chat-0: args.parallel cannot be 0"),
    "unknown argument": ({"llamafleet_servers": [{"name": "chat-0", "args": {"no_such_flag": 3}}]},
                         "ERROR [flag-unknown] lab: server chat-0: llama-server 0c1e570 does not know --no-such-flag"),
}


@pytest.mark.parametrize("extra,words", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_an_input_a_later_play_would_refuse_is_refused_first_and_nothing_changes(tmp_path, extra, words):
    result, _report = plan(tmp_path, "-e", json.dumps(extra))
    assert result.returncode != 0
    assert words in " ".join(result.stdout.split()), result.stdout[-3000:]
    before = host_state()
    site = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "site.yml",
                           "-e", f"llamafleet_report_dir={tmp_path}", "-e", json.dumps(extra)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert site.returncode != 0 and words in " ".join(site.stdout.split())
    assert host_state() == before


def test_models_known_only_by_url_are_planned_from_their_header(tmp_path):
    """Remove the declared shapes: the plan reads each GGUF header over HTTP range requests and
    gets the same numbers as from the shape (the synthetic files have the published shapes)."""
    www = tmp_path / "www"
    www.mkdir()
    for name, quant in (("q6.gguf", "Q6_K"), ("q4.gguf", "Q4_K_M")):
        write_model(str(www / name), SHAPES["llama-3.1-8b"], quant)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a, **k: RangeHandler(*a, directory=str(www), **k))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    sha = "0" * 64
    models = {
        "stheno-q6k": {"url": f"{base}/q6.gguf", "path": "/m/q6.gguf", "sha256": sha, "family": "stheno"},
        "stheno-q4km": {"url": f"{base}/q4.gguf", "path": "/m/q4.gguf", "sha256": sha, "family": "stheno"},
        "lumimaid-q6k": {"url": f"{base}/q6.gguf", "path": "/m/q6.gguf", "sha256": sha},
        "nomic-embed": {"path": "/m/e.gguf", "sha256": sha, "shape": "nomic-embed-text-v1.5", "quantization": "F16"},
    }
    try:
        result, report = plan(tmp_path / "out", "-i", "inventory/production.example",
                              "-e", json.dumps({"llamafleet_models": models}))
    finally:
        server.shutdown()
    assert report is not None, result.stdout[-3000:]
    chat0 = next(s for s in report["servers"] if s["name"] == "chat-0")
    assert chat0["memory_mib"]["model"] == pytest.approx(5872, abs=2)
    assert chat0["memory_mib"]["context"] == pytest.approx(544)
