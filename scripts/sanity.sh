#!/usr/bin/env bash
# `ansible-test sanity` on the collection as it is shipped: build the artifact (galaxy.yml's
# build_ignore leaves the lab, tests and scripts out), install it where ansible-test wants it
# (.../ansible_collections/llamafleet/fleet, inside a git repository), and run sanity with the
# controller's Python. ansible-test installs each test's pinned tools into its own venvs (cached in
# ~/.ansible/test/venv), which needs the Python package index the first time.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export PATH="$ROOT/.venv/bin:$PATH"
# ansible-test bootstraps pip into each venv with a get-pip script it downloads from a host these
# machines cannot reach; it takes a cached script instead (its own message says where). Ours
# bootstraps pip offline with the interpreter's ensurepip, then lets that pip install what
# ansible-test asked for (pip itself at ansible-test's pinned version, from the package index).
cached=~/.ansible/test/cache/get_pip_24_2.py
mkdir -p "$(dirname "$cached")"
cat > "$cached" <<'PY'
import ensurepip, os, subprocess, sys
ensurepip.bootstrap()
os.environ.pop("PIP_CONFIG_FILE", None)  # ensurepip hides pip's configuration; the install below needs it (index, CA)
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", "--upgrade"] + args))
PY
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
ansible-galaxy collection build --force --output-path "$work" >/dev/null
dest="$work/root/ansible_collections/llamafleet/fleet"
mkdir -p "$dest" && tar -C "$dest" -xzf "$work"/llamafleet-fleet-*.tar.gz
# sanity's ignore files are part of the test harness, not of the artifact
mkdir -p "$dest/tests/sanity" && cp "$ROOT"/tests/sanity/ignore-*.txt "$dest/tests/sanity/" 2>/dev/null || true
cd "$dest"
echo "tests/output/" > .gitignore   # where ansible-test keeps its own venvs and results
git init -q && git add -A && git -c user.name=sanity -c user.email=sanity@localhost commit -qm sanity
# the dependencies (community.docker, ...) resolve from the project's collections path
ANSIBLE_COLLECTIONS_PATH="$work/root:$ROOT/collections" ansible-test sanity --venv --python "$(python -c 'import sys; print("%d.%d" % sys.version_info[:2])')" "$@"
