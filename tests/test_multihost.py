"""Multi-host for real: two processes on this machine train through ``jax.distributed`` (coordinator on
127.0.0.1, CPU collectives through gloo), the code path of a TPU pod. They must equal a one-process run step
for step, only process 0 may write the logs, and their orbax checkpoint must restore and resume in one process.
"""

import json
import os
import re
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tests import train_config
from tgmm_jax.train import train_and_evaluate
from tgmm_jax.train.restore import load_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

try:
    from jax._src.lib import _jax

    _HAS_GLOO = hasattr(_jax, "make_gloo_tcp_collectives")
except ImportError:
    _HAS_GLOO = False

# The two-process run trains _STEPS steps (checkpoints every 2) and accumulates over 2 micro-batches (each of
# its 2 devices splits its 4 tasks in two); one process resumes it to _TOTAL; the reference trains _TOTAL
# steps in one process, one device, no accumulation.
_STEPS, _TOTAL = 4, 6
_OVERRIDES = dict(log_every=1, eval_every=0, checkpoint_every=2)

# Two devices sum the batch mean and its gradient in another order (per-device partial sums, an all-reduce,
# and here two micro-batches) than one device: float32 rounding, ~1e-7 relative per step, which Adam's
# normalised updates carry into the next steps. 1e-4 as the 8-device test's 2e-4 over 12 steps; the first
# step's loss printed by process 0 (10.3753) matched test_train's golden one-process value to its 4 decimals.
_RTOL, _ATOL = 1e-4, 1e-6


def _config(**overrides):
    config = train_config.get_config()
    for name, value in {**_OVERRIDES, **overrides}.items():
        config[name] = value
    return config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_two_processes(workdir, logs):
    """Runs experiments/train.py as processes 0 and 1 of one run; returns each one's stdout."""
    port = _free_port()
    args = [f"--config.{name}={value}" for name, value in _OVERRIDES.items()]
    cmd = [
        sys.executable,
        "-m",
        "experiments.train",
        "--config=tests/train_config.py",
        f"--workdir={workdir}",
    ]
    cmd += args + [f"--config.total_steps={_STEPS}", "--config.grad_accum_steps=2"]
    procs, outs = [], []
    for i in range(2):
        env = dict(
            os.environ,
            JAX_PLATFORMS="cpu",
            JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
            JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",  # read by tgmm_jax.train.sharding (--distributed=auto)
            JAX_NUM_PROCESSES="2",
            JAX_PROCESS_ID=str(i),
        )
        env.pop("XLA_FLAGS", None)  # one CPU device per process
        outs.append(logs / f"process_{i}.log")
        with open(outs[-1], "w") as out:
            procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT))
    deadline = time.time() + 1200  # both finish in seconds on an idle machine: only a hang waits this out
    try:  # a process that fails leaves its peer waiting for it: stop both
        while time.time() < deadline and any(p.poll() is None for p in procs):
            if any(p.poll() not in (None, 0) for p in procs):
                break
            time.sleep(0.1)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    texts = [path.read_text() for path in outs]
    for i, p in enumerate(procs):
        assert p.returncode == 0, f"process {i} exited with {p.returncode}:\n{texts[i][-3000:]}"
    return texts


def _rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _assert_close_params(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=_RTOL, atol=1e-5)


@pytest.mark.skipif(
    not _HAS_GLOO, reason="this jaxlib has no gloo CPU collectives (make_gloo_tcp_collectives)"
)
@pytest.mark.subprocess
def test_two_processes_equal_one_and_their_checkpoint_resumes_in_one(tmp_path):
    workdir, reference = tmp_path / "two", tmp_path / "one"
    stdout = _train_two_processes(workdir, tmp_path)

    # Only process 0 writes: its progress lines, one metrics line per step, one start in environment.json.
    progress = [re.findall(r"step (\d+)/4 loss", text) for text in stdout]
    assert progress == [["1", "2", "3", "4"], []], stdout
    assert [r["step"] for r in _rows(workdir)] == [1, 2, 3, 4]
    (start,) = json.loads((workdir / "environment.json").read_text())
    assert (start["process_count"], start["device_count"]) == (2, 2)

    # The same losses as one process on one device, and the checkpoint restores there.
    train_and_evaluate(_config(total_steps=_TOTAL), str(reference))
    assert load_run(str(workdir)).step == _STEPS
    _assert_close_params(load_run(str(workdir)).params, load_run(str(reference), step=_STEPS).params)

    # ... and resumes there: steps 5 and 6 in one process continue the two-process run.
    train_and_evaluate(_config(total_steps=_TOTAL), str(workdir))
    two, one = _rows(workdir), _rows(reference)
    assert [r["step"] for r in two] == [r["step"] for r in one] == list(range(1, _TOTAL + 1))
    for a, b in zip(one, two):
        for name, value in a["train"].items():
            np.testing.assert_allclose(b["train"][name], value, rtol=_RTOL, atol=_ATOL, err_msg=name)
    assert [s["process_count"] for s in json.loads((workdir / "environment.json").read_text())] == [2, 1]
    _assert_close_params(load_run(str(workdir)).params, load_run(str(reference)).params)
