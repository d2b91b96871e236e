"""Likelihood-weighted averaging of fits (tgmm_jax/mixture/averaging.py) and the em_averaged baseline.

Reference: a NumPy average with the matching found by itertools.permutations."""

import itertools

import jax
import numpy as np
import pytest
from scipy.special import softmax

from baselines import get_baseline
from tgmm_jax.metrics import evaluate_estimates
from tgmm_jax.mixture.averaging import fit_probabilities, likelihood_weighted_average
from tgmm_jax.tasks import TaskSpec, sample_tasks


def _reference(w_RxK, mu_RxKxD, var_RxKxD, ll_R, k):
    """The average of one task with K real components (the first k slots)."""
    p_R = softmax(np.where(np.isfinite(ll_R), ll_R, -np.inf))
    best = int(np.argmax(p_R))
    out_w, out_mu, out_var = np.zeros(k), np.zeros((k, mu_RxKxD.shape[-1])), np.zeros((k, mu_RxKxD.shape[-1]))
    for r in range(len(ll_R)):
        if p_R[r] == 0:
            continue
        perm = min(
            itertools.permutations(range(k)),
            key=lambda q: sum(np.sum((mu_RxKxD[r, q[j]] - mu_RxKxD[best, j]) ** 2) for j in range(k)),
        )
        out_w += p_R[r] * w_RxK[r, list(perm)]
        out_mu += p_R[r] * mu_RxKxD[r, list(perm)]
        out_var += p_R[r] * var_RxKxD[r, list(perm)]
    return out_w / out_w.sum(), out_mu, out_var, p_R


def test_average_matches_a_brute_force_reference():
    rng = np.random.default_rng(0)
    b, r, k_max, d = 6, 5, 4, 3
    ks = np.array([2, 3, 4, 4, 3, 2])
    mask = np.arange(k_max)[None, :] < ks[:, None]
    w = rng.dirichlet(np.ones(k_max), (b, r)).astype(np.float32)
    mu = rng.normal(0, 3, (b, r, k_max, d)).astype(np.float32)
    var = rng.uniform(0.5, 2, (b, r, k_max, d)).astype(np.float32)
    ll = rng.normal(-100, 2, (b, r)).astype(np.float32)
    ll[1, 2] = np.nan  # a failed fit: probability 0
    ll[3] = [-1e30, -1e30, np.inf * -1, -1e30, -1e30]  # one dominant fit up to rounding
    ll[3, 4] = -50.0
    w_out, mu_out, var_out, p_out = jax.device_get(likelihood_weighted_average(w, mu, var, ll, mask))
    for i in range(b):
        k = int(ks[i])
        ref_w, ref_mu, ref_var, ref_p = _reference(w[i][:, :k], mu[i][:, :k], var[i][:, :k], ll[i], k)
        np.testing.assert_allclose(p_out[i], ref_p, atol=1e-6)
        np.testing.assert_allclose(w_out[i, :k], ref_w, atol=1e-5)
        np.testing.assert_allclose(mu_out[i, :k], ref_mu, atol=1e-4)
        np.testing.assert_allclose(var_out[i, :k], ref_var, atol=1e-4)
        assert np.all(w_out[i, k:] == 0) and np.all(mu_out[i, k:] == 0)
    assert p_out[1, 2] == 0
    np.testing.assert_allclose(p_out[3], [0, 0, 0, 0, 1], atol=1e-6)


def test_probabilities_of_all_failed_fits_keep_the_first_and_bad_temperature_raises():
    p = np.asarray(fit_probabilities(np.full((2, 3), np.nan, np.float32)))
    np.testing.assert_array_equal(p, [[1, 0, 0], [1, 0, 0]])
    with pytest.raises(ValueError, match="temperature"):
        fit_probabilities(np.zeros((1, 2)), temperature=0.0)


@pytest.mark.slow
def test_em_averaged_is_em_kmeanspp_with_one_start_and_on_separated_tasks():
    """One start: nothing to average (the same fit as em_kmeanspp). At N = 256 the best optimum usually takes
    the whole weight (a rival optimum must be within a few nats in total), so on most tasks the average is the
    best fit; at N = 16 with four components it differs."""
    spec = TaskSpec(dim=2, ks=(3,), n_max=256, n_min=256, variable_n=False)
    task = sample_tasks(jax.random.key(0), spec, 16)
    key = jax.random.key(1)
    one_best, _ = get_baseline("em_kmeanspp", n_init=1)(key, task)
    one_avg, _ = get_baseline("em_averaged", n_init=1)(key, task)
    np.testing.assert_allclose(one_avg.means, one_best.means, atol=1e-6)
    np.testing.assert_allclose(one_avg.weights, one_best.weights, atol=1e-6)
    best, _ = get_baseline("em_kmeanspp")(key, task)
    avg, _ = get_baseline("em_averaged")(key, task)
    l2_best = np.asarray(evaluate_estimates(best, task)["l2"])
    l2_avg = np.asarray(evaluate_estimates(avg, task)["l2"])
    assert np.sum(np.abs(l2_avg - l2_best) < 1e-4) >= 12, (l2_avg, l2_best)
    small = sample_tasks(
        jax.random.key(2), TaskSpec(dim=2, ks=(4,), n_max=16, n_min=16, variable_n=False), 32
    )
    best, _ = get_baseline("em_kmeanspp")(key, small)
    avg, _ = get_baseline("em_averaged")(key, small)
    assert np.max(np.abs(np.asarray(avg.means) - np.asarray(best.means))) > 1e-2
    np.testing.assert_allclose(np.asarray(avg.weights).sum(-1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="combine"):
        get_baseline("em_kmeanspp", combine="mean")
