#!/usr/bin/env bash
# Time a newcomer's first README command, step by step: a clean clone of this checkout runs
#   scripts/bootstrap.sh && .venv/bin/ansible-playbook site.yml
# against a Docker daemon of its own with an empty data root (no image, no layer, no build cache)
# and with pip's cache off, so every image, wheel and package is fetched and built as on a fresh
# machine. Prints each bootstrap step and each play with its start and duration (docs/testing.md).
#
# What it cannot make fresh on a machine that already runs llamafleet: the docker.io, rsync and
# debootstrap packages (installed already, so their install is not timed), and the host's model
# directory (the models play finds the files in place). The lab's containers of the machine's own
# daemon are stopped for the run (they hold the lab's ports) and started again after it; the clone
# reads the lab servers' key from the host (an older REF, from a copy of this checkout's .cache), so
# they still match when they come back; its watchdog is
# given the empty daemon's socket (watchdog_docker_socket), the only variable the run sets.
#   scripts/time-first-run.sh [WORK_DIR]      (default /tmp/llamafleet-first-run; removed first)
#   REF=<commit> scripts/time-first-run.sh     times that commit of this checkout instead of HEAD
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-/tmp/llamafleet-first-run}
SOCK="$WORK/docker.sock"
command -v dockerd >/dev/null || { echo "dockerd is not installed: run scripts/bootstrap.sh once" >&2; exit 2; }

stop_fresh_daemon() {
  if [ -f "$WORK/dockerd.pid" ]; then
    DOCKER_HOST="unix://$SOCK" docker ps -q | xargs -r env DOCKER_HOST="unix://$SOCK" docker rm -f >/dev/null 2>&1 || true
    kill "$(cat "$WORK/dockerd.pid")" 2>/dev/null || true
    for _ in $(seq 1 30); do [ -e "$SOCK" ] || break; sleep 1; done
  fi
}
lab_containers=""
restore() {
  stop_fresh_daemon
  # shellcheck disable=SC2086
  [ -z "$lab_containers" ] || docker start $lab_containers >/dev/null || true
  # the stopped daemon leaves its network namespace mounted under its exec root; rm cannot remove a mount
  umount "$WORK/exec/netns/default" 2>/dev/null || true
  rm -rf "$WORK/docker" "$WORK/exec" || true
}
trap restore EXIT

stop_fresh_daemon
umount "$WORK/exec/netns/default" 2>/dev/null || true
rm -rf "$WORK"
mkdir -p "$WORK"
git clone --quiet --no-hardlinks "$SRC" "$WORK/clone"
[ -z "${REF:-}" ] || git -C "$WORK/clone" checkout --quiet "$REF"
if [ -f "$SRC/.cache/lab-api-key" ]; then   # for a REF from before the lab read the host's key
  mkdir -p "$WORK/clone/.cache" && cp "$SRC/.cache/lab-api-key" "$WORK/clone/.cache/"
fi

lab_containers=$(docker ps -q --filter label=llamafleet.config 2>/dev/null; docker ps -q --filter 'name=^llamafleet-' 2>/dev/null)
lab_containers=$(echo "$lab_containers" | sort -u | tr '\n' ' ')
# shellcheck disable=SC2086
[ -z "${lab_containers// }" ] || docker stop $lab_containers >/dev/null

(
  for fd in /proc/self/fd/*; do fd=${fd##*/}; if [ "$fd" -gt 2 ] 2>/dev/null; then eval "exec $fd>&-"; fi; done
  exec dockerd --data-root "$WORK/docker" --exec-root "$WORK/exec" --pidfile "$WORK/dockerd.pid" \
    --host "unix://$SOCK" --bridge=none --iptables=false --ip-masq=false </dev/null >"$WORK/dockerd.log" 2>&1
) &
for _ in $(seq 1 60); do DOCKER_HOST="unix://$SOCK" docker info >/dev/null 2>&1 && break; sleep 1; done
DOCKER_HOST="unix://$SOCK" docker info >/dev/null

echo "timing the README's first command in $WORK/clone (Docker: an empty daemon at $SOCK)"
start=$(date +%s.%N)
set +e
(
  cd "$WORK/clone"
  export DOCKER_HOST="unix://$SOCK" PIP_NO_CACHE_DIR=1 ANSIBLE_FORCE_COLOR=0 \
         ANSIBLE_CALLBACKS_ENABLED=ansible.posix.profile_tasks
  # the watchdog heals the containers of the daemon whose socket it mounts: this run's, not the machine's
  scripts/bootstrap.sh && .venv/bin/ansible-playbook site.yml -e watchdog_docker_socket="$SOCK"
) 2>&1 | awk -v start="$start" '{ "date +%s.%N" | getline now; close("date +%s.%N"); printf "%7.1f %s\n", now - start, $0; fflush() }' \
  | tee "$WORK/run.log"
rc=${PIPESTATUS[0]}
set -e
total=$(awk -v start="$start" -v now="$(date +%s.%N)" 'BEGIN { printf "%.0f", now - start }')

echo
echo "steps (seconds from the start; a step lasts until the next one starts):"
grep -E '^ *[0-9.]+ (.\[1m)?\[bootstrap\]|^ *[0-9.]+ PLAY \[' "$WORK/run.log" \
  | sed -E 's/\x1b\[[0-9;]*m//g' \
  | awk -v total="$total" '{ t[NR] = $1; $1 = ""; name[NR] = substr($0, 2) }
        END { for (i = 1; i <= NR; i++) { end = (i < NR) ? t[i + 1] : total;
                printf "%7.1f %6.1f  %s\n", t[i], end - t[i], name[i] } }'
printf '\nREADME first command: rc %s, %d min %02d s from a clean clone to the fleet answering\n' \
  "$rc" $((total / 60)) $((total % 60))
exit "$rc"
