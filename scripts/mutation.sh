#!/usr/bin/env bash
# Mutation testing of the planner core with mutmut (pinned in requirements.txt).
#
#   scripts/mutation.sh            every mutant of the planner core (about 40 minutes on 2 cores)
#   scripts/mutation.sh --sample   a fixed, deterministic sample (every 10th mutant by name), for CI;
#                                  fails when less than 85% of the sample is killed
#   scripts/mutation.sh --resume   after a full run: re-check only its survivors (and any function that
#                                  changed since) with the current tests; the score covers every mutant
#
# Prints the score and every surviving mutant (`mutmut show <name>` in .mutation/ shows its diff).
# docs/testing.md records the full run's score and why each survivor is equivalent or acceptable.
#
# Why a staging folder: the tests import the code as ansible_collections.llamafleet.fleet.plugins...,
# and mutmut 3 names a mutant by the path of its file relative to where it runs. Run from the
# checkout, the names would be plugins.plugin_utils._memory..., never what the code's __module__ says,
# so no mutant would ever be switched on. In .mutation/ the checkout sits at
# ansible_collections/llamafleet/fleet (a link), so paths and module names agree; mutmut copies the
# files into .mutation/mutants/ and the tests import the mutated copy from there (checked below: a run
# must kill at least one mutant, or the set-up is broken and the script fails).
set -euo pipefail
# The body is one block, so bash reads all of it before running any: editing this file while a run
# goes on (it takes a while) cannot change what the run does next.
{
cd "$(dirname "$0")/.."
ROOT=$PWD
MODE=full
SAMPLE_EVERY=10
MIN_SCORE=85
case "${1:-}" in
  "") ;;
  --sample) MODE=sample ;;
  --resume) MODE=resume ;;
  *) echo "usage: $0 [--sample|--resume]" >&2; exit 2 ;;
esac
MUTMUT=$ROOT/.venv/bin/mutmut
[ -x "$MUTMUT" ] || { echo "mutation: $MUTMUT is missing; run scripts/bootstrap.sh first" >&2; exit 1; }

# The planner core: what the plan computes and reports. Kept in one list, read by mutmut's config.
CORE=(
  plugins/plugin_utils/_memory.py
  plugins/plugin_utils/_speed.py
  plugins/plugin_utils/_plan.py
  plugins/plugin_utils/_inventory.py
  plugins/plugin_utils/_server_args.py
  plugins/plugin_utils/_report.py
  plugins/module_utils/llamafleet_gpus.py
)
PKG=ansible_collections/llamafleet/fleet
STAGE=$ROOT/.mutation
if [ "$MODE" = resume ]; then
  [ -d "$STAGE/mutants" ] || { echo "mutation: --resume needs a previous full run in $STAGE" >&2; exit 1; }
else
  rm -rf "$STAGE"
  mkdir -p "$STAGE/ansible_collections/llamafleet"
  ln -s ../../.. "$STAGE/$PKG"
fi
only=""
for f in "${CORE[@]}"; do only+="\"$PKG/$f\", "; done
# Only the unit tests of plugins run (mutmut runs, per mutant, just the tests that reach the mutated
# function); the module tests that start ansible in a subprocess cannot see a mutant and are slow.
cat > "$STAGE/pyproject.toml" <<EOF
[tool.mutmut]
source_paths = ["$PKG/plugins"]
only_mutate = [${only%, }]
also_copy = ["$PKG/tests", "$PKG/docs"]
pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-k", "not test_module_"]
pytest_add_cli_args_test_selection = ["$PKG/tests/unit/plugins/plugin_utils", "$PKG/tests/unit/plugins/module_utils/test_llamafleet_gpus.py"]
use_git_change_detection = false
timeout_multiplier = 10.0

[tool.pytest.ini_options]
addopts = "-ra"
EOF

cd "$STAGE"
export PYTHONDONTWRITEBYTECODE=1
# the names of the mutants that are not killed (yet), from mutmut's result files
not_killed() {
  "$ROOT/.venv/bin/python" - <<'PY'
import json, pathlib
for meta in sorted(pathlib.Path("mutants").rglob("*.py.meta")):
    for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
        if code not in (1, 3, 24, -24, 36, 152, 255):
            print(name)
PY
}
# Mutant generation, the stats run (which test reaches which function), and the first mutant.
# mutmut has no "generate only" command; running one named mutant generates them all.
if [ "$MODE" = sample ]; then
  nice -n 10 "$MUTMUT" run --max-children 2 "__no_such_mutant__*" >/dev/null 2>&1 || true
  mapfile -t ALL < <("$ROOT/.venv/bin/python" - <<'PY'
import json, pathlib
names = []
for meta in sorted(pathlib.Path("mutants").rglob("*.py.meta")):
    names += json.loads(meta.read_text())["exit_code_by_key"]
print("\n".join(sorted(names)))
PY
)
  PICK=()
  for i in "${!ALL[@]}"; do
    if (( i % SAMPLE_EVERY == 0 )); then PICK+=("${ALL[$i]}"); fi
  done
  echo "mutation: sample of ${#PICK[@]} of ${#ALL[@]} mutants (every ${SAMPLE_EVERY}th by name)"
  nice -n 10 "$MUTMUT" run --max-children 2 "${PICK[@]}" > "$STAGE/run.log" 2>&1 || { tail -30 "$STAGE/run.log"; exit 1; }
elif [ "$MODE" = resume ]; then
  mapfile -t AGAIN < <(not_killed)
  echo "mutation: re-checking ${#AGAIN[@]} mutants that were not killed"
  # changed source files are mutated afresh and their new mutants run too (mutmut keeps results per function)
  nice -n 10 "$MUTMUT" run --max-children 2 > "$STAGE/run.log" 2>&1 || { tail -30 "$STAGE/run.log"; exit 1; }
  if [ "${#AGAIN[@]}" -gt 0 ]; then
    nice -n 10 "$MUTMUT" run --max-children 2 "${AGAIN[@]}" >> "$STAGE/run.log" 2>&1 || { tail -30 "$STAGE/run.log"; exit 1; }
  fi
else
  nice -n 10 "$MUTMUT" run --max-children 2 > "$STAGE/run.log" 2>&1 || { tail -30 "$STAGE/run.log"; exit 1; }
fi

"$ROOT/.venv/bin/python" - "$MIN_SCORE" "$MODE" <<'PY'
import json, pathlib, sys
min_score, mode = float(sys.argv[1]), sys.argv[2]
status = {1: "killed", 3: "killed", 0: "survived", 36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout",
          255: "timeout", 33: "no tests", 5: "no tests", 34: "skipped", None: "not checked"}
counts, survivors = {}, []
for meta in sorted(pathlib.Path("mutants").rglob("*.py.meta")):
    for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
        s = status.get(code, "suspicious")
        if s == "not checked":
            continue
        counts[s] = counts.get(s, 0) + 1
        if s in ("survived", "no tests", "suspicious"):
            survivors.append(f"{s:9} {name}")
tested = sum(counts.values())
killed = counts.get("killed", 0) + counts.get("timeout", 0)
if tested == 0 or counts.get("killed", 0) == 0:
    sys.exit(f"mutation: no mutant was killed out of {tested}: the tests are not exercising the mutants (set-up broken)")
score = 100.0 * killed / tested
for line in survivors:
    print("  " + line)
print(f"mutation ({mode}): {killed}/{tested} killed = {score:.1f}% "
      + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
if score < min_score:
    sys.exit(f"mutation: score {score:.1f}% is below {min_score:.0f}%")
PY
exit
}
