#!/usr/bin/env bash
# Single-process training on this machine (all local devices):
#
#   launch/local.sh CONFIG WORKDIR [train args / --config.key=value overrides ...]
#   launch/local.sh configs/m2d.py:size=tiny,runlocal /tmp/m2d --config.data.dir=DATA --stop-at=10
#
# Resumes from WORKDIR's latest checkpoint. Uses the repository's .venv/bin/avpretrain when there
# is one (override with AVP=...), else `avpretrain` on PATH.
set -euo pipefail

usage() {
  echo "usage: $0 CONFIG WORKDIR [overrides...]" >&2
  echo "  e.g. $0 configs/m2d.py:size=tiny,runlocal /tmp/m2d --config.data.dir=DATA" >&2
  exit 2
}
[ $# -ge 2 ] || usage
case "$1" in -h|--help) usage ;; esac
CONFIG=$1 WORKDIR=$2
shift 2

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
CONFIG=$(resolve_config "$CONFIG")
exec $AVP train --config="$CONFIG" --workdir="$WORKDIR" "$@"
