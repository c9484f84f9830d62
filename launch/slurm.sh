#!/usr/bin/env bash
# A multi-node GPU job on SLURM: renders an sbatch script and submits it (`--dry-run`: prints the
# script and the sbatch command, submits nothing).
#
#   launch/slurm.sh [--dry-run] --nodes N [--gpus-per-node G] [--per gpu|node] [--partition P]
#                   [--time HH:MM:SS] [--account A] [--venv DIR] CONFIG WORKDIR [train overrides...]
#
# One process per GPU (--per gpu, the default: `srun` starts G tasks per node, each sees one GPU) or
# one per node (--per node: each process drives the node's G GPUs). jax.distributed.initialize()
# reads the coordinator, the process count and this process's index from SLURM's variables
# (avpretrain/sharding.py); WORKDIR must be on a filesystem every node sees (Lustre, NFS, GPFS):
# every process writes its shards of a checkpoint there. A job that is preempted or requeued
# resumes from WORKDIR's latest checkpoint (--requeue; every task gets SIGTERM 120 s before the time
# limit and the processes save one checkpoint at the same step).
set -euo pipefail
usage() {
  sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
DRY=0 NODES="" GPUS=8 PER=gpu PARTITION="" TIME="24:00:00" ACCOUNT="" VENV=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1; shift ;;
    --nodes) NODES=$2; shift 2 ;;
    --gpus-per-node) GPUS=$2; shift 2 ;;
    --per) PER=$2; shift 2 ;;
    --partition) PARTITION=$2; shift 2 ;;
    --time) TIME=$2; shift 2 ;;
    --account) ACCOUNT=$2; shift 2 ;;
    --venv) VENV=$2; shift 2 ;;
    -h|--help) usage ;;
    --*) echo "error: unknown option $1" >&2; usage ;;
    *) break ;;
  esac
done
[ $# -ge 2 ] && [ -n "$NODES" ] || usage
case "$NODES$GPUS" in *[!0-9]*) echo "error: --nodes and --gpus-per-node take positive integers, got '$NODES' '$GPUS'" >&2; exit 2 ;; esac
[ "$NODES" -ge 1 ] && [ "$GPUS" -ge 1 ] || { echo "error: --nodes and --gpus-per-node must be >= 1" >&2; exit 2; }
case "$PER" in gpu) TASKS=$GPUS ;; node) TASKS=1 ;; *) echo "error: --per gpu|node, got '$PER'" >&2; exit 2 ;; esac
CONFIG=$1 WORKDIR=$2
shift 2
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV=${VENV:-$REPO/.venv}
ARGS=$(printf ' %q' "$@")

SCRIPT=$(cat <<SBATCH
#!/usr/bin/env bash
#SBATCH --job-name=avpretrain
#SBATCH --nodes=$NODES
#SBATCH --ntasks-per-node=$TASKS
#SBATCH --gpus-per-node=$GPUS
$( [ "$PER" = gpu ] && echo "#SBATCH --gpus-per-task=1" )
#SBATCH --cpus-per-task=$(( 64 / TASKS > 0 ? 64 / TASKS : 1 ))
#SBATCH --time=$TIME
#SBATCH --signal=TERM@120
#SBATCH --exclusive
#SBATCH --requeue
#SBATCH --output=$WORKDIR/slurm-%j.out
$( [ -n "$PARTITION" ] && echo "#SBATCH --partition=$PARTITION" )
$( [ -n "$ACCOUNT" ] && echo "#SBATCH --account=$ACCOUNT" )
set -euo pipefail
mkdir -p $(printf '%q' "$WORKDIR")
# $NODES nodes x $TASKS processes = $(( NODES * TASKS )) JAX processes, $(( NODES * GPUS )) GPUs; the
# coordinator is the first node (jax.distributed.initialize() reads SLURM_*).
export OMP_NUM_THREADS=\${OMP_NUM_THREADS:-4}
export XLA_PYTHON_CLIENT_MEM_FRACTION=\${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
srun --kill-on-bad-exit=1 $(printf '%q' "$VENV/bin/avpretrain") train --config=$(printf '%q' "$CONFIG") --workdir=$(printf '%q' "$WORKDIR")$ARGS
SBATCH
)
SCRIPT=$(printf '%s\n' "$SCRIPT" | sed '/^$/d')

if [ "$DRY" = 1 ]; then
  echo "# sbatch script ($NODES nodes, $TASKS tasks per node, $GPUS GPUs per node):"
  printf '%s\n' "$SCRIPT"
  echo "# command: sbatch <the script above>"
  exit 0
fi
command -v sbatch >/dev/null || { echo "error: sbatch not found: run this on a SLURM login node (or use --dry-run)" >&2; exit 2; }
mkdir -p "$WORKDIR"  # SLURM opens the --output file there before the job starts
printf '%s\n' "$SCRIPT" | sbatch
