#!/usr/bin/env bash
# The whole test suite, from a fresh clone: set-up, lint, unit tests, molecule role scenarios,
# then the slow end-to-end tests on the lab (real llama.cpp build, real model, real requests).
#   scripts/test.sh --cuda-build   instead: build the first user's CUDA image (8x P106-100, Debian's
#                                  toolkit) from a clean Docker cache and check it (tests/cuda_build;
#                                  hours on 2 cores, so not part of the whole suite)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH"

section() { printf '\n\033[1m== %s\033[0m (%s)\n' "$1" "$(date +%T)"; }

if [ "${1:-}" = "--cuda-build" ]; then
  section "the CUDA image for 8x P106-100 (sm_61, Debian's CUDA toolkit), from a clean Docker cache"
  pytest -q -s tests/cuda_build
  section "done"
  exit 0
elif [ "${1:-}" = "--rehearsals" ]; then
  section "rehearsals on the simulated first user's host (docs/sim.md): the seed beside the plan, routing and the plan beside it, a rolling restart, the watchdog, GuideLLM beside the bench"
  pytest -q -s tests/rehearsals
  section "done"
  exit 0
elif [ $# -gt 0 ]; then
  echo "usage: scripts/test.sh [--cuda-build | --rehearsals]" >&2
  exit 2
fi

section "lint: ruff, yamllint, ansible-lint (production profile)"
ruff check .
yamllint --strict .
ansible-lint -q

section "unit tests"
pytest -q tests/unit

section "mutation testing of the planner core: a fixed sample (the full run: scripts/mutation.sh)"
scripts/mutation.sh --sample

section "ansible-test sanity on the collection artifact"
scripts/sanity.sh

section "the lab's llama.cpp image (built once, about 8 minutes on 2 cores; reused while its inputs stay the same)"
ansible-playbook playbooks/build.yml

section "molecule role scenarios"
for scenario in docker_engine llm_models llamacpp_build llama_server nvidia_driver nvidia_container_toolkit watchdog; do
  molecule test -s "$scenario"
done

section "end-to-end on the lab: memory accuracy against llama.cpp, site.yml serving real requests"
pytest -q --durations=20 tests/integration  # the 20 slowest printed: the 60-minute budget in view
section "done"
