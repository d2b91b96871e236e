"""Training with missing coordinates (issue 26): the mask read-in (ModelConfig.readin_mask), the masked training
batches (tgmm_jax.train.masked), the warm start that adds the mask projection, and the estimator telling a
mask-reading network its mask."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.test_train import _cluster_config, _lines
from tgmm_jax import estimator, imputation, pretrained, scoring
from tgmm_jax.estimator import TGMMEstimator
from tgmm_jax.models import make_model
from tgmm_jax.models.config import model_config
from tgmm_jax.models.normalize import mask_features
from tgmm_jax.tasks import TaskSpec, sample_tasks
from tgmm_jax.train import masked, sharding, train_and_evaluate
from tgmm_jax.train import state as state_lib
from tgmm_jax.train.config import TrainConfig
from tgmm_jax.train.restore import load_run

SPEC = TaskSpec(dim=4, ks=(2, 3), n_max=24, n_min=24)


def _model(readin_mask: bool):
    cfg = model_config(
        "tiny",
        backbone="set",
        readin="normalized",
        readout="cluster",
        slot_init="farthest",
        readin_mask=readin_mask,
    )
    return make_model(cfg, SPEC)


def _masked_tasks(rate=0.3, seed=0):
    task = sample_tasks(jax.random.key(seed), SPEC, 3)
    return task, masked.masked_batch(jax.random.key(seed + 1), task, rate)


def _with_random_mask_proj(params, seed=5, scale=1.0):
    proj = params["read_in"]["mask_proj"]["kernel"]
    kernel = scale * jax.random.normal(jax.random.key(seed), proj.shape)
    return {**params, "read_in": {**params["read_in"], "mask_proj": {"kernel": kernel}}}


def test_mask_features_closed_form():
    """share = missing fraction of the point; loading[r] = sum_d missing[d] basis[d, r]^2 (NumPy), 0 on padding."""
    rng = np.random.default_rng(0)
    observed = rng.random((2, 5, 4)) > 0.4
    point_mask = np.array([[True] * 5, [True, True, True, False, False]])
    basis, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    basis = np.stack([basis[:, :3], basis[:, 1:]])  # [2, D=4, R=3]
    got = np.asarray(
        mask_features(jnp.asarray(observed), jnp.asarray(point_mask), jnp.asarray(basis, jnp.float32))
    )
    missing = (~observed) & point_mask[..., None]
    want = np.concatenate(
        [missing.mean(-1, keepdims=True), np.einsum("bnd,bdr->bnr", missing.astype(float), basis**2)], -1
    )
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert np.all(got[1, 3:] == 0)


@pytest.mark.slow
def test_zero_mask_projection_answers_as_the_model_without_it():
    """A fresh mask read-in (zero projection) gives exactly the tokens, hence the outputs, of the same weights
    without it, on masked data too; observed=None equals every coordinate observed."""
    task, batch = _masked_tasks()
    with_mask, without = _model(True), _model(False)
    params = with_mask.init(jax.random.key(1), task.points, task.point_mask, task.num_components)["params"]
    plain = {**params, "read_in": {k: v for k, v in params["read_in"].items() if k != "mask_proj"}}
    t = batch.task
    a = with_mask.apply({"params": params}, t.points, t.point_mask, t.num_components, observed=batch.observed)
    b = without.apply({"params": plain}, t.points, t.point_mask, t.num_components)
    np.testing.assert_array_equal(np.asarray(a.means), np.asarray(b.means))
    np.testing.assert_array_equal(np.asarray(a.weight_logits), np.asarray(b.weight_logits))
    trained = _with_random_mask_proj(params)
    c = with_mask.apply({"params": trained}, t.points, t.point_mask, t.num_components)
    d = with_mask.apply(
        {"params": trained}, t.points, t.point_mask, t.num_components, observed=jnp.ones(t.points.shape, bool)
    )
    np.testing.assert_array_equal(np.asarray(c.means), np.asarray(d.means))


def test_the_mask_is_read_and_follows_point_order_and_translation():
    """With a non-zero projection the mask changes the answer; permuting the points (and their masks) permutes
    the responsibilities and keeps the mixture; translating the data translates the means."""
    task, batch = _masked_tasks(rate=0.4)
    model = _model(True)
    params = model.init(jax.random.key(1), task.points, task.point_mask, task.num_components)["params"]
    params = _with_random_mask_proj(params)
    t, observed = batch.task, batch.observed

    def run(points, obs):
        return model.apply({"params": params}, points, t.point_mask, t.num_components, observed=obs)

    base = run(t.points, observed)
    unmasked = run(t.points, jnp.ones_like(observed))
    assert not np.allclose(np.asarray(base.log_responsibilities), np.asarray(unmasked.log_responsibilities))
    perm = np.random.default_rng(0).permutation(t.points.shape[1])
    permuted = run(t.points[:, perm], observed[:, perm])
    np.testing.assert_allclose(np.asarray(permuted.means), np.asarray(base.means), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        np.asarray(permuted.log_responsibilities),
        np.asarray(base.log_responsibilities)[:, perm],
        rtol=1e-4,
        atol=1e-4,
    )
    shift = jnp.asarray([3.0, -2.0, 0.5, 7.0])[None, None, :]
    moved = run(t.points + shift, observed)
    real = np.asarray(base.component_mask)[..., None]
    want = np.where(real, np.asarray(base.means + shift), 0.0)
    np.testing.assert_allclose(np.asarray(moved.means), want, atol=2e-3)


def test_observed_errors_name_the_problem():
    task, batch = _masked_tasks()
    plain = _model(False)
    params = plain.init(jax.random.key(1), task.points, task.point_mask, task.num_components)["params"]
    with pytest.raises(ValueError, match="does not read missing-value masks"):
        plain.apply(
            {"params": params}, task.points, task.point_mask, task.num_components, observed=batch.observed
        )
    with_mask = _model(True)
    params = with_mask.init(jax.random.key(1), task.points, task.point_mask, task.num_components)["params"]
    with pytest.raises(ValueError, match=r"observed must be \[B, N, D\]"):
        with_mask.apply(
            {"params": params},
            task.points,
            task.point_mask,
            task.num_components,
            observed=batch.observed[:, :3],
        )
    with pytest.raises(ValueError, match="readin_mask needs readin='normalized'"):
        model_config("tiny", readin_mask=True)


def test_masked_batch_masks_at_the_drawn_rates_and_fills_as_the_estimator():
    """Per-task rates in [0, rate_max]; observed coordinates keep their values; missing ones hold the host
    nearest-neighbour fill (the estimator's); every point keeps a coordinate; truth and labels unchanged."""
    spec = TaskSpec(dim=8, ks=(2, 3), n_max=64, n_min=64)
    task = sample_tasks(jax.random.key(3), spec, 16)
    batch = jax.jit(masked.masked_batch, static_argnums=2)(jax.random.key(4), task, 0.5)
    rate, observed = np.asarray(batch.rate), np.asarray(batch.observed)
    assert np.all((rate >= 0) & (rate <= 0.5)) and rate.std() > 0.05
    missing_share = 1 - observed.mean(axis=(1, 2))
    assert abs(np.corrcoef(rate, missing_share)[0, 1]) > 0.9
    assert observed.any(axis=-1).all()
    points, filled = np.asarray(task.points), np.asarray(batch.task.points)
    np.testing.assert_array_equal(filled[observed], points[observed])
    for b in range(3):
        want = imputation.nearest_neighbour_impute(np.where(observed[b], points[b], np.nan))
        np.testing.assert_allclose(filled[b], want, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(batch.task.means), np.asarray(task.means))
    np.testing.assert_array_equal(np.asarray(batch.task.labels), np.asarray(task.labels))


def test_missing_rate_config_checks():
    base = TrainConfig.from_config(_cluster_config())
    for bad, match in (
        (dict(missing_rate_max=0.7), r"missing_rate_max must be a finite number in \[0.0, 0.5\]"),
        (dict(missing_rate_max=0.3, target_pool="runs/pool"), "cannot be combined"),
    ):
        with pytest.raises(ValueError, match=match):
            TrainConfig.from_dict({**base.to_dict(), **bad})
    one_d = base.to_dict()
    one_d["task"]["dim"] = 1
    with pytest.raises(ValueError, match="exceeds"):
        TrainConfig.from_dict({**one_d, "missing_rate_max": 0.2})


@pytest.mark.slow
def test_training_with_masks_warm_starts_adds_the_projection_and_resumes_exactly(tmp_path):
    """A mask model warm-started from a run without the projection starts from that run's parameters (the
    projection at 0), trains it, and a stop and resume gives the same run (masks come from the step key)."""
    source = str(tmp_path / "source")
    train_and_evaluate(_cluster_config(total_steps=2, checkpoint_every=2), source)
    mask_config = dict(missing_rate_max=0.5, total_steps=4, checkpoint_every=2, init_from=source, log_every=1)

    def config(**kw):
        c = _cluster_config(**{**mask_config, **kw})
        c.model.readin_mask = True
        return c

    full = str(tmp_path / "full")
    train_and_evaluate(config(), full)
    run = load_run(full)
    assert run.model_config.readin_mask and run.config.missing_rate_max == 0.5
    kernel = np.asarray(run.params["read_in"]["mask_proj"]["kernel"])
    assert np.abs(kernel).max() > 0  # trained away from its zero start
    for path, leaf in jax.tree_util.tree_leaves_with_path(load_run(source).params):
        assert "mask_proj" not in jax.tree_util.keystr(path)
    halves = str(tmp_path / "halves")
    train_and_evaluate(config(total_steps=2), halves)
    train_and_evaluate(config(), halves)
    assert _lines(halves) == _lines(full)
    other = _cluster_config(**{**mask_config, "model.width": 8})
    with pytest.raises(ValueError, match="init_from"):
        train_and_evaluate(other, str(tmp_path / "other"))


def test_warm_start_adds_only_zero_initialised_modules():
    """state.warm_started: a checkpoint without mask_proj is accepted by a mask model (mask_proj stays 0); a
    checkpoint missing another parameter is refused."""
    model = _model(True)
    mesh, tx = sharding.make_mesh(), optax.adam(1e-3)
    state = state_lib.create_train_state(jax.random.key(0), model, tx, SPEC, ("loss",), mesh)
    source = jax.tree.map(lambda x: x + 1.0, state.params)
    source = {**source, "read_in": {k: v for k, v in source["read_in"].items() if k != "mask_proj"}}
    warm = state_lib.warm_started(state, source, "src", tx, mesh)
    assert np.all(np.asarray(warm.params["read_in"]["mask_proj"]["kernel"]) == 0)
    np.testing.assert_array_equal(
        np.asarray(warm.params["read_in"]["proj"]["kernel"]), np.asarray(source["read_in"]["proj"]["kernel"])
    )
    broken = {**source, "read_in": {"task_embed": source["read_in"]["task_embed"]}}
    with pytest.raises(ValueError, match="another tree or shape"):
        state_lib.warm_started(state, broken, "src", tx, mesh)


@pytest.mark.slow
def test_estimator_tells_a_mask_reading_network_its_mask(tmp_path, monkeypatch):
    """The scoring wrapper passes ``observed`` to a mask model only; the estimator with missing='allow' on a
    mask-reading checkpoint answers differently once its projection is non-zero (the mask reached it), and
    the same as the zero-projection model on complete data."""
    task, batch = _masked_tasks(rate=0.4)
    model = _model(True)
    params = model.init(jax.random.key(1), task.points, task.point_mask, task.num_components)["params"]
    trained = _with_random_mask_proj(params, seed=9, scale=30.0)
    method = scoring.model_method(model)
    told, _ = method(trained, None, batch.task, observed=batch.observed)
    untold, _ = method(trained, None, batch.task)
    assert not np.allclose(np.asarray(told.means), np.asarray(untold.means))
    dirs = {}
    for name, p in (("zero", params), ("random", trained)):
        dirs[name] = pretrained.save_exported(str(tmp_path / name), model.config, SPEC, p)
    # no EM after the network: on separated clusters 5 steps reach the same fit from both starts
    monkeypatch.setattr(estimator, "MISSING_EM_STEPS", 0)
    x = np.asarray(batch.task.points[0], np.float64)
    x_missing = np.where(np.asarray(batch.observed[0]), x, np.nan)
    fits = {
        name: TGMMEstimator(2, checkpoint=d, missing="allow", noise_variance=1.0, random_state=0, em_steps=0)
        .fit(x_missing)
        .means_
        for name, d in dirs.items()
    }
    assert not np.allclose(fits["zero"], fits["random"])
    complete = {
        name: TGMMEstimator(2, checkpoint=d, noise_variance=1.0, random_state=0, em_steps=0).fit(x).means_
        for name, d in dirs.items()
    }
    np.testing.assert_allclose(complete["zero"], complete["random"], rtol=1e-5, atol=1e-5)
    assert os.path.isdir(dirs["zero"])
