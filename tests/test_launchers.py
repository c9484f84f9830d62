"""The pod launchers' dry runs (SLURM, Kubernetes JobSet, TPU VM) for a small and a large job: the
commands, scripts and manifests they would submit, parsed back (YAML, shell words)."""
import shlex
import subprocess

import pytest
import yaml

from helpers import REPO

MESH = "--config.mesh=(('data',-1),('fsdp',8),('tensor',1))"


def dry(script, *args, ok=True):
    r = subprocess.run(["bash", str(REPO / "launch" / script), "--dry-run", *args], capture_output=True, text=True)
    if ok:
        assert r.returncode == 0, r.stderr
    return r


def _train_argv(words):
    i = words.index("train")
    return words[i - 1:]


@pytest.mark.parametrize("nodes,gpus,per,tasks", [(1, 1, "node", 1), (64, 8, "gpu", 8)])
def test_slurm_renders_one_process_per_gpu_or_node(nodes, gpus, per, tasks):
    out = dry("slurm.sh", "--nodes", str(nodes), "--gpus-per-node", str(gpus), "--per", per, "--partition", "a3",
              "configs/m2d.py:size=base", "/shared/runs/m2d", "--config.data.dir=/shared/as", MESH).stdout
    sbatch = dict(line[len("#SBATCH --"):].split("=", 1) for line in out.splitlines() if line.startswith("#SBATCH --")
                  and "=" in line)
    assert sbatch["nodes"] == str(nodes) and sbatch["ntasks-per-node"] == str(tasks)
    assert sbatch["gpus-per-node"] == str(gpus) and sbatch["partition"] == "a3" and sbatch["signal"] == "TERM@120"
    assert ("gpus-per-task" in sbatch) == (per == "gpu")
    assert "#SBATCH --requeue" in out and out.rstrip().endswith("# command: sbatch <the script above>")
    srun = next(line for line in out.splitlines() if line.startswith("srun "))
    argv = _train_argv(shlex.split(srun))
    assert argv[0].endswith("avpretrain") and argv[1:] == [
        "train", "--config=configs/m2d.py:size=base", "--workdir=/shared/runs/m2d", "--config.data.dir=/shared/as", MESH]
    assert f"{nodes * tasks} JAX processes, {nodes * gpus} GPUs" in out


def _jobset(*args):
    manifest = yaml.safe_load("\n".join(l for l in dry("k8s_jobset.sh", "--image", "reg/avp:1", *args).stdout.splitlines()
                                        if not l.startswith("# command")))
    job = manifest["spec"]["replicatedJobs"][0]
    pod = job["template"]["spec"]["template"]["spec"]
    return manifest, job, pod, pod["containers"][0]


def test_jobset_for_a_small_and_a_large_tpu_slice_and_a_multislice():
    m, job, pod, c = _jobset("--tpu", "v5e:2x2", "--workdir", "/tmp/w", "configs/m2d.py:size=tiny,runlocal")
    assert m["kind"] == "JobSet" and m["apiVersion"] == "jobset.x-k8s.io/v1alpha2"
    assert job["replicas"] == 1 and job["template"]["spec"]["parallelism"] == 1
    assert c["resources"]["limits"] == {"google.com/tpu": 4}
    _, job, pod, c = _jobset("--tpu", "v5e:16x16", "--pvc", "runs", "--workdir", "/workdir/m2d",
                             "configs/m2d.py:size=base", "--config.data.dir=/workdir/as", MESH)
    spec = job["template"]["spec"]
    assert spec["parallelism"] == spec["completions"] == 64 and spec["completionMode"] == "Indexed"
    assert pod["nodeSelector"] == {"cloud.google.com/gke-tpu-accelerator": "tpu-v5-lite-podslice",
                                   "cloud.google.com/gke-tpu-topology": "16x16"}
    assert c["command"] == ["avpretrain", "train", "--config=configs/m2d.py:size=base", "--workdir=/workdir/m2d",
                            "--config.data.dir=/workdir/as", MESH]
    assert c["volumeMounts"] == [{"name": "workdir", "mountPath": "/workdir"}]
    assert pod["volumes"][0]["persistentVolumeClaim"] == {"claimName": "runs"}
    _, job, pod, c = _jobset("--tpu", "v5p:4x4x8", "--slices", "2", "--workdir", "/tmp/w", "configs/m2d.py:size=large")
    assert job["replicas"] == 2 and job["template"]["spec"]["parallelism"] == 32
    env = {e["name"]: e for e in c["env"]}
    assert env["MEGASCALE_NUM_SLICES"]["value"] == "2" and "job-index" in str(env["MEGASCALE_SLICE_ID"])


