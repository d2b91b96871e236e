"""launch.sh: syntax, help, dry-run gcloud commands, and required variables."""

import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "launch.sh")


def _run(*args, **env):
    full_env = {k: v for k, v in os.environ.items() if k not in ("TPU_NAME", "ZONE", "CONFIG", "WORKDIR", "RUN_ID")}
    full_env.update(env)
    return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, env=full_env, cwd=ROOT)


def test_syntax_and_help():
    assert subprocess.run(["bash", "-n", SCRIPT]).returncode == 0
    out = _run("--help")
    assert out.returncode == 0 and "create | setup | run | logs" in out.stdout


def test_dry_run_prints_the_same_train_command_on_all_workers():
    env = dict(TPU_NAME="tgmm-v4", ZONE="us-central2-b", CONFIG="experiments/configs/paper.py:d=8",
               WORKDIR="gs://bucket/tgmm")
    first = _run("--dry-run", "run", **env)
    again = _run("--dry-run", "run", **env)
    assert first.returncode == 0, first.stderr
    assert first.stdout == again.stdout  # a stable run id: rerunning resumes the same workdir
    line = first.stdout.splitlines()[0]
    assert line.startswith("gcloud compute tpus tpu-vm ssh tgmm-v4 --worker=all")
    assert "experiments.train" in line and "gs://bucket/tgmm/paper-d-8" in line and "--zone=us-central2-b" in line
    create = _run("--dry-run", "create", TPU_NAME="t", ZONE="z", ACCELERATOR_TYPE="v4-32")
    assert "tpus tpu-vm create t --accelerator-type=v4-32" in create.stdout
    for cmd in ("kill", "delete"):
        assert "gcloud compute tpus tpu-vm" in _run("--dry-run", cmd, TPU_NAME="t", ZONE="z").stdout


def test_missing_variables_fail_with_their_names():
    out = _run("--dry-run", "run", ZONE="z", CONFIG="c.py", WORKDIR="/w")
    assert out.returncode != 0 and "TPU_NAME" in out.stderr
    out = _run("--dry-run", "run", TPU_NAME="t", ZONE="z", CONFIG="c.py")
    assert out.returncode != 0 and "WORKDIR" in out.stderr
    out = _run("--dry-run", "create", TPU_NAME="t", ZONE="z")
    assert out.returncode != 0 and "ACCELERATOR_TYPE" in out.stderr
    assert _run("frobnicate").returncode == 2
