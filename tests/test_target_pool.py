"""Target pools (distillation training): the file round trip, the draw, the targets the loss uses, exact resume."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import train_config
from tgmm_jax.models import make_model
from tgmm_jax.tasks import TaskSpec, sample_tasks
from tgmm_jax.train import target_pool, train_and_evaluate
from tgmm_jax.train.config import TrainConfig, model_group
from tgmm_jax.train.restore import load_run
from tgmm_jax.train.state import Objective, _loss_fn, noise_told

SPEC = TaskSpec(dim=2, ks=(2, 3), n_max=8)


def _pool(directory, spec=SPEC, per_k=6, shift=0.5, responsibilities=False):
    """A pool whose targets are the true means moved by ``shift`` and equal weights; with ``responsibilities``
    also uniform soft labels over each task's real components."""
    task = sample_tasks(jax.random.key(3), spec, per_k)
    target_w = jnp.where(task.component_mask, 1.0 / task.num_components[:, None], 0.0)
    target_m = jnp.where(task.component_mask[..., None], task.means + shift, 0.0)
    resp = _uniform_labels(task) if responsibilities else None
    target_pool.save_pool(str(directory), task, target_w, target_m, spec.ks, target_responsibilities=resp)
    return task, target_w, target_m


def _uniform_labels(task):
    """[B, N, K]: 1/K over the real components of every real point, zero elsewhere."""
    real = task.point_mask[..., None] & task.component_mask[:, None, :]
    return jnp.where(real, 1.0 / task.num_components[:, None, None], 0.0)


def test_round_trip_and_draw_keeps_k_blocks(tmp_path):
    task, _, target_m = _pool(tmp_path)
    pool = target_pool.load_pool(str(tmp_path), SPEC)
    assert pool.per_k == 6 and pool.ks == (2, 3) and pool.dim == 2
    np.testing.assert_array_equal(np.asarray(pool.batch.task.points), np.asarray(task.points))
    drawn = target_pool.draw_batch(pool.batch, jax.random.key(0), 2, pool.per_k, 5)
    np.testing.assert_array_equal(np.asarray(drawn.task.num_components), [2] * 5 + [3] * 5)
    # every drawn task is a pool task of its K block, its target the one stored beside it
    points = np.asarray(task.points)
    for b in range(10):
        (index,) = np.flatnonzero((points == np.asarray(drawn.task.points[b])).all(axis=(1, 2)))
        assert (index < 6) == (b < 5)
        np.testing.assert_array_equal(np.asarray(drawn.target_means[b]), np.asarray(target_m[index]))


def test_load_names_a_spec_mismatch_and_a_missing_dimension(tmp_path):
    _pool(tmp_path)
    with pytest.raises(ValueError, match="N_max=8.*N_max=16"):
        target_pool.load_pool(str(tmp_path), TaskSpec(dim=2, ks=(2, 3), n_max=16))
    with pytest.raises(ValueError, match="no pool for d = 8"):
        target_pool.load_pool(str(tmp_path), TaskSpec(dim=8, ks=(2, 3), n_max=8))


def test_save_refuses_non_finite_targets(tmp_path):
    task = sample_tasks(jax.random.key(0), SPEC, 2)
    with pytest.raises(ValueError, match="target_means holds non-finite"):
        target_pool.save_pool(str(tmp_path), task, task.weights, task.means.at[0, 0, 0].set(jnp.nan), SPEC.ks)


def _conditioned_loss(resp_weight=0.0):
    """The training loss of a tiny noise-conditioned model at its initial parameters, as a function of the batch
    (with ``resp_weight`` > 0 also the responsibility term)."""
    config = model_group(
        "tiny",
        backbone="set",
        num_layers=1,
        width=16,
        num_heads=2,
        task_embed_dim=8,
        readin="normalized",
        readout="cluster",
        noise="conditioned",
    )
    model = make_model(TrainConfig.from_config(_train_config(model=config)).model, SPEC)
    dummy = sample_tasks(jax.random.key(0), SPEC, 1)
    params = model.init(jax.random.key(1), dummy.points, dummy.point_mask, dummy.num_components)["params"]
    return lambda b: float(_loss_fn(model, Objective("est_matched", resp_weight=resp_weight))(params, b)[0])


def _train_config(**overrides):
    c = train_config.get_config()
    for name, value in overrides.items():
        c[name] = value
    return c


