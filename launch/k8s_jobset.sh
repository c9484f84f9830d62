#!/usr/bin/env bash
# A multi-host job on Kubernetes as a JobSet (jobset.x-k8s.io/v1alpha2): renders the manifest and
# applies it with kubectl (`--dry-run`: prints the manifest and the command, applies nothing).
#
#   launch/k8s_jobset.sh [--dry-run] --image IMAGE (--tpu TYPE:TOPOLOGY [--slices S] | --gpus G --nodes N)
#                        --workdir DIR [--pvc CLAIM] [--name NAME] CONFIG [train overrides...]
#
#   TPU (GKE TPU node pools): --tpu v5e:16x16 | v5p:4x4x8 | v4:2x2x4 | v6e:8x8; one pod per TPU VM host
#     (4 chips each; a topology of at most 8 chips is one host); GKE injects TPU_WORKER_HOSTNAMES and
#     jax.distributed.initialize() finds its peers. --slices S > 1: multislice, S replicated jobs.
#   GPU: --gpus G per pod (one process per pod driving G GPUs) on N pods; process 0's pod is the
#     coordinator, reached through the JobSet's headless service; each pod's index is its
#     job-completion index (AVP_COORDINATOR / AVP_NUM_PROCESSES / AVP_PROCESS_ID).
#   --workdir must be a path every pod sees: the volume of PersistentVolumeClaim --pvc (ReadWriteMany:
#     Filestore, a gcsfuse CSI volume, NFS) mounted at /workdir, or an image path for a smoke test.
#   The image: launch/Dockerfile (docker build -f launch/Dockerfile --build-arg EXTRA=tpu|cuda .).
set -euo pipefail
usage() {
  sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
DRY=0 IMAGE="" TPU="" SLICES=1 GPUS="" NODES="" WORKDIR="" PVC="" NAME=avpretrain
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1; shift ;;
    --image) IMAGE=$2; shift 2 ;;
    --tpu) TPU=$2; shift 2 ;;
    --slices) SLICES=$2; shift 2 ;;
    --gpus) GPUS=$2; shift 2 ;;
    --nodes) NODES=$2; shift 2 ;;
    --workdir) WORKDIR=$2; shift 2 ;;
    --pvc) PVC=$2; shift 2 ;;
    --name) NAME=$2; shift 2 ;;
    -h|--help) usage ;;
    --*) echo "error: unknown option $1" >&2; usage ;;
    *) break ;;
  esac
