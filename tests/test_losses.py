"""Losses against independent NumPy/SciPy computations on hand-made examples; gradients; bad input."""

import itertools

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp

from tgmm_jax import gmm
from tgmm_jax.losses import OBJECTIVES, match_components
from tgmm_jax.losses import compute_loss as eager_compute_loss
from tgmm_jax.models import TGMMOutput
from tgmm_jax.tasks import GMMTask

# Two tasks, K_max = 3, D = 2: task 0 has K = 3 and 4 real points, task 1 has K = 2 and 3 real points.
MASK = np.array([[True, True, True], [True, True, False]])
WEIGHTS = np.array([[0.2, 0.3, 0.5], [0.4, 0.6, 0.0]])
MEANS = np.array([[[0.0, 0.0], [1.0, 2.0], [-1.0, 3.0]], [[2.0, 2.0], [-2.0, 0.0], [0.0, 0.0]]])
SCALES = np.array([[[1.0, 2.0], [0.5, 1.0], [1.5, 1.5]], [[1.0, 1.0], [2.0, 0.7], [1.0, 1.0]]])
POINTS = np.array(
    [
        [[0.1, -0.2], [1.2, 2.5], [-0.7, 2.1], [0.3, 0.4]],
        [[2.5, 1.7], [-1.5, 0.2], [1.9, 2.4], [99.0, -99.0]],  # the last point is padding
    ]
)
POINT_MASK = np.array([[True] * 4, [True, True, True, False]])
# Predictions: task 1's two components are swapped, so matching helps there.
LOGITS = np.array([[0.1, -0.5, 1.0], [0.3, 0.9, -1e9]])
PRED_MEANS = np.array([[[0.5, 0.0], [1.0, 1.0], [-2.0, 3.0]], [[-2.0, 0.5], [2.0, 1.0], [0.0, 0.0]]])
PRED_SCALES = np.array([[[1.2, 1.0], [0.5, 0.8], [1.0, 2.0]], [[1.5, 0.9], [1.1, 1.0], [1.0, 1.0]]])


# Jitted, as in training (and one compile per objective is faster than eager op-by-op dispatch).
compute_loss = jax.jit(eager_compute_loss, static_argnums=0)


def _task(anisotropic):
    return GMMTask(
        points=jnp.asarray(POINTS, jnp.float32),
        point_mask=jnp.asarray(POINT_MASK),
        labels=jnp.zeros(POINT_MASK.shape, jnp.int32),
        weights=jnp.asarray(WEIGHTS, jnp.float32),
        means=jnp.asarray(MEANS, jnp.float32),
        scales=jnp.asarray(SCALES if anisotropic else np.ones_like(SCALES), jnp.float32),
        component_mask=jnp.asarray(MASK),
        num_components=jnp.asarray(MASK.sum(-1), jnp.int32),
    )


def _output(anisotropic, logits=LOGITS):
    return TGMMOutput(
        weight_logits=jnp.asarray(logits, jnp.float32),
        means=jnp.asarray(PRED_MEANS, jnp.float32),
        scales=jnp.asarray(PRED_SCALES, jnp.float32) if anisotropic else None,
        component_mask=jnp.asarray(MASK),
    )


def _numpy_est(b, order, anisotropic):
    """The est loss of task b with prediction slot order[j] standing for target j (real components only)."""
    k = MASK[b].sum()
    order = list(order)
    log_p = LOGITS[b, :k] - logsumexp(LOGITS[b, :k])
    ce = -np.sum(WEIGHTS[b, :k] * log_p[order])
    mse = np.sum((PRED_MEANS[b, order] - MEANS[b, :k]) ** 2) / (k * 2)
    sc = np.sum((PRED_SCALES[b, order] - SCALES[b, :k]) ** 2) / (k * 2) if anisotropic else 0.0
    return ce, mse, sc


def _numpy_nll(anisotropic):
    per_task = []
    for b in range(2):
        k = MASK[b].sum()
        log_w = LOGITS[b, :k] - logsumexp(LOGITS[b, :k])
        s = PRED_SCALES[b, :k] if anisotropic else np.ones((k, 2))
        x = POINTS[b][POINT_MASK[b]]  # [n, D]
        log_pdf = -0.5 * np.sum(((x[:, None, :] - PRED_MEANS[b, None, :k]) / s[None]) ** 2, -1)
        log_pdf = log_pdf - np.sum(np.log(s), -1)[None] - np.log(2 * np.pi)  # D = 2: (D/2) log 2 pi
        per_task.append(-np.mean(logsumexp(log_w[None] + log_pdf, axis=-1)))
    return np.mean(per_task)


