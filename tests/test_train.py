"""Trainer: end to end, exact resume (also after SIGKILL), 8 devices == 1 device, clear errors."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tests import train_config
from tgmm_jax.train import checkpoint, train_and_evaluate
from tgmm_jax.train.restore import load_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(**overrides):
    c = train_config.get_config()
    for name, value in overrides.items():
        target = c
        *path, leaf = name.split(".")
        for p in path:
            target = target[p]
        target[leaf] = value
    return c


def _lines(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    for row in rows:
        row.pop("steps_per_sec", None)  # wall-clock: the only field allowed to differ
    return rows


def _assert_same_params(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """Uninterrupted 12-step run."""
    workdir = str(tmp_path_factory.mktemp("reference"))
    train_and_evaluate(_config(), workdir)
    return workdir


@pytest.mark.slow
def test_end_to_end_writes_config_metrics_checkpoints(reference_run):
    files = set(os.listdir(reference_run))
    assert {"config.json", "metrics.jsonl", "checkpoints"} <= files
    steps = sorted(int(s) for s in os.listdir(os.path.join(reference_run, "checkpoints")) if s.isdigit())
    assert steps == [10, 12]  # every 5 steps, keep the last 2, plus the final step
    rows = _lines(reference_run)
    assert [r["step"] for r in rows if "train" in r] == [2, 4, 6, 8, 10, 12]
    assert [r["step"] for r in rows if "eval" in r] == [6, 12]
    first = rows[0]["train"]
    assert {"loss", "grad_norm", "means_mse"} <= set(first) and np.isfinite(first["loss"])
    assert "tgmm/K=3/l2" in rows[-1]["eval"]
    with open(os.path.join(reference_run, "config.json")) as f:
        assert json.load(f)["objective"] == "est_matched"
    run = load_run(reference_run)
    assert run.step == 12 and run.spec.ks == (2, 3)


@pytest.mark.slow
def test_resume_equals_uninterrupted(reference_run, tmp_path):
    workdir = str(tmp_path)
    # A planned stop at step 6 (checkpoints 5 and 6), then the same command with the full budget resumes.
    # (The SIGKILL test below covers stops in the middle of a logging window.)
    train_and_evaluate(_config(total_steps=6), workdir)
    train_and_evaluate(_config(), workdir)
    assert _lines(workdir) == _lines(reference_run)
    _assert_same_params(load_run(workdir).params, load_run(reference_run).params)


@pytest.mark.subprocess
@pytest.mark.slow
def test_resume_after_sigkill_is_exact(tmp_path):
    workdir = str(tmp_path / "killed")
    cmd = [
        sys.executable,
        "-m",
        "experiments.train",
        "--config=tests/train_config.py",
        f"--workdir={workdir}",
        "--config.checkpoint_every=3",
        "--config.eval_every=0",
    ]
    proc = subprocess.Popen(
        cmd + ["--config.total_steps=1000000"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    ckpt_dir = os.path.join(workdir, "checkpoints")
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if os.path.isdir(ckpt_dir) and any(s.isdigit() and int(s) >= 6 for s in os.listdir(ckpt_dir)):
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with checkpoint.Checkpoints(ckpt_dir, read_only=True) as ckpts:
        killed_at = ckpts.latest_step()
    assert killed_at is not None and killed_at >= 3
    total = killed_at + 7
    subprocess.run(cmd + [f"--config.total_steps={total}"], cwd=ROOT, check=True, capture_output=True)
    reference = str(tmp_path / "reference")
    train_and_evaluate(_config(total_steps=total, checkpoint_every=3, eval_every=0), reference)
    assert _lines(workdir) == _lines(reference)
    _assert_same_params(load_run(workdir).params, load_run(reference).params)


_EIGHT_DEVICES = r"""
import json, sys
import jax
from tests import train_config
from tgmm_jax.train import sharding, state as state_lib, train_and_evaluate
from tgmm_jax.train.config import validate_config
assert jax.device_count() == 8, jax.devices()
config = train_config.get_config()
spec, _ = validate_config(config)
mesh = sharding.make_mesh()
batch = jax.jit(lambda k: state_lib.sample_global_batch(k, spec, config.tasks_per_k, mesh))(jax.random.key(0))
shards = [s.data.shape for s in batch.points.addressable_shards]
try:
    bad = train_config.get_config(); bad.tasks_per_k = 3
    train_and_evaluate(bad, sys.argv[1] + "_bad")
    error = None