done
[ $# -ge 1 ] && [ -n "$IMAGE" ] && [ -n "$WORKDIR" ] || usage
if [ -n "$TPU" ] && [ -n "$GPUS" ]; then echo "error: --tpu or --gpus, not both" >&2; exit 2; fi
if [ -z "$TPU" ] && [ -z "$GPUS" ]; then echo "error: give --tpu TYPE:TOPOLOGY or --gpus G --nodes N" >&2; exit 2; fi
CONFIG=$1
shift
if [ -n "$PVC" ] && [ "${WORKDIR#/workdir}" = "$WORKDIR" ]; then
  echo "error: with --pvc the claim is mounted at /workdir: --workdir must lie under it (got $WORKDIR)" >&2; exit 2
fi
# Each training argument as one YAML flow-sequence item (JSON strings are valid YAML).
ARGS_YAML=$(python3 -c 'import json,sys; print(", ".join(json.dumps(a) for a in sys.argv[1:]))' \
  avpretrain train "--config=$CONFIG" "--workdir=$WORKDIR" "$@")

if [ -n "$TPU" ]; then
  TYPE=${TPU%%:*} TOPO=${TPU#*:}
  case "$TYPE" in
    v5e) ACCEL=tpu-v5-lite-podslice ;;
    v5p) ACCEL=tpu-v5p-slice ;;
    v4) ACCEL=tpu-v4-podslice ;;
    v6e) ACCEL=tpu-v6e-slice ;;
    *) echo "error: --tpu $TPU: type must be v5e, v5p, v4 or v6e" >&2; exit 2 ;;
  esac
  case "$TOPO" in ''|*[!0-9x]*|x*|*x|*xx*) echo "error: --tpu $TPU: topology like 16x16 or 4x4x8" >&2; exit 2 ;; esac
  CHIPS=$(( ${TOPO//x/*} ))
  if [ "$CHIPS" -le 8 ]; then PER_HOST=$CHIPS; else PER_HOST=4; fi
  if [ $(( CHIPS % PER_HOST )) -ne 0 ]; then echo "error: --tpu $TPU: $CHIPS chips are not whole hosts of $PER_HOST" >&2; exit 2; fi
  PODS=$(( CHIPS / PER_HOST )) REPLICAS=$SLICES
  SELECTOR="cloud.google.com/gke-tpu-accelerator: $ACCEL
                cloud.google.com/gke-tpu-topology: $TOPO"
  RESOURCE="google.com/tpu: $PER_HOST"
  ENV=""
  if [ "$SLICES" -gt 1 ]; then  # multislice over DCN: what XPK sets (the slices' coordinator is slice 0's first pod)
    ENV="
              - name: MEGASCALE_COORDINATOR_ADDRESS
                value: \"$NAME-workers-0-0.$NAME\"
              - name: MEGASCALE_NUM_SLICES
                value: \"$SLICES\"
              - name: MEGASCALE_SLICE_ID
                valueFrom:
                  fieldRef:
                    fieldPath: metadata.annotations['jobset.sigs.k8s.io/job-index']"
  fi
  WHAT="$SLICES slice(s) of TPU $TYPE $TOPO: $PODS pods x $PER_HOST chips each"
else
  [ "$SLICES" = 1 ] || { echo "error: --slices is for TPU multislice" >&2; exit 2; }
  [ -n "$NODES" ] || { echo "error: --gpus needs --nodes N (pods)" >&2; exit 2; }
  case "$GPUS$NODES" in *[!0-9]*) echo "error: --gpus and --nodes take positive integers" >&2; exit 2 ;; esac
  PODS=$NODES REPLICAS=1
  SELECTOR="cloud.google.com/gke-accelerator: \${GPU_TYPE:-nvidia-h100-80gb}"
  SELECTOR=$(eval echo "\"$SELECTOR\"")
  RESOURCE="nvidia.com/gpu: $GPUS"
  ENV="
              - name: AVP_COORDINATOR
                value: \"$NAME-workers-0-0.$NAME:8476\"
              - name: AVP_NUM_PROCESSES
                value: \"$NODES\"
              - name: AVP_PROCESS_ID
                valueFrom:
                  fieldRef:
                    fieldPath: metadata.annotations['batch.kubernetes.io/job-completion-index']"
  WHAT="$NODES pods x $GPUS GPUs"
fi
VOLUME_MOUNTS="" VOLUMES=""
if [ -n "$PVC" ]; then
  VOLUME_MOUNTS="
              volumeMounts:
              - name: workdir
                mountPath: /workdir"
  VOLUMES="
            volumes:
            - name: workdir
              persistentVolumeClaim:
                claimName: $PVC"
fi

MANIFEST=$(cat <<YAML
apiVersion: jobset.x-k8s.io/v1alpha2
kind: JobSet
metadata:
  name: $NAME
  annotations:
    alpha.jobset.sigs.k8s.io/exclusive-topology: cloud.google.com/gke-nodepool
spec:
  failurePolicy:
    maxRestarts: 3          # a lost pod restarts the whole set; training resumes from the workdir
  network:
    enableDNSHostnames: true
  replicatedJobs:
  - name: workers
    replicas: $REPLICAS
    template:
      spec:
        parallelism: $PODS
        completions: $PODS
        completionMode: Indexed
        backoffLimit: 0
        template:
          spec:
            restartPolicy: Never
            terminationGracePeriodSeconds: 120   # SIGTERM first: every process saves one checkpoint
            nodeSelector:
                $SELECTOR
            containers:
            - name: avpretrain
              image: $IMAGE
              command: [$ARGS_YAML]
              env:
              - name: OMP_NUM_THREADS
                value: "4"$ENV
              resources:
                limits:
                  $RESOURCE$VOLUME_MOUNTS$VOLUMES
YAML
)
if [ "$DRY" = 1 ]; then
  echo "# JobSet $NAME: $WHAT"
  printf '%s\n' "$MANIFEST"
  echo "# command: kubectl apply -f - <the manifest above>"
  exit 0
fi
command -v kubectl >/dev/null || { echo "error: kubectl not found (or use --dry-run)" >&2; exit 2; }
printf '%s\n' "$MANIFEST" | kubectl apply -f -