@pytest.mark.slow
def test_loss_regresses_on_targets_only_where_the_noise_is_told(tmp_path):
    task, target_w, _ = _pool(tmp_path, shift=0.0)
    loss = _conditioned_loss()
    told_B = np.asarray(noise_told(task.points.shape[0]))
    assert told_B.tolist() == [True, False] * 6
    moved = task.means + 0.7
    as_truth = target_pool.PoolBatch(task, task.weights, task.means)
    assert loss(as_truth) == pytest.approx(loss(task), rel=1e-6)
    equal_weights = target_pool.PoolBatch(task, target_w, task.means)
    told_w = jnp.where(told_B[:, None], target_w, task.weights)
    assert loss(equal_weights) == pytest.approx(loss(task.replace(weights=told_w)), rel=1e-6)
    # targets moved on the tasks not told their noise: those keep their true parameters, the loss is unchanged
    odd_moved = jnp.where(
        told_B[:, None, None], task.means, jnp.where(task.component_mask[..., None], moved, 0.0)
    )
    assert loss(target_pool.PoolBatch(task, task.weights, odd_moved)) == pytest.approx(loss(task), rel=1e-6)
    # moved on the told ones: the loss is the plain loss of the tasks with those means as their parameters
    even_moved = jnp.where(
        told_B[:, None, None], jnp.where(task.component_mask[..., None], moved, 0.0), task.means
    )
    distilled = loss(target_pool.PoolBatch(task, task.weights, even_moved))
    assert distilled == pytest.approx(loss(task.replace(means=even_moved)), rel=1e-6)
    assert abs(distilled - loss(task)) > 1e-3


@pytest.mark.slow
def test_training_on_a_pool_resumes_exactly_and_uses_the_pool(tmp_path):
    _pool(tmp_path / "pool", per_k=8)
    config = dict(target_pool=str(tmp_path / "pool"), eval_every=0)
    straight, resumed, sampled = (str(tmp_path / n) for n in ("straight", "resumed", "sampled"))
    train_and_evaluate(_train_config(**config, total_steps=6), straight)
    train_and_evaluate(_train_config(**config, total_steps=3), resumed)
    train_and_evaluate(_train_config(**config, total_steps=6), resumed)
    train_and_evaluate(_train_config(eval_every=0, total_steps=6), sampled)
    a, b, c = (jax.tree.leaves(load_run(w).params) for w in (straight, resumed, sampled))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert any(not np.array_equal(np.asarray(x), np.asarray(z)) for x, z in zip(a, c, strict=True))


def _reversed_estimate():
    """(task, reverse_BxK, weights, means): an estimate in reversed order over the real components (as an
    estimate sorted its own way would be), slightly off; aligning must give back the task's order."""
    task = sample_tasks(jax.random.key(5), SPEC, 4)
    reverse_BxK = jnp.where(
        task.component_mask,
        task.num_components[:, None] - 1 - jnp.arange(3)[None, :],
        jnp.arange(3)[None, :],
    )
    take = jax.vmap(lambda a, i: a[i])
    return task, reverse_BxK, take(task.weights, reverse_BxK), take(task.means, reverse_BxK) + 0.01


def test_aligned_targets_put_each_estimate_beside_its_true_component():
    task, _, weights, means = _reversed_estimate()
    aligned_w, aligned_m = target_pool.aligned_targets(task, weights, means)
    np.testing.assert_allclose(np.asarray(aligned_m), np.asarray(task.means) + 0.01, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(aligned_w), np.asarray(task.weights))


def test_tasks_with_a_noise_scale_keep_it(tmp_path):
    spec = TaskSpec(dim=2, ks=(2, 3), n_max=8, noise_scale_range=(0.1, 10.0))
    task = sample_tasks(jax.random.key(2), spec, 3)
    target_pool.save_pool(str(tmp_path), task, task.weights, task.means, spec.ks)
    loaded = target_pool.load_pool(str(tmp_path), spec).batch.task
    np.testing.assert_array_equal(np.asarray(loaded.noise_scale), np.asarray(task.noise_scale))
    np.testing.assert_array_equal(np.asarray(loaded.scales), np.asarray(task.scales))


