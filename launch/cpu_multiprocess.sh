#!/usr/bin/env bash
# N JAX processes on this machine (CPU devices, coordinator on 127.0.0.1): tests the multi-host
# code paths (per-process input shards, global arrays, multi-process checkpoints) without a pod.
#
#   launch/cpu_multiprocess.sh NUM_PROCESSES DEVICES_PER_PROCESS CONFIG WORKDIR [overrides...]
#   launch/cpu_multiprocess.sh 2 4 configs/m2d.py:size=tiny,runlocal /tmp/m2d_mp --config.data.dir=DATA
#
# Process i logs to WORKDIR/logs/process_<i>.log (process 0 also to stdout). A SIGTERM or SIGINT
# (Ctrl-C) reaches every process as SIGTERM: they agree on a step, checkpoint it and exit 0; a second
# signal sends SIGKILL. If a process fails, the others are stopped (SIGTERM, then SIGKILL after
# KILL_AFTER=20 s) and the exit status is 1, with the tail of each failed process's log.
# Uses .venv/bin/avpretrain when present (override with AVP=...). Re-running resumes.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  echo "usage: $0 NUM_PROCESSES DEVICES_PER_PROCESS CONFIG WORKDIR [overrides...]" >&2
  echo "  e.g. $0 2 4 configs/m2d.py:size=tiny,runlocal /tmp/m2d_mp --config.data.dir=DATA" >&2
  exit 2
}
[ $# -ge 4 ] || usage
NUM=$1 DEVICES=$2 CONFIG=$3 WORKDIR=$4
shift 4
[[ "$NUM" =~ ^[1-9][0-9]*$ && "$DEVICES" =~ ^[1-9][0-9]*$ ]] || usage

PYTHON=python3
[ -x "$REPO/.venv/bin/python" ] && PYTHON="$REPO/.venv/bin/python"
PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])') || exit 1

CONFIG=$(resolve_config "$CONFIG")
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
mkdir -p "$WORKDIR/logs" || exit 1
echo "cpu_multiprocess: $NUM processes x $DEVICES devices, coordinator 127.0.0.1:$PORT, logs in $WORKDIR/logs/"

declare -a PIDS=() RC=()
SIGNALS=0
forward() {  # first SIGTERM/SIGINT: graceful (SIGTERM = checkpoint and exit); a second one: SIGKILL
  SIGNALS=$((SIGNALS + 1))
  local sig=TERM
  [ "$SIGNALS" -gt 1 ] && sig=KILL
  echo "cpu_multiprocess: got SIG$1, sending SIG$sig to processes ${PIDS[*]}" >&2
  kill -s "$sig" "${PIDS[@]}" 2>/dev/null
}
# Asynchronous children of a script ignore SIGINT, so Ctrl-C is forwarded as SIGTERM.
trap 'forward TERM' TERM
trap 'forward INT' INT

for ((i = 0; i < NUM; i++)); do
  log="$WORKDIR/logs/process_$i.log"
  cmd=($AVP train --config="$CONFIG" --workdir="$WORKDIR" --coordinator="127.0.0.1:$PORT"
       --num-processes="$NUM" --process-id="$i" --local-devices="$DEVICES" "$@")
  if [ "$i" -eq 0 ]; then
    # Process 0 also to stdout; with process substitution $! stays the trainer's pid, not tee's.
    # tee ignores SIGTERM/SIGINT (schedulers signal the whole process group): it ends when process 0
    # closes its output, and process 0 never blocks or fails writing to a dead pipe while it saves.
    "${cmd[@]}" > >(trap '' TERM INT; exec tee "$log") 2>&1 &
  else
    "${cmd[@]}" > "$log" 2>&1 &
  fi
  PIDS+=($!)
done

# Poll, so that a failed process is noticed at once: the others would block in collectives
# waiting for it, so they get SIGTERM and, after KILL_AFTER seconds, SIGKILL.
KILL_AFTER=${KILL_AFTER:-20}
failed=() killed_at=
while true; do
  running=0
  for ((i = 0; i < NUM; i++)); do
    [ -n "${RC[$i]:-}" ] && continue
    if kill -0 "${PIDS[$i]}" 2>/dev/null; then running=$((running + 1)); continue; fi
    wait "${PIDS[$i]}"; RC[$i]=$?
    [ "${RC[$i]}" -eq 0 ] || failed+=("$i")
  done
  [ "$running" -eq 0 ] && break
  if [ ${#failed[@]} -gt 0 ]; then
    if [ -z "$killed_at" ]; then
      echo "cpu_multiprocess: process ${failed[0]} failed; stopping the others" >&2
      kill -s TERM "${PIDS[@]}" 2>/dev/null
      killed_at=$SECONDS
    elif [ $((SECONDS - killed_at)) -ge "$KILL_AFTER" ]; then
      kill -s KILL "${PIDS[@]}" 2>/dev/null
    fi
  fi
  sleep 0.5 & wait $! 2>/dev/null  # interruptible by the traps
done
wait 2>/dev/null  # the tee of process 0

if [ ${#failed[@]} -gt 0 ]; then
  for i in "${failed[@]}"; do
    echo "cpu_multiprocess: process $i failed (exit ${RC[$i]}); last lines of $WORKDIR/logs/process_$i.log:" >&2
    tail -n 30 "$WORKDIR/logs/process_$i.log" | sed 's/^/  | /' >&2
  done
  exit 1
fi
echo "cpu_multiprocess: all $NUM processes finished"