def test_jobset_for_gpus_names_the_coordinator_and_each_pods_index():
    _, job, pod, c = _jobset("--gpus", "8", "--nodes", "16", "--workdir", "/workdir/r", "--pvc", "shared",
                             "--name", "m2d", "configs/m2d.py:size=base")
    assert job["template"]["spec"]["parallelism"] == 16 and c["resources"]["limits"] == {"nvidia.com/gpu": 8}
    env = {e["name"]: e for e in c["env"]}
    assert env["AVP_COORDINATOR"]["value"] == "m2d-workers-0-0.m2d:8476" and env["AVP_NUM_PROCESSES"]["value"] == "16"
    assert "job-completion-index" in env["AVP_PROCESS_ID"]["valueFrom"]["fieldRef"]["fieldPath"]


@pytest.mark.parametrize("args,message", [
    (["--tpu", "v9:2x2", "--workdir", "/w"], "type must be v5e, v5p, v4 or v6e"),
    (["--tpu", "v5e:16x", "--workdir", "/w"], "topology like 16x16"),
    (["--tpu", "v5e:2x2", "--gpus", "8", "--workdir", "/w"], "--tpu or --gpus, not both"),
    (["--tpu", "v5e:2x2", "--pvc", "c", "--workdir", "/data/w"], "must lie under it"),
    (["--gpus", "8", "--workdir", "/w"], "--gpus needs --nodes"),
])
def test_jobset_refuses_bad_requests_with_exit_2(args, message):
    r = dry("k8s_jobset.sh", "--image", "i", *args, "configs/m2d.py", ok=False)
    assert r.returncode == 2 and message in r.stderr and not r.stdout


def _ssh_commands(out):
    """Each `gcloud … ssh NODE … --command C` line: (node, the remote command's shell words)."""
    found = []
    for line in out.splitlines():
        words = shlex.split(line) if line.startswith("gcloud") else []
        if "ssh" in words:
            found.append((words[words.index("ssh") + 1], shlex.split(words[words.index("--command") + 1])))
    return found


def test_tpu_vm_installs_and_starts_every_worker_of_a_slice_and_a_multislice():
    out = dry("tpu_vm.sh", "--tpu", "pod", "--zone", "us-west4-a", "--project", "p", "configs/m2d.py:size=base",
              "/mnt/runs/m2d", "--config.data.dir=/mnt/as", MESH).stdout
    assert "git -C" in out and "archive" in out and "tpu-vm scp /tmp/avpretrain.tgz pod:~/avpretrain.tgz --worker=all" in out
    (node, install), (_, train) = _ssh_commands(out)
    assert node == "pod" and ".venv/bin/pip" in install and ".[tpu]" in install
    argv = _train_argv(train)
    assert argv[1:6] == ["train", "--config=configs/m2d.py:size=base", "--workdir=/mnt/runs/m2d",
                         "--config.data.dir=/mnt/as", MESH]
    assert all("--worker=all" in l and "--zone us-west4-a --project p" in l for l in out.splitlines() if "tpu-vm" in l)
    out = dry("tpu_vm.sh", "--tpu", "ms", "--zone", "z", "--queued", "--accelerator", "v5litepod-256", "--runtime",
              "v2-alpha-tpuv5-lite", "--slices", "4", "--wheel", "gs://b/avpretrain-0.1.0-py3-none-any.whl",
              "configs/m2d.py:size=large", "/mnt/r").stdout
    assert "queued-resources create ms-qr --node-count 4 --node-prefix ms --accelerator-type v5litepod-256" in out
    ssh = _ssh_commands(out)
    assert [n for n, _ in ssh] == ["ms-0", "ms-1", "ms-2", "ms-3"] * 2 and "archive" not in out
    assert "gs://b/avpretrain-0.1.0-py3-none-any.whl" in " ".join(ssh[0][1])
    assert _train_argv(ssh[-1][1])[1:4] == ["train", "--config=configs/m2d.py:size=large", "--workdir=/mnt/r"]


def test_tpu_vm_refuses_incomplete_requests():
    r = dry("tpu_vm.sh", "--tpu", "x", "--zone", "z", "--slices", "2", "c", "w", ok=False)
    assert r.returncode == 2 and "--slices needs --queued" in r.stderr
    r = dry("tpu_vm.sh", "--tpu", "x", "--zone", "z", "--queued", "c", "w", ok=False)
    assert r.returncode == 2 and "--queued needs --accelerator" in r.stderr
    r = dry("slurm.sh", "--nodes", "two", "c", "w", ok=False)
    assert r.returncode == 2 and "positive integers" in r.stderr
