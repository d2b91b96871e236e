"""Sampler statistics, determinism, jit/vmap equivalence and spec validation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from tgmm_jax.tasks import TaskSpec, acceptance_rate, sample_phase_transition_tasks, sample_task, sample_tasks


def _np(task):
    return jax.tree.map(np.asarray, task)


@pytest.fixture(scope="module")
def iso_task():
    return _np(sample_tasks(jax.random.key(0), TaskSpec(dim=3, n_max=64), 200))


@pytest.mark.slow
def test_shapes_and_stratification(iso_task):
    t = iso_task
    assert t.points.shape == (800, 64, 3)
    assert t.weights.shape == (800, 5) and t.means.shape == (800, 5, 3) and t.scales.shape == (800, 5, 3)
    assert t.point_mask.dtype == bool and t.component_mask.dtype == bool
    # tasks_per_k tasks of each K, in ks order
    np.testing.assert_array_equal(t.num_components, np.repeat([2, 3, 4, 5], 200))
    np.testing.assert_array_equal(t.component_mask.sum(-1), t.num_components)


@pytest.mark.slow
def test_weights_in_range_sorted_and_padded(iso_task):
    t = iso_task
    for b in range(t.weights.shape[0]):
        k = t.num_components[b]
        w = t.weights[b, :k]
        assert np.all(np.diff(w) >= 0), "weights must be ascending over real components"
        np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-5)
        # normalised U[0.2, 0.8]: ratios between weights are bounded by 0.8 / 0.2
        assert w.max() / w.min() <= 4.0 + 1e-4
        assert np.all(t.weights[b, k:] == 0) and np.all(t.means[b, k:] == 0)
        assert np.all(t.scales[b, k:] == 1)
    # the raw draws are U[0.2, 0.8]: for K=2 the smaller normalised weight lies in [0.2/1.0, 0.5]
    w2 = t.weights[t.num_components == 2]
    assert w2[:, 0].min() >= 0.2 - 1e-6 and w2[:, 0].max() <= 0.5 + 1e-6


@pytest.mark.slow
def test_means_in_box_and_cosine_filter(iso_task):
    t = iso_task
    assert np.all(np.abs(t.means) <= 5.0)
    for b in range(t.means.shape[0]):
        m = t.means[b, : t.num_components[b]]
        u = m / np.linalg.norm(m, axis=-1, keepdims=True)
        cos = u @ u.T
        off = ~np.eye(len(m), dtype=bool)
        assert cos[off].max() < 0.8
    # means are spread over the whole box (not a degenerate corner): per-coordinate variance ~ 100/12
    real = t.means[t.component_mask]
    assert abs(real.mean()) < 0.3 and abs(real.var() - 100 / 12) < 1.0


@pytest.mark.slow
def test_points_follow_labels_and_unit_scale(iso_task):
    t = iso_task
    resid = t.points - np.take_along_axis(t.means, t.labels[..., None], axis=1)
    assert abs(resid.var() - 1.0) < 0.02 and abs(resid.mean()) < 0.01
    # labels only point at real components, with frequencies matching the weights
    assert np.all(t.labels < t.num_components[:, None])
    k5 = t.num_components == 5
    freq = np.stack([(t.labels[k5] == j).mean(-1) for j in range(5)], -1)
    np.testing.assert_allclose(freq.mean(0), t.weights[k5].mean(0), atol=0.01)


@pytest.mark.slow
def test_variable_n_within_bounds_and_prefix_mask(iso_task):
    n = iso_task.point_mask.sum(-1)
    assert n.min() >= 32 and n.max() <= 64
    assert len(np.unique(n)) > 20  # really random, both ends reachable
    # the mask is a prefix: real points first
    for mask, length in zip(iso_task.point_mask, n):
        assert mask[:length].all() and not mask[length:].any()


@pytest.mark.slow
def test_anisotropic_scales_and_residuals():
    t = _np(sample_tasks(jax.random.key(2), TaskSpec(dim=4, ks=(3,), n_max=2000, variant="anisotropic"), 64))
    s = t.scales
    lo, hi = 2 * np.log1p(np.exp(-1.0)), 2 * np.log1p(np.exp(1.0))  # 2 softplus(+-5/5)
    assert s.min() >= lo - 1e-5 and s.max() <= hi + 1e-5 and s.std() > 0.2
    # per-component residual variance matches scale^2
    for b in range(4):
        for k in range(3):
            sel = (t.labels[b] == k) & t.point_mask[b]
            resid = t.points[b, sel] - t.means[b, k]
            np.testing.assert_allclose(resid.var(0), s[b, k] ** 2, rtol=0.25)


@pytest.mark.slow
def test_mean_shift_moves_means_outside_box():
    t = sample_tasks(jax.random.key(3), TaskSpec(dim=8, mean_shift=10.0), 32)
    real = np.asarray(t.means)[np.asarray(t.component_mask)]
    assert np.abs(real).max() > 10.0
    # U[-5,5] + 10 N(0,1): variance 100/12 + 100
    assert abs(real.var() / (100 / 12 + 100) - 1) < 0.15


@pytest.mark.slow
def test_d2_k5_fills_every_task():
    # acceptance ~5%: the official 4x oversampling would shrink this batch; ours must not.
    spec = TaskSpec(dim=2, ks=(5,), n_max=16)
    assert acceptance_rate(2, 5, 0.8, (-5.0, 5.0), 0.0) < 0.1
    t = _np(sample_tasks(jax.random.key(4), spec, 300))
    assert t.means.shape == (300, 5, 2)
    u = t.means / np.linalg.norm(t.means, axis=-1, keepdims=True)
    cos = np.einsum("bkd,bjd->bkj", u, u) - 2 * np.eye(5)
    assert cos.max() < 0.8
    assert len({tuple(m.ravel()) for m in t.means}) == 300  # all distinct, none left as zeros


def test_impossible_cell_raises_naming_dims():
    # in D=1 any three vectors contain two of the same sign (cosine 1)
    with pytest.raises(ValueError, match=r"D=1, K=3"):
        sample_tasks(jax.random.key(0), TaskSpec(dim=1, ks=(3,), n_max=8), 2)


@pytest.mark.slow
def test_determinism_key_dependence_and_fixed_n():
    spec = TaskSpec(dim=2, n_max=16, variable_n=False)
    a = sample_tasks(jax.random.key(7), spec, 3)
    assert bool(jnp.all(a.point_mask))  # evaluation specs use every point
    b = sample_tasks(jax.random.key(7), spec, 3)
    c = sample_tasks(jax.random.key(8), spec, 3)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.points, c.points) and not np.array_equal(a.means, c.means)


@pytest.mark.slow
def test_jit_and_vmap_equal_eager():
    """sample_tasks (jit + vmap over tasks) == sample_task called op by op, task by task."""
    spec = TaskSpec(dim=3, ks=(2, 4), n_max=6, variant="anisotropic")
    key = jax.random.key(11)
    batched = sample_tasks(key, spec, 2)
    task_keys = jax.random.split(key, 4)
    for b, k in [(0, 2), (3, 4)]:
        eager = sample_task(task_keys[b], spec, k)
        for e, j in zip(jax.tree.leaves(eager), jax.tree.leaves(batched)):
            np.testing.assert_allclose(e, j[b], rtol=1e-6, atol=1e-6)
    # vmapping the batched sampler over keys equals calling it per key
    keys = jax.random.split(key, 2)
    vmapped = jax.vmap(lambda k: sample_tasks(k, spec, 2))(keys)
    for i in range(2):
        for j, v in zip(jax.tree.leaves(sample_tasks(keys[i], spec, 2)), jax.tree.leaves(vmapped)):
            np.testing.assert_allclose(j, v[i], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(dim=0), "dim"),
        (dict(dim=2, ks=(0, 2)), "ks"),
        (dict(dim=2, ks=()), "ks"),
        (dict(dim=2, ks=(2, 2)), "ks"),
        (dict(dim=2, n_max=10, n_min=11), "n_min"),
        (dict(dim=2, ks=(2, 3), n_max=2), "n_max"),
        (dict(dim=2, variant="spherical"), "variant"),
        (dict(dim=2, mean_shift=-1.0), "mean_shift"),
        (dict(dim=2, weight_range=(0.0, 0.8)), "weight_range"),
        (dict(dim=2, weight_range=(0.8, 0.2)), "weight_range"),
        (dict(dim=2, mean_range=(5, -5)), "mean_range"),
        (dict(dim=2, cos_threshold=1.5), "cos_threshold"),
        (dict(dim=2.5), "dim"),
        (dict(dim=2, ks=4), "ks"),
        (dict(dim=2, n_distribution="loguniform"), "n_distribution"),
        (dict(dim=2, cos_filter_max_k=0), "cos_filter_max_k"),
        (dict(dim=2, cos_filter_max_k=2.5), "cos_filter_max_k"),
    ],
)
def test_bad_specs_rejected(kwargs, field):
    with pytest.raises(ValueError, match=field):
        TaskSpec(**kwargs)


def test_bad_tasks_per_k_rejected():
    with pytest.raises(ValueError, match="tasks_per_k"):
        sample_tasks(jax.random.key(0), TaskSpec(dim=2), 0)


def test_spec_is_hashable_and_defaults():
    spec = TaskSpec(dim=8)
    assert hash(spec) == hash(TaskSpec(dim=8, ks=[2, 3, 4, 5]))
    assert spec.n_min == 64 and spec.k_max == 5 and spec.batch_size(64) == 256


@pytest.mark.slow
def test_phase_transition_family():
    n, a, b = 64, 4.0, 0.05
    t = _np(sample_phase_transition_tasks(jax.random.key(5), n, a, b, 256))
    delta = np.sqrt((1 + np.sqrt(a)) * np.log(n))
    dim = int(b * n * np.log(n))
    assert t.points.shape == (256, n, dim)
    sep = np.linalg.norm(t.means[:, 0] - t.means[:, 1], axis=-1)
    np.testing.assert_allclose(sep, delta, rtol=1e-5)
    centre = t.means.mean(1)
    assert abs(centre.var() / delta**2 - 1) < 0.1
    assert abs(t.labels.mean() - 0.5) < 0.02
    np.testing.assert_allclose(t.weights, 0.5)


# ----------------------------------------------------------------------------------------------------
# The wider prior: small N, an unknown noise scale (log-uniform, the box scaled with it), per-component scales.


@pytest.mark.slow
def test_default_tasks_unchanged_golden(iso_task):
    """A default spec's draws, recorded with the sampler before the wider-prior options existed."""
    t = iso_task
    assert t.noise_scale is None  # the pytree of the paper's tasks is unchanged
    np.testing.assert_allclose(
        t.points[[0, 401, 799], 5],
        [
            [2.09238, -0.07391588, 2.6125565],
            [5.6410565, -3.0449514, -1.9933633],
            [-0.7381812, -1.5166122, 0.9155871],
        ],
        rtol=1e-6,
    )
    np.testing.assert_allclose(t.means[799, 3], [2.6584077, -4.0335393, 4.931427], rtol=1e-6)
    np.testing.assert_allclose(t.weights[401], [0.13922353, 0.2391397, 0.25400466, 0.36763215, 0], rtol=1e-6)
    np.testing.assert_array_equal(t.point_mask.sum(-1)[:8], [39, 43, 35, 62, 60, 51, 40, 50])
    np.testing.assert_array_equal(t.labels[799, :12], [4, 1, 3, 3, 4, 2, 1, 4, 4, 4, 4, 3])