def test_responsibilities_round_trip_and_are_checked(tmp_path):
    task, _, _ = _pool(tmp_path / "with", responsibilities=True)
    pool = target_pool.load_pool(str(tmp_path / "with"), SPEC)
    np.testing.assert_allclose(
        np.asarray(pool.batch.target_responsibilities), np.asarray(_uniform_labels(task))
    )
    drawn = target_pool.draw_batch(pool.batch, jax.random.key(0), 2, pool.per_k, 3)
    assert drawn.target_responsibilities.shape == (6, SPEC.n_max, 3)
    _pool(tmp_path / "without")
    assert target_pool.load_pool(str(tmp_path / "without"), SPEC).batch.target_responsibilities is None
    # a file written by other means with soft labels of the wrong shape is refused on loading
    path = target_pool.pool_path(str(tmp_path / "with"), SPEC.dim)
    with np.load(path) as f:
        arrays = {name: f[name] for name in f.files}
    arrays["target_responsibilities"] = arrays["target_responsibilities"][:, :, :2]
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match="not the tasks' \\[P, N, K\\]"):
        target_pool.load_pool(str(tmp_path / "with"), SPEC)
    good = np.asarray(_uniform_labels(task))
    bad_rows = good.copy()
    bad_rows[0, 0, 0] += 0.5
    padded = good.copy()
    padded[np.asarray(task.num_components) == 2, 0, 2] = 0.1  # a padded component (K = 2 of K_max = 3)
    for bad, match in (
        (bad_rows, "does not sum to 1"),
        (padded, "not zero on padded"),
        (good[:, :-1], "shape"),
    ):
        with pytest.raises(ValueError, match=match):
            target_pool.save_pool(
                str(tmp_path / "bad"), task, task.weights, task.means, SPEC.ks, target_responsibilities=bad
            )


def test_soft_labels_replace_the_labels_only_where_the_targets_are_used():
    task = sample_tasks(jax.random.key(4), SPEC, 2)
    uniform = _uniform_labels(task)
    batch = target_pool.PoolBatch(task, task.weights, task.means, uniform)
    use_B = jnp.asarray([True, False, True, False])
    labels = np.asarray(target_pool.soft_labels(batch, use_B))
    np.testing.assert_allclose(labels[[0, 2]], np.asarray(uniform)[[0, 2]])
    onehot = np.eye(3)[np.asarray(task.labels)] * np.asarray(task.point_mask)[..., None]
    np.testing.assert_array_equal(labels[[1, 3]], onehot[[1, 3]])
    assert target_pool.soft_labels(target_pool.PoolBatch(task, task.weights, task.means), use_B) is None


def test_aligned_targets_permute_the_responsibilities_with_the_means():
    task, reverse_BxK, weights, means = _reversed_estimate()
    onehot = jax.nn.one_hot(task.labels, 3) * task.point_mask[..., None]
    reversed_resp = jax.vmap(lambda r, i: r[:, i])(onehot, reverse_BxK)  # columns in the estimate's order
    _, aligned_m, aligned_r = target_pool.aligned_targets(task, weights, means, reversed_resp)
    np.testing.assert_allclose(np.asarray(aligned_m), np.asarray(task.means) + 0.01, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(aligned_r), np.asarray(onehot))


@pytest.mark.slow
def test_a_pool_with_responsibilities_trains_on_them_and_needs_a_responsibility_term(tmp_path):
    task, _, _ = _pool(tmp_path / "pool", per_k=8, shift=0.0, responsibilities=True)
    loss = _conditioned_loss()
    told_B = noise_told(task.points.shape[0])
    plain = target_pool.PoolBatch(task, task.weights, task.means)
    soft = target_pool.PoolBatch(task, task.weights, task.means, _uniform_labels(task))
    onehot = jax.nn.one_hot(task.labels, 3) * task.point_mask[..., None]
    as_labels = target_pool.PoolBatch(task, task.weights, task.means, onehot)
    resp_loss = _conditioned_loss(resp_weight=1.0)
    assert resp_loss(as_labels) == pytest.approx(resp_loss(plain), rel=1e-6)
    assert abs(resp_loss(soft) - resp_loss(plain)) > 1e-3
    # soft labels on the tasks not told their noise are not used (those keep their true labels)
    untold_soft = jnp.where(told_B[:, None, None], onehot, _uniform_labels(task))
    untold = target_pool.PoolBatch(task, task.weights, task.means, untold_soft)
    assert resp_loss(untold) == pytest.approx(resp_loss(plain), rel=1e-6)
    # without a responsibility term the soft labels change nothing ...
    assert loss(soft) == pytest.approx(loss(plain), rel=1e-6)
    # ... so training refuses such a pool then
    cluster = model_group(
        "tiny", backbone="set", num_layers=1, width=16, num_heads=2, task_embed_dim=8, readout="cluster"
    )
    config = dict(target_pool=str(tmp_path / "pool"), eval_every=0, total_steps=2, model=cluster)
    with pytest.raises(ValueError, match="holds responsibilities"):
        train_and_evaluate(_train_config(**config, resp_weight=0.0), str(tmp_path / "refused"))
    train_and_evaluate(_train_config(**config, resp_weight=1.0), str(tmp_path / "trained"))
    assert load_run(str(tmp_path / "trained")).step == 2
