#!/usr/bin/env bash
# The whole test suite, from a fresh clone: set-up, lint, unit tests, molecule role scenarios,
# then the slow end-to-end tests on the lab (real llama.cpp build, real model, real requests).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH"

section() { printf '\n\033[1m== %s\033[0m (%s)\n' "$1" "$(date +%T)"; }

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
pytest -q tests/integration
section "done"
