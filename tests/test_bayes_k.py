"""The Bayes reference over K (baselines/bayes_k.py): log p(X | K) by AIS against closed forms and quadrature."""

import jax
import numpy as np
import pytest
from scipy.special import logsumexp, ndtr

from baselines.bayes_k import BayesKConfig, betas, log_evidence

jax.config.update("jax_numpy_rank_promotion", "raise")

# The estimator's error on these tasks, measured over 6 other keys: sd 0.065 nat (max 0.17 of 36) with 16
# particles, sd 0.027 (max 0.073 of 36) with 64; TOL is about 5.5 sd.
CONFIG = BayesKConfig(particles=64, temperatures=1000, k_max=2)
TOL = 0.15


def log_z_k1(points_NxD):
    """log p(X | K = 1): w = 1 and the integral over mu ~ U[-5, 5]^D factorises per coordinate into a Gaussian
    normaliser times a normal CDF difference."""
    n, d = points_NxD.shape
    mean_D = points_NxD.mean(0)
    ss = np.sum((points_NxD - mean_D) ** 2)
    mass_D = ndtr(np.sqrt(n) * (5.0 - mean_D)) - ndtr(np.sqrt(n) * (-5.0 - mean_D))
    return (
        -0.5 * n * d * np.log(2 * np.pi)
        - 0.5 * ss
        + 0.5 * d * np.log(2 * np.pi / n)
        + np.sum(np.log(mass_D))
        - d * np.log(10.0)
    )


def log_z_k2_d1(x_N, n_u=12, n_mu=160):
    """log p(X | K = 2) in D = 1 by Gauss-Legendre quadrature over (u1, u2) in [0.2, 0.8]^2 and (mu1, mu2) in
    [-5, 5]^2 (prior densities 1 / 0.36 and 1 / 100). Converged: (24, 300) nodes agree to 1e-12."""
    g, wg = np.polynomial.legendre.leggauss(n_u)
    u, log_wu = 0.5 + 0.3 * g, np.log(wg / 2.0)
    g, wg = np.polynomial.legendre.leggauss(n_mu)
    mu, log_wmu = 5.0 * g, np.log(wg / 2.0)
    dens_NxM = -0.5 * (x_N[:, None] - mu[None, :]) ** 2 - 0.5 * np.log(2 * np.pi)
    terms = []
    for i in range(n_u):
        for j in range(n_u):
            w = u[i] / (u[i] + u[j])
            lik_MxM = np.logaddexp(np.log(w) + dens_NxM[:, :, None], np.log1p(-w) + dens_NxM[:, None, :]).sum(
                0
            )
            inner = logsumexp(lik_MxM + log_wmu[:, None] + log_wmu[None, :])
            terms.append(inner + log_wu[i] + log_wu[j])
    return logsumexp(terms)


@pytest.mark.slow  # compiles and runs the sampler
def test_k1_matches_closed_form_and_ignores_padded_points():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(16, 2)) + np.array([1.0, -4.5])  # near a face: the CDF term matters
    b = rng.normal(size=(24, 2)) * 2.0
    points = np.stack([np.concatenate([a, np.full((8, 2), np.nan)]), b])
    mask = np.ones((2, 24), bool)
    mask[0, 16:] = False
    out = log_evidence(jax.random.PRNGKey(0), points, mask, CONFIG)
    got = np.asarray(out["log_evidence"])[:, 0]
    want = np.array([log_z_k1(a), log_z_k1(b)])
    np.testing.assert_allclose(got, want, atol=TOL)
    assert np.isfinite(np.asarray(out["log_evidence"])).all()


@pytest.mark.slow  # compiles and runs the sampler
def test_k2_matches_quadrature_in_one_dimension():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(-2.0, 1.0, 5), rng.normal(2.5, 1.0, 3)])
    pure = rng.normal(0.5, 1.0, 8)  # one cluster: K = 1 and K = 2 close
    out = log_evidence(jax.random.PRNGKey(1), np.stack([x, pure])[..., None], None, CONFIG)
    got = np.asarray(out["log_evidence"])
    want = np.array([[log_z_k1(v[:, None]), log_z_k2_d1(v)] for v in (x, pure)])
    np.testing.assert_allclose(got, want, atol=TOL)
    np.testing.assert_allclose(np.asarray(out["posterior"]).sum(-1), 1.0, atol=1e-5)
    # the two clusters favour K = 2 by more than the tolerance, the single one K = 1
    assert want[0, 1] - want[0, 0] > 3 * TOL and want[1, 0] - want[1, 1] > 3 * TOL


@pytest.mark.slow  # compiles and runs the sampler
def test_well_separated_mixture_has_its_mode_at_the_true_k():
    # D = 8: an extra component costs ~3 nats of prior volume per coordinate, far more than splitting a
    # cluster gains (at D = 2 a fourth component on three clusters is a close second under this prior)
    rng = np.random.default_rng(2)
    means = rng.choice([-4.0, 4.0], size=(3, 8))
    points = means[np.arange(96) % 3] + rng.normal(size=(96, 8))
    config = BayesKConfig(particles=8, temperatures=200)
    out = log_evidence(jax.random.PRNGKey(2), points[None], None, config)
    posterior = np.asarray(out["posterior"])[0]
    assert posterior.argmax() + 1 == 3, posterior
    assert posterior[2] > 0.9, posterior


def test_schedule_runs_from_zero_to_one():
    # beta_t = beta_min^(1 - t / T), t = 1..T
    b = np.asarray(betas(BayesKConfig(temperatures=5, beta_min=1e-3)))
    np.testing.assert_allclose(b, [0.0, 10**-2.4, 10**-1.8, 10**-1.2, 10**-0.6, 1.0], rtol=1e-5)


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("particles", 0, "particles must be an integer >= 1"),
        ("temperatures", 2.5, "temperatures must be an integer"),
        ("beta_min", 0.0, "beta_min must be a finite number in \\(0"),
        ("beta_min", 1.5, "beta_min"),
        ("u_step", -1.0, "u_step"),
        ("jump_scale", float("nan"), "jump_scale"),
        ("weight_range", (0.8, 0.2), "weight_range must be a tuple"),
        ("weight_range", (0.0, 0.8), "weight_range"),
        ("mean_range", (-5.0,), "mean_range"),
    ],
)
def test_bad_configs_raise(field, value, match):
    with pytest.raises(ValueError, match=match):
        BayesKConfig(**{field: value})


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="points must be \\[B, N, D\\]"):
        log_evidence(jax.random.PRNGKey(0), np.zeros((4, 2)), None, CONFIG)
    with pytest.raises(ValueError, match="point_mask must be"):
        log_evidence(jax.random.PRNGKey(0), np.zeros((1, 4, 2)), np.ones((1, 5), bool), CONFIG)
    with pytest.raises(ValueError, match="config must be a BayesKConfig"):
        log_evidence(jax.random.PRNGKey(0), np.zeros((1, 4, 2)), None, {"particles": 4})
