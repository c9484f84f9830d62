# Sourced by the launchers: REPO, AVP (the avpretrain command), and resolve_config.
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${AVP:-}" ]; then
  if [ -x "$REPO/.venv/bin/avpretrain" ]; then AVP="$REPO/.venv/bin/avpretrain"
  elif command -v avpretrain >/dev/null; then AVP=avpretrain
  else echo "error: no avpretrain (neither $REPO/.venv/bin/avpretrain nor on PATH); run 'make venv'" >&2; exit 2
  fi
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# A config path relative to the repository works from any directory: resolve_config SPEC.
resolve_config() {
  local file=${1%%:*}
  if [ ! -f "$file" ] && [ -f "$REPO/$file" ]; then echo "$REPO/$1"; else echo "$1"; fi
}