NOISE_RANGE = (0.01, 10.0)
COMPONENT_RANGE = (0.5, 2.0)


@pytest.fixture(scope="module")
def scaled_pair():
    """The same key with and without the wider prior's scales (N down to 8 in both): (plain, scaled)."""
    base = dict(dim=3, ks=(2, 5), n_max=256, n_min=8)
    key = jax.random.key(21)
    plain = _np(sample_tasks(key, TaskSpec(**base), 300))
    spec = TaskSpec(**base, noise_scale_range=NOISE_RANGE, component_scale_range=COMPONENT_RANGE)
    return plain, _np(sample_tasks(key, spec, 300))


@pytest.mark.slow
def test_small_n_is_uniform_down_to_8(scaled_pair):
    n = scaled_pair[0].point_mask.sum(-1)
    assert n.min() < 12 and n.max() > 252 and n.min() >= 8 and n.max() <= 256
    # N ~ U{8..256}: chi-square over 8 bins of 31 or 32 values
    counts = np.bincount(np.minimum((n - 8) // 31, 7), minlength=8)
    widths = np.array([31] * 7 + [32])  # 249 values
    assert stats.chisquare(counts, len(n) * widths / widths.sum()).pvalue > 1e-3


@pytest.mark.slow
def test_noise_and_component_scales_are_log_uniform(scaled_pair):
    t = scaled_pair[1]
    sigma = t.noise_scale.astype(np.float64)
    assert sigma.shape == (600,)
    for values, (lo, hi) in [
        (sigma, NOISE_RANGE),
        (t.scales[..., 0][t.component_mask] / np.repeat(sigma, t.component_mask.sum(-1)), COMPONENT_RANGE),
    ]:
        unit = (np.log(values) - math.log(lo)) / (math.log(hi) - math.log(lo))
        assert unit.min() > -1e-5 and unit.max() < 1 + 1e-5
        assert stats.kstest(unit, "uniform").pvalue > 1e-3
    assert np.all(t.scales[..., 0] == t.scales[..., 2])  # spherical per component
    assert np.all(t.scales[~t.component_mask] == 1)


@pytest.mark.slow
def test_scaled_task_is_sigma_times_the_unit_task(scaled_pair):
    """The box scales with sigma: the scaled task is sigma times the task a plain spec draws with the same
    key, each component's noise times u_k (so weights, labels, masks and means / sigma have the same
    distribution at every sigma: a task multiplied by c is a task with sigma -> c sigma)."""
    plain, scaled = scaled_pair
    sigma_Bx1x1 = scaled.noise_scale[:, None, None]
    np.testing.assert_array_equal(scaled.labels, plain.labels)
    np.testing.assert_array_equal(scaled.weights, plain.weights)
    np.testing.assert_array_equal(scaled.point_mask, plain.point_mask)
    np.testing.assert_allclose(scaled.means / sigma_Bx1x1, plain.means, rtol=1e-5, atol=1e-6)
    assert np.all(np.abs(scaled.means) <= 5.0 * sigma_Bx1x1 * (1 + 1e-6))
    take = lambda a: np.take_along_axis(a, plain.labels[..., None], axis=1)
    noise_plain = plain.points - take(plain.means)  # the unit-variance draws
    expected = take(scaled.means) + take(scaled.scales) * noise_plain
    np.testing.assert_allclose(scaled.points / sigma_Bx1x1, expected / sigma_Bx1x1, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_within_component_spread_is_its_variance(scaled_pair):
    t = scaled_pair[1]
    take = lambda a: np.take_along_axis(a, t.labels[..., None], axis=1)
    resid = (t.points - take(t.means)).astype(np.float64)
    real = t.point_mask
    # per component (K = 5 tasks, all points): the mean square residual / sigma_k^2 ~ chi^2_{n_k D} / (n_k D)
    k5 = t.num_components == 5
    sq = np.sum(resid**2, axis=-1)
    ratios, ratios_wrong = [], []
    for b in np.flatnonzero(k5)[:100]:
        for k in range(5):
            sel = (t.labels[b] == k) & real[b]
            if sel.sum() >= 20:
                ratios.append(sq[b, sel].mean() / (3 * t.scales[b, k, 0] ** 2))
                ratios_wrong.append(sq[b, sel].mean() / (3 * t.noise_scale[b] ** 2))
    ratios, ratios_wrong = np.array(ratios), np.array(ratios_wrong)
    assert len(ratios) > 200
    assert abs(ratios.mean() - 1) < 0.03 and np.all(np.abs(ratios - 1) < 0.6)
    # the per-component variance is not the task's sigma^2 (E[u^2] = (4 - 1/4) / (2 log 4) = 1.35)
    assert abs(ratios_wrong.mean() - 1.35) < 0.1
    # and the spread varies over decades across tasks
    assert np.ptp(np.log10(t.noise_scale)) > 2.5


def test_scale_options_checked_and_hashable():
    assert hash(TaskSpec(dim=2, noise_scale_range=[1, 2])) == hash(TaskSpec(dim=2, noise_scale_range=(1, 2)))
    assert TaskSpec(dim=2, noise_scale_range=(3.0, 3.0)).scaled and not TaskSpec(dim=2).scaled
    for bad in [(0.0, 1.0), (2.0, 1.0), (1.0,), (1.0, math.inf), 1.0]:
        with pytest.raises(ValueError, match="noise_scale_range"):
            TaskSpec(dim=2, noise_scale_range=bad)
    with pytest.raises(ValueError, match="component_scale_range"):
        TaskSpec(dim=2, component_scale_range=(-1.0, 1.0))


def test_log_uniform_n_gives_each_octave_its_share():
    """N ~ floor(exp(U[log 16, log 129])): P(N in [a, b)) = log(b / a) / log(129 / 16), checked against that closed
    form; the bounds hold; and the default ("uniform") draws are unchanged by the option's existence."""
    key = jax.random.key(3)
    spec = TaskSpec(dim=2, n_max=128, n_min=16, n_distribution="log_uniform")
    n = np.asarray(sample_tasks(key, spec, 4000).point_mask.sum(-1))
    assert n.min() >= 16 and n.max() <= 128
    total = np.log(129 / 16)
    for lo, hi in ((16, 32), (32, 64), (64, 129)):
        expected = np.log(hi / lo) / total
        observed = np.mean((n >= lo) & (n < hi))
        assert abs(observed - expected) < 4 * np.sqrt(expected * (1 - expected) / n.size), (lo, hi, observed)
    uniform = np.asarray(sample_tasks(key, TaskSpec(dim=2, n_max=128, n_min=16), 4000).point_mask.sum(-1))
    assert abs(np.mean(uniform < 32) - 16 / 113) < 0.03  # uniform on {16..128}: 16 of 113 values below 32
    assert np.mean(n < 32) > 2 * np.mean(uniform < 32)


def _max_cosine(means_KxD: np.ndarray) -> float:
    u = means_KxD / np.linalg.norm(means_KxD, axis=-1, keepdims=True)
    cos = u @ u.T
    return float(cos[~np.eye(len(u), dtype=bool)].max())


def test_cosine_filter_for_some_k_only():
    """``cos_filter_max_k=5`` at D = 2 with K = 2..8: K <= 5 keep the 0.8 filter; above it the means are
    unfiltered (pairs closer than 0.8 in cosine appear: at K = 8 in 2-D nearly every task has one)."""
    spec = TaskSpec(dim=2, ks=(2, 3, 4, 5, 6, 7, 8), n_max=16, cos_threshold=0.8, cos_filter_max_k=5)
    t = _np(jax.jit(sample_tasks, static_argnums=(1, 2))(jax.random.key(3), spec, 32))
    worst = {}
    for b in range(t.means.shape[0]):
        k = int(t.num_components[b])
        worst.setdefault(k, []).append(_max_cosine(t.means[b, :k]))
    assert all(max(worst[k]) < 0.8 for k in (2, 3, 4, 5))
    assert all(np.mean(np.asarray(worst[k]) >= 0.8) > 0.9 for k in (7, 8))
    # a bound at or above every K changes nothing: the very tasks of the spec without it
    plain = TaskSpec(dim=3, ks=(2, 3, 4), n_max=16)
    bounded = TaskSpec(dim=3, ks=(2, 3, 4), n_max=16, cos_filter_max_k=4)
    a, b = (_np(sample_tasks(jax.random.key(1), s, 8)) for s in (plain, bounded))
    jax.tree.map(np.testing.assert_array_equal, a, b)
