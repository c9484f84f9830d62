#!/usr/bin/env bash
# A TPU VM pod slice (Cloud TPU, no Kubernetes): installs the project on every worker and starts
# `avpretrain train` on all of them with the same config (`--dry-run`: prints every gcloud command,
# runs nothing).
#
#   launch/tpu_vm.sh [--dry-run] --tpu NAME --zone ZONE [--project P] [--wheel gs://BUCKET/avpretrain-*.whl]
#                    [--queued --accelerator v5litepod-256 --runtime v2-alpha-tpuv5-lite [--slices S]]
#                    CONFIG WORKDIR [train overrides...]
#
# Install: without --wheel, the repository at HEAD (`git archive`) is copied to every worker and
# installed there with `pip install '.[tpu]'`; with --wheel, every worker installs that wheel (build
# it with `python -m pip wheel --no-deps -w dist .` and copy it to the bucket). --queued first creates
# the slice as a queued resource (--slices S > 1: a multislice of S slices, nodes NAME-0 … NAME-S-1;
# the TPU runtime sets the MEGASCALE_* variables jax reads). jax.distributed.initialize() finds the
# workers by itself (TPU_WORKER_HOSTNAMES). WORKDIR must be a directory every worker sees (a
# Filestore/NFS mount, or a bucket mounted with gcsfuse at the same path on every worker): every
# process writes its shards of each checkpoint there. The job runs detached; logs go to
# ~/avpretrain.log on each worker (`gcloud compute tpus tpu-vm ssh NAME --worker=0 --command 'tail ~/avpretrain.log'`).
set -euo pipefail
usage() {
  sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
DRY=0 TPU="" ZONE="" PROJECT="" WHEEL="" QUEUED=0 ACCEL="" RUNTIME="" SLICES=1
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1; shift ;;
    --tpu) TPU=$2; shift 2 ;;
    --zone) ZONE=$2; shift 2 ;;
    --project) PROJECT=$2; shift 2 ;;
    --wheel) WHEEL=$2; shift 2 ;;
    --queued) QUEUED=1; shift ;;
    --accelerator) ACCEL=$2; shift 2 ;;
    --runtime) RUNTIME=$2; shift 2 ;;
    --slices) SLICES=$2; shift 2 ;;
    -h|--help) usage ;;
    --*) echo "error: unknown option $1" >&2; usage ;;
    *) break ;;
  esac
done
[ $# -ge 2 ] && [ -n "$TPU" ] && [ -n "$ZONE" ] || usage
case "$SLICES" in ''|*[!0-9]*|0) echo "error: --slices takes a positive integer, got '$SLICES'" >&2; exit 2 ;; esac
if [ "$QUEUED" = 1 ] && { [ -z "$ACCEL" ] || [ -z "$RUNTIME" ]; }; then
  echo "error: --queued needs --accelerator (e.g. v5litepod-256) and --runtime (e.g. v2-alpha-tpuv5-lite)" >&2; exit 2
fi
if [ "$SLICES" -gt 1 ] && [ "$QUEUED" = 0 ]; then echo "error: --slices needs --queued (a multislice is a queued resource)" >&2; exit 2; fi
CONFIG=$1 WORKDIR=$2
shift 2
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WHERE=(--zone "$ZONE")
[ -n "$PROJECT" ] && WHERE+=(--project "$PROJECT")
NODES=("$TPU")
if [ "$SLICES" -gt 1 ]; then NODES=(); for i in $(seq 0 $((SLICES - 1))); do NODES+=("$TPU-$i"); done; fi
q() { printf "'%s'" "${1//\'/\'\\\'\'}"; }   # one shell word in single quotes
EXTRA=""
[ $# -gt 0 ] && EXTRA=$(printf ' %q' "$@")
TRAIN="cd ~/avpretrain && nohup .venv/bin/avpretrain train --config=$(printf '%q' "$CONFIG") --workdir=$(printf '%q' "$WORKDIR")$EXTRA > ~/avpretrain.log 2>&1 &"
if [ -n "$WHEEL" ]; then  # the wheel holds configs/: --config=configs/... resolves in the installed project
  INSTALL="mkdir -p ~/avpretrain && cd ~/avpretrain && python3 -m venv .venv && gcloud storage cp $(printf '%q' "$WHEEL") . && .venv/bin/pip install -q \"\$(ls avpretrain-*.whl)[tpu]\""
else
  INSTALL="rm -rf ~/avpretrain && mkdir -p ~/avpretrain && tar xzf ~/avpretrain.tgz -C ~/avpretrain && cd ~/avpretrain && python3 -m venv .venv && .venv/bin/pip install -q '.[tpu]'"
fi

COMMANDS=()
if [ "$QUEUED" = 1 ]; then
  if [ "$SLICES" -gt 1 ]; then
    COMMANDS+=("gcloud compute tpus queued-resources create $TPU-qr --node-count $SLICES --node-prefix $TPU --accelerator-type $ACCEL --runtime-version $RUNTIME ${WHERE[*]}")
  else
    COMMANDS+=("gcloud compute tpus queued-resources create $TPU-qr --node-id $TPU --accelerator-type $ACCEL --runtime-version $RUNTIME ${WHERE[*]}")
  fi
  COMMANDS+=("# wait until 'gcloud compute tpus queued-resources describe $TPU-qr ${WHERE[*]}' says state: ACTIVE")
fi
[ -z "$WHEEL" ] && COMMANDS+=("git -C $(printf '%q' "$REPO") archive --format=tar.gz -o /tmp/avpretrain.tgz HEAD")
for node in "${NODES[@]}"; do
  [ -z "$WHEEL" ] && COMMANDS+=("gcloud compute tpus tpu-vm scp /tmp/avpretrain.tgz $node:~/avpretrain.tgz --worker=all ${WHERE[*]}")
  COMMANDS+=("gcloud compute tpus tpu-vm ssh $node --worker=all ${WHERE[*]} --command $(q "$INSTALL")")
done
for node in "${NODES[@]}"; do
  COMMANDS+=("gcloud compute tpus tpu-vm ssh $node --worker=all ${WHERE[*]} --command $(q "$TRAIN")")
done

if [ "$DRY" = 1 ]; then
  echo "# TPU VM ${NODES[*]}: $SLICES slice(s); every worker runs the same command"
  printf '%s\n' "${COMMANDS[@]}"
  exit 0
fi
command -v gcloud >/dev/null || { echo "error: gcloud not found (or use --dry-run)" >&2; exit 2; }
for c in "${COMMANDS[@]}"; do
  case "$c" in
    "# wait"*) echo "waiting for the queued resource $TPU-qr to become ACTIVE"
      until gcloud compute tpus queued-resources describe "$TPU-qr" "${WHERE[@]}" --format='value(state.state)' | grep -q ACTIVE; do sleep 30; done ;;
    *) echo "+ $c"; eval "$c" ;;
  esac
done
