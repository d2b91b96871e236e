"""The noise-conditioned clustering model (``ModelConfig.noise='conditioned'``): known or unknown noise
variance, spherical variances out, and exact equivariance to the data's units."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from baselines import get_baseline
from tgmm_jax.models import make_model, model_config
from tgmm_jax.models.cluster_readout import seeded_em
from tgmm_jax.tasks import TaskSpec, noise_variances, sample_tasks
from tgmm_jax.train.state import Objective, _loss_fn, in_noise_units

SPEC = TaskSpec(dim=3, ks=(2, 3), n_max=40, n_min=24)


def _config(**overrides):
    fields = dict(
        backbone="set",
        num_layers=1,
        width=32,
        num_heads=2,
        readin="normalized",
        readout="cluster",
        cluster_iters=2,
        slot_init="farthest+greedy",
        cluster_correction=True,
        noise="conditioned",
    )
    return model_config("tiny", **{**fields, **overrides})


@pytest.fixture(scope="module")
def setup():
    task = sample_tasks(jax.random.key(0), SPEC, 3)
    model = make_model(_config(), SPEC)
    params = model.init(jax.random.key(1), task.points, task.point_mask, task.num_components)["params"]
    # every parameter off its initialisation (the correction head starts at zero), so the learned path,
    # including the per-component log-variance move, changes the answer
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(2), len(leaves))
    params = jax.tree.unflatten(tree, [p + 0.2 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
    apply = jax.jit(
        lambda points, nv: model.apply(
            {"params": params}, points, task.point_mask, task.num_components, noise_variance=nv
        )
    )
    return task, apply


def _real(x, task):
    """The real components' rows of a [B, K, ...] array, flattened to [components, ...]."""
    mask = np.asarray(task.component_mask)
    return np.asarray(x)[mask]


@pytest.mark.parametrize("c", [1e-4, 1e-2, 7.0, 1e4])
@pytest.mark.parametrize("known", [False, True])
@pytest.mark.slow
def test_units_change_nothing_but_the_units(setup, c, known):
    task, apply = setup
    shift = jnp.asarray([3.0, -2.0, 0.5])
    base = apply(task.points, 1.0 if known else jnp.nan)
    out = apply((task.points + shift[None, None, :]) * c, c * c if known else jnp.nan)
    # means x c (after the shift), relative to the data's spread; scales x c; weights and labels unchanged
    expected_means = (_real(base.means, task) + np.asarray(shift)) * c
    spread = c * float(np.std(np.asarray(task.points)))
    np.testing.assert_allclose(_real(out.means, task), expected_means, rtol=0, atol=1e-3 * spread)
    np.testing.assert_allclose(_real(out.scales, task), c * _real(base.scales, task), rtol=1e-3)
    weights = jax.nn.softmax(out.weight_logits)
    np.testing.assert_allclose(weights, jax.nn.softmax(base.weight_logits), atol=1e-5)
    mask = np.asarray(task.point_mask)
    labels = np.argmax(np.asarray(out.log_responsibilities), -1)[mask]
    assert np.array_equal(labels, np.argmax(np.asarray(base.log_responsibilities), -1)[mask])


@pytest.mark.slow
def test_known_noise_is_used_and_unknown_is_estimated(setup):
    task, apply = setup
    known = apply(task.points, 2.5)
    assert np.allclose(_real(known.scales, task), np.sqrt(2.5))  # the known value, on every dimension
    unknown = _real(apply(task.points, jnp.nan).scales, task)
    assert np.all(np.isfinite(unknown)) and not np.allclose(unknown, unknown[0])  # per-component moves
    # unknown is the default
    np.testing.assert_array_equal(_real(apply(task.points, None).scales, task), unknown)


