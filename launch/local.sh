#!/usr/bin/env bash
# Single-process training on this machine (all local devices):
#
#   launch/local.sh CONFIG WORKDIR [train args / --config.key=value overrides ...]
#   launch/local.sh configs/m2d.py:size=tiny,runlocal /tmp/m2d --config.data.dir=DATA --stop-at=10
#
# Resumes from WORKDIR's latest checkpoint. Uses the repository's .venv/bin/avpretrain when there
# is one (override with AVP=...), else `avpretrain` on PATH.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() {
  echo "usage: $0 CONFIG WORKDIR [overrides...]" >&2
  echo "  e.g. $0 configs/m2d.py:size=tiny,runlocal /tmp/m2d --config.data.dir=DATA" >&2
  exit 2
}
[ $# -ge 2 ] || usage
case "$1" in -h|--help) usage ;; esac
CONFIG=$1 WORKDIR=$2
shift 2

if [ -z "${AVP:-}" ]; then
  if [ -x "$REPO/.venv/bin/avpretrain" ]; then AVP="$REPO/.venv/bin/avpretrain"
  elif command -v avpretrain >/dev/null; then AVP=avpretrain
  else echo "error: no avpretrain (neither $REPO/.venv/bin/avpretrain nor on PATH); run 'make venv'" >&2; exit 2
  fi
fi
# A config path relative to the repository works from any directory.
CONFIG_FILE=${CONFIG%%:*}
if [ ! -f "$CONFIG_FILE" ] && [ -f "$REPO/$CONFIG_FILE" ]; then CONFIG="$REPO/$CONFIG"; fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec $AVP train --config="$CONFIG" --workdir="$WORKDIR" "$@"