@pytest.mark.parametrize("anisotropic", [False, True])
def test_est_equals_numpy(anisotropic):
    loss, terms = compute_loss("est", _output(anisotropic), _task(anisotropic))
    parts = [_numpy_est(b, range(MASK[b].sum()), anisotropic) for b in range(2)]
    ce, mse, sc = (np.mean([p[i] for p in parts]) for i in range(3))
    np.testing.assert_allclose(terms["weights_ce"], ce, rtol=1e-5)
    np.testing.assert_allclose(terms["means_mse"], mse, rtol=1e-5)
    entropy = np.mean([-np.sum(w[w > 0] * np.log(w[w > 0])) for w in WEIGHTS])
    np.testing.assert_allclose(terms["weights_kl"], ce - entropy, rtol=1e-5)
    np.testing.assert_allclose(loss, ce + mse + sc, rtol=1e-5)
    np.testing.assert_allclose(terms["loss"], loss)
    assert ("scales_mse" in terms) == anisotropic
    if anisotropic:
        np.testing.assert_allclose(terms["scales_mse"], sc, rtol=1e-5)


@pytest.mark.parametrize("anisotropic", [False, True])
@pytest.mark.slow
def test_est_matched_equals_numpy_brute_force(anisotropic):
    loss, _ = compute_loss("est_matched", _output(anisotropic), _task(anisotropic))
    best = []
    for b in range(2):
        k = MASK[b].sum()
        best.append(
            min((sum(_numpy_est(b, order, anisotropic)), order) for order in itertools.permutations(range(k)))
        )
    np.testing.assert_allclose(loss, np.mean([value for value, _ in best]), rtol=1e-5)
    assert best[1][1] == (1, 0)  # task 1's swap is undone
    index = np.asarray(match_components(_output(anisotropic), _task(anisotropic)))
    np.testing.assert_array_equal(index[1], [1, 0, 2])
    np.testing.assert_array_equal(index[0], best[0][1])
    est_loss, _ = compute_loss("est", _output(anisotropic), _task(anisotropic))
    assert loss < est_loss


def test_est_matched_is_zero_above_the_entropy_for_a_permuted_truth():
    """A perfect estimate listed in another order: est_matched reaches its floor, est does not."""
    task = _task(False)
    perm = np.array([[2, 0, 1], [1, 0, 2]])
    logits = np.where(MASK, np.log(np.where(MASK, WEIGHTS, 1.0)), -1e9)
    out = TGMMOutput(
        jnp.asarray(np.take_along_axis(logits, perm, 1), jnp.float32),
        jnp.asarray(np.take_along_axis(MEANS, perm[:, :, None], 1), jnp.float32),
        None,
        jnp.asarray(MASK),
    )
    _, matched = compute_loss("est_matched", out, task)
    _, plain = compute_loss("est", out, task)
    assert matched["means_mse"] < 1e-6 and matched["weights_kl"] < 1e-5
    assert plain["means_mse"] > 1.0


@pytest.mark.parametrize("anisotropic", [False, True])
@pytest.mark.slow
def test_lik_equals_numpy(anisotropic):
    loss, terms = compute_loss("lik", _output(anisotropic), _task(anisotropic))
    np.testing.assert_allclose(loss, _numpy_nll(anisotropic), rtol=1e-5)
    np.testing.assert_allclose(terms["nll"], loss)
    # The same number as the mixture-math module's log-likelihood of the softmax weights.
    est = _output(anisotropic).to_params()
    task = _task(anisotropic)
    np.testing.assert_allclose(
        loss, -np.mean(gmm.mean_log_likelihood(task.points, task.point_mask, est)), rtol=1e-5
    )


@pytest.mark.parametrize("first", ["est", "est_matched"])
def test_sums_weight_the_likelihood(first):
    out, task = _output(True), _task(True)
    est, _ = compute_loss(first, out, task)
    nll, _ = compute_loss("lik", out, task)
    total, terms = compute_loss(f"{first}+lik", out, task, lik_weight=0.25)
    np.testing.assert_allclose(total, est + 0.25 * nll, rtol=1e-5)
    assert {"nll", "means_mse", "weights_ce", "scales_mse", "loss"} <= set(terms)


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.slow
def test_gradients_are_finite_under_jit_even_with_extreme_logits(objective):
    task = _task(True)
    logits = np.array([[0.0, 300.0, -300.0], [-200.0, 200.0, -1e9]])  # softmax weights underflow to 0

    @jax.jit
    def loss_and_grads(logits, means, scales):
        def f(lg, m, s):
            return eager_compute_loss(objective, TGMMOutput(lg, m, s, task.component_mask), task)[0]

        return jax.value_and_grad(f, argnums=(0, 1, 2))(logits, means, scales)

    loss, grads = loss_and_grads(jnp.asarray(logits, jnp.float32), _output(True).means, _output(True).scales)
    assert np.isfinite(loss)
    for g in grads:
        assert np.all(np.isfinite(g))
    assert np.all(np.asarray(grads[1])[~MASK] == 0.0)  # padded components get no gradient


def test_bad_input_raises():
    out, task = _output(False), _task(False)
    with pytest.raises(ValueError, match="objective"):
        eager_compute_loss("mle", out, task)
    with pytest.raises(ValueError, match="lik_weight"):
        eager_compute_loss("est+lik", out, task, lik_weight=-1.0)
    short = TGMMOutput(out.weight_logits[:, :2], out.means[:, :2], None, out.component_mask[:, :2])
    with pytest.raises(ValueError, match="means"):
        eager_compute_loss("est", short, task)