except ValueError as e:
    error = str(e)
train_and_evaluate(config, sys.argv[1])

# The CPU attention loop over chunks of a batch sharded over the 8 devices: each chunk takes tasks of every
# device, so the compiled gradient has no collective, and it equals the autodiff of the plain core.
import re
import jax.numpy as jnp
from tgmm_jax.models import gpt2
gpt2._CHUNK_SCORES = 2 * 8 * 8  # one task of 2 heads x 8 x 8 scores per device and chunk
q, k, v = (jax.random.normal(jax.random.key(i), (16, 2, 8, 4)) for i in range(3))
mask = jnp.arange(8)[None, :] < jnp.arange(16)[:, None] % 8 + 1
q, k, v, mask = (jax.device_put(x, sharding.batch_sharded(mesh)) for x in (q, k, v, mask))
def grads(core):
    return jax.jit(jax.grad(lambda q, k, v: jnp.sum(core(q, k, v, mask, False) ** 2), argnums=(0, 1, 2)))
hlo = grads(gpt2.attention).lower(q, k, v).compile().as_text()
err = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(grads(gpt2.attention)(q, k, v), grads(gpt2.plain_attention)(q, k, v)))
attention = {
    "chunks": gpt2.attention_chunks(16, 2, 8),
    "collectives": len(re.findall(r" (all-gather|all-to-all|collective-permute|all-reduce)[-a-z]*\(", hlo)),
    "max_grad_error": err,
}
print(json.dumps({"shards": shards, "devices": len(batch.points.sharding.device_set), "error": error, "attention": attention}))
"""


@pytest.mark.subprocess
@pytest.mark.slow
def test_eight_devices_match_one_device(reference_run, tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-c", _EIGHT_DEVICES, str(tmp_path / "w8")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["devices"] == 8 and report["shards"] == [[1, 8, 2]] * 8  # 8 tasks, one per device
    assert "divide by the 8 devices" in report["error"]
    assert report["attention"]["chunks"] == 2 and report["attention"]["collectives"] == 0, report["attention"]
    assert report["attention"]["max_grad_error"] < 1e-5
    one, eight = _lines(reference_run), _lines(str(tmp_path / "w8"))
    assert [r["step"] for r in one] == [r["step"] for r in eight]
    for a, b in zip(one, eight):
        for name, value in a.get("train", {}).items():
            np.testing.assert_allclose(b["train"][name], value, rtol=2e-4, atol=1e-6, err_msg=name)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"total_steps": 0}, "total_steps"),
        ({"objective": "mle"}, "objective"),
        ({"optim.learning_rate": -1.0}, "optim.learning_rate"),
        ({"optim.schedule": "linear"}, "optim.schedule"),
        ({"task.n_max": 1}, "config.task"),
        ({"model.backbone": "lstm"}, "config.model"),
        ({"eval.baselines": ("em", "nope")}, "eval.baselines"),
    ],
)
def test_bad_config_values_are_named(overrides, message, tmp_path):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        train_and_evaluate(_config(**overrides), str(tmp_path))


def test_unknown_config_field_is_named(tmp_path):
    c = _config()
    c.learning_rate = 1e-3  # a top-level typo of optim.learning_rate
    with pytest.raises(ValueError, match="learning_rate"):
        train_and_evaluate(c, str(tmp_path))


@pytest.mark.subprocess
@pytest.mark.slow
def test_unknown_field_on_command_line_fails(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.train",
            "--config=tests/train_config.py",
            f"--workdir={tmp_path}",
            "--config.optim.lr=0.1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode != 0 and "lr" in out.stderr


@pytest.mark.slow
def test_corrupt_or_missing_checkpoints_give_clear_errors(reference_run, tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="does not exist"):
        load_run(str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    (empty / "checkpoints").mkdir(parents=True)
    with pytest.raises(checkpoint.CheckpointError, match="no finished checkpoint"):
        load_run(str(empty))
    # truncate every array file of the latest step
    import shutil

    corrupt = tmp_path / "corrupt"
    shutil.copytree(reference_run, corrupt)
    state_dir = corrupt / "checkpoints" / "12" / "state"
    for root, _, files in os.walk(state_dir):
        for name in files:
            if not name.startswith("_") and "metadata" not in name:
                with open(os.path.join(root, name), "wb") as f:
                    f.write(b"garbage")
    with (
        _orbax_stray_reads_swallowed(),
        pytest.raises(checkpoint.CheckpointError, match="cannot restore step 12"),
    ):
        load_run(str(corrupt))


@contextlib.contextmanager
def _orbax_stray_reads_swallowed(quiet_s=0.5, timeout_s=10.0):
    """A failed orbax restore leaves tensorstore reads running; each one that finishes later posts to the closed
    asyncio loop and reports 'Event loop is closed' as an unraisable exception from its thread: pages of
    tracebacks in the summary of a passing run. Swallow exactly those until the reads have drained."""
    previous, seen = sys.unraisablehook, []

    def hook(unraisable):
        if (
            isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == "Event loop is closed"
        ):
            seen.append(time.monotonic())
        else:
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
        start = time.monotonic()
        while time.monotonic() - max([start, *seen]) < quiet_s and time.monotonic() - start < timeout_s:
            time.sleep(0.05)
    finally:
        sys.unraisablehook = previous


@pytest.mark.slow
def test_different_config_in_workdir_is_refused(reference_run):
    with pytest.raises(ValueError, match="different config"):
        train_and_evaluate(_config(seed=99), reference_run)


# Produced once at commit fdeec3c, on CPU, by building the trainer's state and
# step from this config and printing the step-1 metric sums (float(sums["loss"]), float(sums["grad_norm"])):
# the first step of tests/train_config.py. The trainer logs the same values for a one-step window.
_GOLDEN_LOSS = 10.375337600708008
_GOLDEN_GRAD_NORM = 4.57652473449707


@pytest.mark.slow
def test_golden_first_step_loss(tmp_path):
    """An accidental change to the model, its init, the loss or the sampler changes these numbers."""
    train_and_evaluate(_config(total_steps=1, log_every=1, eval_every=0), str(tmp_path))
    (first,) = [row["train"] for row in _lines(str(tmp_path)) if "train" in row]
    np.testing.assert_allclose(first["loss"], _GOLDEN_LOSS, rtol=1e-5)
    np.testing.assert_allclose(first["grad_norm"], _GOLDEN_GRAD_NORM, rtol=1e-5)


def _cluster_config(**overrides):
    c = _config(eval_every=0, resp_weight=0.5, **overrides)
    for name, value in dict(readin="normalized", readout="cluster", project_rank=3, cluster_iters=1).items():
        c.model[name] = value
    return c


@pytest.mark.slow
def test_mixed_dimension_training_of_the_clustering_model(tmp_path):
    """train_dims: one parameter set trained on d = 2 and d = 5 in turn, with the responsibility loss logged;
    the trained model then applies at a third d."""
    train_and_evaluate(_cluster_config(total_steps=4, checkpoint_every=4, train_dims=(2, 5)), str(tmp_path))
    rows = [r for r in _lines(str(tmp_path)) if "train" in r]
    assert rows and all(np.isfinite(r["train"]["resp_ce"]) and r["train"]["resp_ce"] > 0 for r in rows)
    run = load_run(str(tmp_path))
    points = np.random.default_rng(0).normal(size=(2, 8, 7)).astype(np.float32)
    out = run.model.apply({"params": run.params}, points, np.ones((2, 8), bool), np.array([2, 3]))
    assert out.means.shape == (2, 3, 7) and np.all(np.isfinite(np.asarray(out.means)))


@pytest.mark.slow
def test_train_dims_picks_the_dimension_of_each_step(tmp_path):
    """Step t samples at train_dims[(t - 1) % len]: (2, 2) equals the default (task.dim = 2), (2, 5) differs."""
    params = {}
    for name, dims in (("default", ()), ("same", (2, 2)), ("mixed", (2, 5))):
        train_and_evaluate(
            _cluster_config(total_steps=2, checkpoint_every=2, train_dims=dims), str(tmp_path / name)
        )
        params[name] = jax.tree.leaves(load_run(str(tmp_path / name)).params)
    assert all(np.array_equal(a, b) for a, b in zip(params["default"], params["same"]))
    assert any(not np.allclose(a, b) for a, b in zip(params["same"], params["mixed"]))


@pytest.mark.slow
def test_init_from_starts_step_zero_from_another_runs_parameters(reference_run, tmp_path, capsys):
    """init_from: the new run's step-0 parameters are the source run's (its first logged loss equals the source's
    loss on the same batch, not a fresh init's), with a fresh optimizer; a resume ignores init_from; a model of
    another shape is refused by name."""
    source = load_run(reference_run)
    warm = str(tmp_path / "warm")
    train_and_evaluate(_config(init_from=reference_run, total_steps=1, log_every=1, eval_every=0), warm)
    cold = str(tmp_path / "cold")
    train_and_evaluate(_config(total_steps=1, log_every=1, eval_every=0), cold)
    assert f"step 0 starts from the parameters of {reference_run}" in capsys.readouterr().out
    warm_loss = _lines(warm)[-1]["train"]["loss"]
    cold_loss = _lines(cold)[-1]["train"]["loss"]
    # the reference run trained 12 steps: its parameters fit the same first batch better than a fresh init
    assert warm_loss < cold_loss
    moved = [
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        for a, b in zip(jax.tree.leaves(load_run(warm).params), jax.tree.leaves(source.params), strict=True)
    ]
    assert 0 < max(moved) < 0.05  # one Adam step (lr 1e-3 per coordinate) away from the source
    from experiments.export_pretrained import model_card

    card = model_card("warm", load_run(warm), warm, None, None)
    assert f"started from the parameters of `{reference_run}`" in card
    train_and_evaluate(_config(init_from=reference_run, total_steps=2, log_every=1, eval_every=0), warm)
    assert load_run(warm).step == 2  # resumed from its own step 1
    with pytest.raises(ValueError, match="init_from"):
        train_and_evaluate(
            _config(init_from=reference_run, **{"model.width": 32}, total_steps=1, eval_every=0),
            str(tmp_path / "other"),
        )


def test_metrics_file_is_never_left_truncated(tmp_path, monkeypatch):
    """A run killed while writing metrics.jsonl (here: the write fails half-way) leaves the earlier lines, which
    a resume reads back as the history (the file is written aside and renamed over the old one)."""
    from etils import epath

    from tgmm_jax.train.writer import MetricWriter

    writer = MetricWriter(str(tmp_path), tensorboard=False)
    writer.write(2, {"train": {"loss": 1.0}})
    real_write = epath.Path.write_text

    def dies_half_way(self, text, *args, **kwargs):
        real_write(self, text[: len(text) // 3], *args, **kwargs)  # a cut inside the first line
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(epath.Path, "write_text", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        writer.write(4, {"train": {"loss": 0.5}})
    monkeypatch.undo()
    resumed = MetricWriter(str(tmp_path), tensorboard=False)
    assert [json.loads(line)["step"] for line in resumed._lines] == [2]
