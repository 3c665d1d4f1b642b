#!/usr/bin/env bash
# GuideLLM, the outside yardstick of the bench (tests/rehearsals/test_guidellm.py, docs/sim.md), in a venv
# of its own: it pulls in torch and transformers, which llamafleet itself does not need.
#   .cache/guidellm/venv        guidellm and a CPU build of torch
#   .cache/guidellm/tokenizer   a Hugging Face tokenizer built by transformers from the lab's chat GGUF, so
#                               GuideLLM needs nothing from a model hub
# GUIDELLM_TORCH names the torch requirement (default: the CPU build the machine's wheel directory has).
# Idempotent: a second run checks and returns.
set -euo pipefail
cd "$(dirname "$0")/.."
GUIDELLM_VERSION=0.8.1
GUIDELLM_TORCH=${GUIDELLM_TORCH:-torch==2.13.0+cpu}
HERE=.cache/guidellm
MODEL=.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf

say() { printf '\033[1m[guidellm]\033[0m %s\n' "$*"; }

if ! "$HERE/venv/bin/guidellm" --version 2>/dev/null | grep -q "$GUIDELLM_VERSION"; then
  say "installing guidellm $GUIDELLM_VERSION and $GUIDELLM_TORCH into $HERE/venv (a few minutes)"
  python3 -m venv "$HERE/venv"
  "$HERE/venv/bin/pip" install -q "guidellm==$GUIDELLM_VERSION" "$GUIDELLM_TORCH" gguf 2>&1 | grep -v "^WARNING: Location" || true
  "$HERE/venv/bin/guidellm" --version | grep -q "$GUIDELLM_VERSION"
fi
if [ ! -f "$HERE/tokenizer/tokenizer.json" ]; then
  [ -f "$MODEL" ] || { echo "guidellm.sh: $MODEL is missing; scripts/bootstrap.sh fetches it" >&2; exit 1; }
  say "building the tokenizer from $MODEL"
  "$HERE/venv/bin/python" - "$MODEL" "$HERE/tokenizer" <<'EOF'
import os
import sys

from transformers import AutoTokenizer

model, out = sys.argv[1], sys.argv[2]
AutoTokenizer.from_pretrained(os.path.dirname(model), gguf_file=os.path.basename(model)).save_pretrained(out)
EOF
fi
say "ready: $HERE/venv/bin/guidellm, tokenizer $HERE/tokenizer"
