"""Gradient EM (Adam on the log-likelihood): its answers are stationary points, checked with a NumPy EM step."""

import jax
import numpy as np
import pytest
from scipy.special import logsumexp

from baselines.gradient_em import GradientEMConfig
from tests.baseline_helpers import aligned_l2_means, fast_baseline, make_tasks

jax.config.update("jax_numpy_rank_promotion", "raise")  # also set by tests/conftest.py


def _numpy_em_step(x, w, mu):
    """One EM step in float64 (unit variances) and the mean log-likelihood before it."""
    log_p = (
        np.log(w)[None]
        - 0.5 * ((x[:, None, :] - mu[None]) ** 2).sum(-1)
        - 0.5 * x.shape[1] * np.log(2 * np.pi)
    )
    lse = logsumexp(log_p, axis=1)
    resp = np.exp(log_p - lse[:, None])
    nk = resp.sum(0)
    return nk / len(x), resp.T @ x / nk[:, None], lse.mean()


@pytest.mark.slow
def test_converged_answers_are_em_fixed_points():
    task = make_tasks(0, [2, 3, 4] * 8, 4, 64, n_min=40)
    est, info = fast_baseline("gradient_em")(jax.random.key(0), task)
    converged = np.asarray(info["converged"])
    assert converged.mean() >= 0.9 and np.all(np.asarray(info["valid"]))
    for b in np.flatnonzero(converged):
        k = int(task.num_components[b])
        x = np.asarray(task.points[b], np.float64)[np.asarray(task.point_mask[b])]
        w, mu = np.asarray(est.weights[b, :k], np.float64), np.asarray(est.means[b, :k], np.float64)
        w_next, mu_next, ll = _numpy_em_step(x, w, mu)
        # The log-likelihood is stationary there, so EM (which climbs it) barely moves.
        np.testing.assert_allclose(mu_next, mu, atol=0.02)
        np.testing.assert_allclose(w_next, w, atol=0.005)
        np.testing.assert_allclose(float(info["loglik"][b]), ll, rtol=1e-5)
    # And they are sensible estimates: the median task is close to the truth.
    assert np.median(aligned_l2_means(est.means, task)) < 0.2


def test_bad_settings_raise():
    for kwargs, match in [
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"max_steps": 0}, "max_steps"),
        ({"tol": -1.0}, "tol"),
        ({"init": "bogus"}, "initialisation"),
    ]:
        with pytest.raises(ValueError, match=match):
            GradientEMConfig(**kwargs)