@pytest.mark.slow
def test_skeleton_estimates_the_noise_variance():
    """Far-apart clusters: the unknown-noise skeleton's variance equals the closed-form tied MLE given the true
    labels (every point's squared distance to its cluster's sample mean, over N D), and its means the sample
    means; a known variance equal to 1 gives today's unit-variance skeleton."""
    spec = TaskSpec(dim=4, ks=(3,), n_max=300, mean_range=(-60.0, 60.0))
    task = sample_tasks(jax.random.key(3), spec, 4)
    sigma = jnp.asarray([0.3, 1.0, 2.0, 5.0])
    points = task.means[jnp.arange(4)[:, None], task.labels] + sigma[:, None, None] * (
        task.points - task.means[jnp.arange(4)[:, None], task.labels]
    )
    kw = dict(slot_init="farthest+greedy", iters=3, rank=6)
    _, means, scales, _ = seeded_em(
        points, task.point_mask, task.component_mask, noise_var_B=jnp.full(4, jnp.nan), **kw
    )
    for b in range(4):
        real = np.asarray(task.point_mask[b])
        x, labels = np.asarray(points[b], np.float64)[real], np.asarray(task.labels[b])[real]
        centres = np.stack([x[labels == k].mean(0) for k in range(3)])
        mle = np.mean(np.sum((x - centres[labels]) ** 2, -1)) / 4
        assert np.sqrt(mle) == pytest.approx(float(scales[b, 0, 0]), rel=1e-4)
        assert np.allclose(scales[b], scales[b, 0, 0])  # spherical and tied
        order = np.argsort(np.asarray(means[b, :, 0]))
        np.testing.assert_allclose(np.asarray(means[b])[order], centres[np.argsort(centres[:, 0])], atol=1e-3)
    unit = seeded_em(task.points, task.point_mask, task.component_mask, **kw)
    known = seeded_em(task.points, task.point_mask, task.component_mask, noise_var_B=jnp.ones(4), **kw)
    np.testing.assert_allclose(known[1], unit[1], atol=1e-5)
    np.testing.assert_array_equal(known[2], 1.0)


@pytest.mark.slow
def test_noise_configuration_is_checked(setup):
    with pytest.raises(ValueError, match="noise='conditioned' needs readin='normalized'"):
        model_config("tiny", readout="cluster", noise="conditioned")
    with pytest.raises(ValueError, match="noise must be one of"):
        _config(noise="unknown")
    task, _ = setup
    unit = make_model(_config(noise="unit", cluster_correction=False), SPEC)
    params = unit.init(jax.random.key(0), task.points, task.point_mask, task.num_components)
    with pytest.raises(ValueError, match="takes no noise_variance"):
        unit.apply(params, task.points, task.point_mask, task.num_components, noise_variance=1.0)
    conditioned = make_model(_config(), SPEC)
    for bad in (0.0, -1.0, jnp.inf):
        with pytest.raises(ValueError, match="noise_variance must be positive and finite"):
            conditioned.init(
                jax.random.key(0), task.points, task.point_mask, task.num_components, noise_variance=bad
            )
    with pytest.raises(ValueError, match="noise_variance must be a scalar or"):
        conditioned.init(
            jax.random.key(0), task.points, task.point_mask, task.num_components, noise_variance=jnp.ones(2)
        )


@pytest.mark.slow
def test_training_sees_each_task_in_its_noise_units(setup):
    task, _ = setup
    c = jnp.asarray([5.0, 0.1, 2.0, 1.0, 30.0, 0.5])[:, None, None]
    scaled = task.replace(points=task.points * c, means=task.means * c, scales=task.scales * c)
    np.testing.assert_allclose(noise_variances(scaled), np.asarray(c)[:, 0, 0] ** 2, rtol=1e-6)
    unit, noise_variance = in_noise_units(scaled)
    np.testing.assert_allclose(unit.points, task.points, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(unit.means, task.means, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(unit.scales, 1.0, rtol=1e-6)
    assert np.array_equal(np.isnan(noise_variance), [False, True] * 3) and np.all(noise_variance[::2] == 1)
    # the loss a noise-conditioned model trains on is finite, and so are its gradients
    model = make_model(_config(), SPEC)
    params = model.init(jax.random.key(1), task.points, task.point_mask, task.num_components)["params"]
    (loss, terms), grads = jax.value_and_grad(
        _loss_fn(model, Objective("est_matched", resp_weight=1.0)), has_aux=True
    )(params, scaled)
    assert np.isfinite(loss) and "scales_mse" in terms
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


@pytest.mark.slow
def test_skeleton_baseline_with_unknown_noise_is_unit_free():
    task = sample_tasks(jax.random.key(5), SPEC, 4)
    fit = get_baseline("em_seeded", slot_init="farthest+greedy", noise="unknown")
    base, _ = fit(jax.random.key(0), task)
    c = 1e3
    scaled, _ = fit(jax.random.key(0), task.replace(points=task.points * c))
    mask = np.asarray(task.component_mask)
    np.testing.assert_allclose(
        np.asarray(scaled.means)[mask], c * np.asarray(base.means)[mask], rtol=1e-4, atol=1e-3
    )
    np.testing.assert_allclose(np.asarray(scaled.scales)[mask], c * np.asarray(base.scales)[mask], rtol=1e-4)
    np.testing.assert_allclose(scaled.weights, base.weights, atol=1e-5)
    with pytest.raises(ValueError, match="noise must be one of"):
        get_baseline("em_seeded", noise="known")
