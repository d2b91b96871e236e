"""launch.sh: syntax, help, dry-run gcloud commands, required variables, and refusal of unknown arguments.

The tests that could reach the cloud put a fake ``gcloud`` (and ``git``) first on PATH, which records each
call to a file: a test asserts on that file, so a parsing bug shows up as a recorded call, not a real one.
"""

import os
import stat
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "launch.sh")
_LAUNCH_VARIABLES = (
    "TPU_NAME",
    "ZONE",
    "CONFIG",
    "WORKDIR",
    "RUN_ID",
    "ACCELERATOR_TYPE",
    "PROJECT",
    "DRY_RUN",
    "EXTRA_ARGS",
)
# Every variable any command needs, so that a missing one cannot hide what the arguments do.
_ALL_VARIABLES = {
    "TPU_NAME": "t",
    "ZONE": "z",
    "ACCELERATOR_TYPE": "v4-8",
    "CONFIG": "experiments/configs/paper.py:d=8",
    "WORKDIR": "gs://b/w",
}
COMMANDS = ("create", "setup", "run", "logs", "kill", "delete")


def _run(*args, **env):
    full_env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARIABLES}
    full_env.update(env)
    return subprocess.run(
        ["bash", SCRIPT, *args], check=False, capture_output=True, text=True, env=full_env, cwd=ROOT
    )


def test_syntax_and_help():
    assert subprocess.run(["bash", "-n", SCRIPT], check=False).returncode == 0
    out = _run("--help")
    assert out.returncode == 0 and "create | setup | run | logs" in out.stdout


def test_dry_run_prints_the_same_train_command_on_all_workers():
    env = {
        "TPU_NAME": "tgmm-v4",
        "ZONE": "us-central2-b",
        "CONFIG": "experiments/configs/paper.py:d=8",
        "WORKDIR": "gs://bucket/tgmm",
    }
    first = _run("--dry-run", "run", **env)
    again = _run("--dry-run", "run", **env)
    assert first.returncode == 0, first.stderr
    assert first.stdout == again.stdout  # a stable run id: rerunning resumes the same workdir
    line = first.stdout.splitlines()[0]
    assert line.startswith("gcloud compute tpus tpu-vm ssh tgmm-v4 --worker=all")
    assert (
        "experiments.train" in line
        and "gs://bucket/tgmm/paper-d-8" in line
        and "--zone=us-central2-b" in line
    )
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


@pytest.fixture
def fake_cloud(tmp_path):
    """(env with fake gcloud and git first on PATH, function returning the calls they recorded)."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls.txt"
    bin_dir.mkdir()
    for name in ("gcloud", "git"):
        fake = bin_dir / name
        fake.write_text(f'#!/usr/bin/env bash\necho "{name} $*" >> "{calls}"\n')
        fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = dict(_ALL_VARIABLES, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return env, lambda: calls.read_text().splitlines() if calls.exists() else []


def _dry_run_positions(cmd):
    """Every place --dry-run can go (and the DRY_RUN variable), with a worker argument for logs."""
    extra = ["3"] if cmd == "logs" else []
    words = [cmd, *extra]
    return [(words[:i] + ["--dry-run"] + words[i:], {}) for i in range(len(words) + 1)] + [
        (words, {"DRY_RUN": "1"})
    ]


@pytest.mark.parametrize("cmd", COMMANDS)
def test_dry_run_in_any_position_runs_nothing(cmd, fake_cloud):
    env, calls = fake_cloud
    for args, extra_env in _dry_run_positions(cmd):
        out = _run(*args, **env, **extra_env)
        assert out.returncode == 0, (args, out.stderr)
        assert "gcloud compute tpus tpu-vm" in out.stdout, args
        assert calls() == [], args


@pytest.mark.parametrize("cmd", COMMANDS)
def test_without_dry_run_the_fake_gcloud_is_called(cmd, fake_cloud):
    """The control for the test above: the fake does see a real run, so 'no calls' there means something."""
    env, calls = fake_cloud
    out = _run(cmd, **env)
    assert out.returncode == 0, out.stderr
    assert any(c.startswith("gcloud compute tpus tpu-vm") for c in calls())


@pytest.mark.parametrize("cmd", COMMANDS)
@pytest.mark.parametrize(
    "bad",
    [
        ["--dryrun"],  # a typo of the flag
        ["--dry_run"],
        ["-n"],
        ["--force"],
        ["extra"],  # a word no command takes
        ["--dry-run", "extra"],  # refused even when the flag is there too
    ],
)
def test_unknown_arguments_are_refused_before_any_call(cmd, bad, fake_cloud):
    env, calls = fake_cloud
    if cmd == "logs" and bad[-1] == "extra":
        bad = [*bad[:-1], "3", "extra"]  # logs takes one worker; a second word is the unknown one
    for args in ([cmd, *bad], [*bad, cmd]):
        out = _run(*args, **env)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert "launch.sh:" in out.stderr and out.stdout == "", args
        assert calls() == [], args


def test_unknown_commands_bad_workers_and_bad_dry_run_values_are_refused(fake_cloud):
    env, calls = fake_cloud
    for args, extra_env in [
        (["frobnicate"], {}),
        (["--dry-run", "crate"], {}),
        (["logs", "worker0"], {}),
        (["kill"], {"DRY_RUN": "yes"}),  # not 1: before, this ran for real
        (["delete"], {"DRY_RUN": "true"}),
    ]:
        out = _run(*args, **env, **extra_env)
        assert out.returncode == 2, (args, extra_env, out.stderr)
        assert "launch.sh:" in out.stderr, args
        assert calls() == [], args
    assert "unknown command 'crate'" in _run("--dry-run", "crate", **env).stderr


@pytest.mark.parametrize("cmd", COMMANDS)
def test_help_anywhere_only_prints_help(cmd, fake_cloud):
    env, calls = fake_cloud
    for args in ([cmd, "--help"], ["-h", cmd]):
        out = _run(*args, **env)
        assert out.returncode == 0 and "create | setup | run | logs" in out.stdout, args
        assert calls() == [], args
