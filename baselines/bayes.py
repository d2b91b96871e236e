"""Bayes reference baseline: the posterior mean under exactly the prior the tasks are drawn from, by MCMC.

``fit_bayes(key, task, config=BayesConfig()) -> (MixtureParams, info)`` estimates every task of a padded
``GMMTask`` batch (its own K from ``component_mask``, its own real points from ``point_mask``) by the
aligned posterior mean of (weights, means) under the isotropic Algorithm-1 prior (``mean_shift`` 0).
``sample_posterior`` returns the raw, unaligned samples (weights, means, log posterior, optionally z).

The prior (``prior='algorithm1'``; the ranges and threshold are config fields, defaults as TaskSpec's):
  weights   u_k iid U[lo, hi] (0.2, 0.8), pi = u / sum(u). Algorithm 1 sorts u; the sort is a labelling
            convention only (the l2 metric aligns components by the best permutation), so the sampler uses
            the exchangeable, unsorted prior. Its density on the simplex (w.r.t. Lebesgue measure on
            (pi_1, ..., pi_{K-1}), the measure of the Dirichlet densities): with s = sum(u) and u_k = s pi_k,
            the map (u_1..u_K) -> (s, pi_1..pi_{K-1}) has Jacobian det[pi | s(e_j - e_K)] = s^{K-1}, so
            p(s, pi) = (hi - lo)^{-K} s^{K-1} prod_k 1[lo <= s pi_k <= hi], and the constraints on s are
            s >= s_lo = lo / min_k pi_k and s <= s_hi = hi / max_k pi_k. Integrating s out:
              p(pi) = (hi - lo)^{-K} (s_hi^K - s_lo^K)_+ / K,
            supported where max pi / min pi < hi / lo (``log_weight_prior``; checked against a histogram
            of u / sum(u) in tests/test_bayes.py).
  means     mu_k iid U[a, b]^D (-5, 5), conditioned on all pairwise cosines between the real means being
            < cos_threshold (0.8): the density is constant on that set, zero outside.
  points    z_n ~ Cat(pi), x_n ~ N(mu_{z_n}, I) (unit variance, known).
Only the isotropic variant is covered (BayesConfig(variant=...) raises ValueError otherwise).

Gibbs sampler, one sweep (vmapped over tasks and chains; a loop over sweeps):
  1. z | pi, mu, x: z_n ~ Cat(softmax_k(log pi_k - ||x_n - mu_k||^2 / 2)), padded components excluded and
     padded points ignored in all counts. Exact.
  2. pi | z: independence Metropolis-Hastings with proposal Dirichlet(n + 1), the conditional under a flat
     Dirichlet(1) prior; target p(pi) prod pi_k^n_k, so the acceptance ratio is p(pi') / p(pi). Exact.
     The Gamma(n_k + 1) variates are sums of n_k + 1 Exp(1) variates (one per point of the component,
     plus one): an exact draw with no rejection loop.
  3. mu_k | z, x, mu_{-k}, for k = 0..K-1 in turn: independence MH whose proposal is the conditional
     without the cosine constraint: each coordinate N(xbar_k, 1/n_k) truncated to [a, b] (uniform on the
     box when n_k = 0); the ratio is 1[constraint holds] / 1[it held before], i.e. accept iff the new
     mean's cosines with the other real means are < threshold. Exact. The truncated normal is drawn by
     inversion on the lower tail (``truncated_std_normal``; no NaN, clipped into the box); beyond 10
     standard deviations it uses the exponential tail approximation (relative density error ~1%, over a
     width of ~0.1 standard deviation: a mean 10/sqrt(n_k) beyond the box edge, which these tasks do not
     produce).
Initial state per chain: k-means++ seeding with the chain's own key, restricted to seeds whose pairwise
cosines are < threshold (``_initial_means``), uniform weights; so chains almost always start inside the
support. A state outside it (possible only initially) has zero density: MH then accepts any proposal, and
the mean step leaves it as soon as its proposals satisfy the constraint; samples outside the support are
never averaged. Every chain runs ``sweeps`` sweeps, the first ``burn_in`` discarded, then every ``thin``-th
kept. Uniforms come from one threefry draw per sweep (float32, in [1e-7, 1 - 1e-7]).

Estimate. The Gibbs chains do not switch labels; samples are aligned by the best permutation of their
means (all K! permutations, ``metrics.best_permutation``), first to the sample of highest log posterior,
then once more to the mean of the aligned samples; the estimate is the mean of the aligned samples
(weights, means), components in ascending weight order. Returned as MixtureParams(weights, means,
scales=None, component_mask).

What is exact and what is not:
  * each step leaves the posterior invariant exactly (up to float32 and the far-tail approximation above),
    checked against exact posteriors by enumerating all 2^N assignments (a conjugate test prior, and the
    Algorithm-1 prior in one dimension, where the constraint is a sign constraint) and against the prior
    (no points), in tests/test_bayes.py;
  * finite chains: Monte-Carlo error (at the defaults, doubling the sweeps moves the estimate by an l2 of
    ~1e-4..3e-3 at d = 2, K = 5, N = 128, vs ~0.07 for the estimate's own error) and burn-in bias;
  * mixing: Gibbs moves between modes rarely. At d = 2, K = 5, N = 128 about 6% of chains stay in a minor
    mode (e.g. two components sharing a cluster), >= 6 nats below the main one in mean log posterior.
    Chains more than ``chain_gap`` (3) nats below the best chain are left out (info['chains_used']): this
    assumes such modes carry negligible mass (for equal curvature the mass ratio is ~exp(-gap)). Among the
    chains kept, modes are weighted by chain counts, not by their posterior masses. In 4 x 64 such tasks
    the best of 4 chains always reached the best of 16 chains' mode; 8 chains or 2x sweeps did not change
    the mean l2 over 256 tasks (0.080; 0.083 with 8 chains, 0.081 with 2x sweeps);
  * the aligned posterior mean is the posterior mean after label alignment. It is a fixed point of "align
    to the estimate, average", a necessary condition for the minimiser of the expected aligned l2, reached
    by two alignment passes; it is not exactly the Bayes estimator of the aligned l2 loss.

info ([B] arrays): valid (all parameters finite), chain_spread (largest l2 between two kept chains'
aligned mean estimates, 1/(K D) sum_k ||m_r,k - m_r',k||^2 as metrics' l2_means), chains_used,
weight_accept and mean_accept (acceptance rates of steps 2 and 3 after burn-in, mean over chains; the
mean rate is per component update), log_post_max (largest log p(x, pi, mu) of a kept sample, up to a
constant).

``prior='conjugate'`` is for testing only: mu_k ~ N(locs[k] 1, tau^2 I), pi ~ Dirichlet(alphas), the
mean step is then the exact Gaussian conditional and the weight step the exact Dirichlet(n + alpha) draw.

Measured (default config: 4 chains, 1000 sweeps, burn-in 300, thin 5; this 2-core CPU, shared with another
job's test suite, load average ~3): 0.04 s per task at d = 2, K = 5, N = 128 and 0.065 s per task at
d = 32, K = 5, N = 128 (64 tasks a call, compile excluded; compiling takes 5-10 s per shape).
Quality at d = 2, K = 5, N = 128 (sample_tasks, 64 tasks): mean l2 0.067 +- 0.007 vs em_kmeanspp's
0.187 +- 0.083, ratio 0.36 (0.33 over 256 tasks). The ratio is set by em_kmeanspp's failures (l2 > 1 on
~6% of tasks); on the other tasks it is 0.66-0.86 (0.73 over 256). At d = 32: 0.0440 vs 0.0462 (ratio 0.95).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax.scipy.special import ndtr, ndtri

from baselines import mixture_steps
from baselines.chunking import map_task_chunks
from tgmm_jax.gmm import MixtureParams
from tgmm_jax.metrics import MAX_BRUTE_FORCE_K, best_permutation, masked_match_cost
from tgmm_jax.tasks import GMMTask

HIGHEST = jax.lax.Precision.HIGHEST
PRIORS = ("algorithm1", "conjugate")
_TINY = 1e-30
# Standardised truncation bound beyond which the truncated normal uses its exponential tail approximation.
_FAR_TAIL = 10.0
# Default number of tasks per chunk (the chain state of a task is a few KiB; see fit_bayes).
_DEFAULT_CHUNK = 64
# Uniform box draws tried for an initial seed when no data point is admissible.
_BOX_CANDIDATES = 64


def _check_int(name: str, value, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"BayesConfig.{name} must be an integer >= {minimum}, got {value!r}")


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclasses.dataclass(frozen=True)
class BayesConfig:
    """Static settings of the Bayes baseline (hashable: one compilation per config and shape).

    ``sweeps`` counts every Gibbs sweep of a chain, burn-in included; after the ``burn_in`` sweeps every
    ``thin``-th sweep is kept, i.e. ``(sweeps - burn_in) // thin`` samples per chain.
    ``locs``, ``tau``, ``alphas`` are used by ``prior='conjugate'`` only (a testing prior:
    mu_k ~ N(locs[k] 1, tau^2 I), pi ~ Dirichlet(alphas)); a tuple of length 1 is broadcast over the
    components, otherwise its length must be the task's K_max.
    """

    variant: str = "isotropic"
    prior: str = "algorithm1"
    chains: int = 4
    sweeps: int = 1000
    burn_in: int = 300
    thin: int = 5
    weight_range: tuple[float, float] = (0.2, 0.8)
    mean_range: tuple[float, float] = (-5.0, 5.0)
    cos_threshold: float = 0.8
    locs: tuple[float, ...] = (0.0,)
    tau: float = 5.0
    alphas: tuple[float, ...] = (1.0,)
    # Chains whose mean log posterior is more than chain_gap nats below the best chain's are left out of the
    # estimate (a minor mode; module docstring). None keeps every chain.
    chain_gap: float | None = 3.0
    chunk_size: int | None = None  # tasks per chunk; None: min(batch, 64)

    def __post_init__(self):
        set_ = functools.partial(object.__setattr__, self)
        for name in ("weight_range", "mean_range", "locs", "alphas"):
            value = getattr(self, name)
            if not hasattr(value, "__iter__"):
                raise ValueError(f"BayesConfig.{name} must be a tuple of numbers, got {value!r}")
            set_(name, tuple(value))
        if self.variant != "isotropic":
            raise ValueError(
                f"the Bayes baseline covers only the isotropic variant (unit, known variance); got variant "
                f"{self.variant!r}"
            )
        if self.prior not in PRIORS:
            raise ValueError(f"BayesConfig.prior must be one of {PRIORS}, got {self.prior!r}")
        _check_int("chains", self.chains, 1)
        _check_int("thin", self.thin, 1)
        _check_int("burn_in", self.burn_in, 0)
        _check_int("sweeps", self.sweeps, 1)
        if self.sweeps - self.burn_in < self.thin:
            raise ValueError(
                f"BayesConfig keeps no sample: sweeps={self.sweeps} - burn_in={self.burn_in} < thin={self.thin}"
            )
        if self.chunk_size is not None:
            _check_int("chunk_size", self.chunk_size, 1)
        wr = self.weight_range
        if len(wr) != 2 or not all(_is_number(v) for v in wr) or not 0.0 < wr[0] < wr[1]:
            raise ValueError(f"BayesConfig.weight_range must be (lo, hi) with 0 < lo < hi, got {wr!r}")
        mr = self.mean_range
        if len(mr) != 2 or not all(_is_number(v) for v in mr) or not mr[0] < mr[1]:
            raise ValueError(f"BayesConfig.mean_range must be (lo, hi) with lo < hi, got {mr!r}")
        if not (_is_number(self.cos_threshold) and -1.0 < self.cos_threshold <= 1.0):
            raise ValueError(f"BayesConfig.cos_threshold must lie in (-1, 1], got {self.cos_threshold!r}")
        if self.chain_gap is not None and not (_is_number(self.chain_gap) and self.chain_gap >= 0):
            raise ValueError(f"BayesConfig.chain_gap must be None or a number >= 0, got {self.chain_gap!r}")
        if not (_is_number(self.tau) and self.tau > 0):
            raise ValueError(f"BayesConfig.tau must be a finite number > 0, got {self.tau!r}")
        if not self.locs or not all(_is_number(v) for v in self.locs):
            raise ValueError(
                f"BayesConfig.locs must be a non-empty tuple of finite numbers, got {self.locs!r}"
            )
        if not self.alphas or not all(_is_number(v) and v > 0 for v in self.alphas):
            raise ValueError(
                f"BayesConfig.alphas must be a non-empty tuple of numbers > 0, got {self.alphas!r}"
            )

    @property
    def kept(self) -> int:
        """Samples kept per chain."""
        return (self.sweeps - self.burn_in) // self.thin


def _per_component(values: tuple[float, ...], k_max: int, name: str) -> jax.Array:
    if len(values) not in (1, k_max):
        raise ValueError(
            f"BayesConfig.{name} has {len(values)} entries; give 1 (broadcast) or K_max = {k_max} entries"
        )
    return jnp.broadcast_to(jnp.asarray(values, jnp.float32), (k_max,))


# ----------------------------------------------------------------------------------------------------
# Prior densities (one chain, no batch axes).


def log_weight_prior(weights_K: jax.Array, component_mask_K: jax.Array, weight_range) -> jax.Array:
    """log p(pi) of pi = u / sum(u), u_k iid U[lo, hi], up to a constant (module docstring): scalar.

    p(pi) is proportional to (s_hi^K - s_lo^K)_+ with s_lo = lo / min_k pi_k, s_hi = hi / max_k pi_k;
    -inf outside the support (s_hi <= s_lo, i.e. max pi / min pi >= hi / lo).
    """
    lo, hi = weight_range
    k = jnp.sum(component_mask_K).astype(weights_K.dtype)
    w_min = jnp.min(jnp.where(component_mask_K, weights_K, jnp.inf))
    w_max = jnp.max(jnp.where(component_mask_K, weights_K, -jnp.inf))
    log_s_lo = math.log(lo) - jnp.log(jnp.maximum(w_min, 0.0))
    log_s_hi = math.log(hi) - jnp.log(w_max)
    gap = k * (log_s_lo - log_s_hi)  # log (s_lo / s_hi)^K, < 0 inside the support
    safe_gap = jnp.minimum(gap, -1e-30)
    return jnp.where(gap < 0, k * log_s_hi + jnp.log(-jnp.expm1(safe_gap)), -jnp.inf)


def _unit(v_XxD: jax.Array) -> jax.Array:
    return v_XxD / jnp.maximum(jnp.linalg.norm(v_XxD, axis=-1, keepdims=True), 1e-12)


def _cosine_ok_all(means_KxD: jax.Array, component_mask_K: jax.Array, threshold: float) -> jax.Array:
    """True where all pairwise cosines between the real means are < threshold (as tasks._cosine_ok)."""
    unit = means_KxD / jnp.maximum(jnp.linalg.norm(means_KxD, axis=-1, keepdims=True), 1e-12)
    cos_KxK = jnp.einsum("kd,jd->kj", unit, unit, precision=HIGHEST)
    k = component_mask_K.shape[0]
    checked = component_mask_K[:, None] & component_mask_K[None, :] & ~jnp.eye(k, dtype=bool)
    return jnp.all((cos_KxK < threshold) | ~checked)


def _log_prior(weights_K, means_KxD, component_mask_K, config: BayesConfig) -> jax.Array:
    """log p(pi) + log p(mu) up to a constant: scalar."""
    if config.prior == "conjugate":
        k_max = component_mask_K.shape[0]
        alphas_K = _per_component(config.alphas, k_max, "alphas")
        locs_K = _per_component(config.locs, k_max, "locs")
        log_w = jnp.log(jnp.maximum(weights_K, _TINY))
        lp_w = jnp.sum(jnp.where(component_mask_K, (alphas_K - 1.0) * log_w, 0.0))
        sq_K = jnp.sum((means_KxD - locs_K[:, None]) ** 2, axis=-1)
        return lp_w - 0.5 * jnp.sum(jnp.where(component_mask_K, sq_K, 0.0)) / config.tau**2
    a, b = config.mean_range
    in_box = jnp.all((means_KxD >= a) & (means_KxD <= b) | ~component_mask_K[:, None])
    ok = in_box & _cosine_ok_all(means_KxD, component_mask_K, config.cos_threshold)
    return log_weight_prior(weights_K, component_mask_K, config.weight_range) + jnp.where(ok, 0.0, -jnp.inf)


# ----------------------------------------------------------------------------------------------------
# Gibbs steps (one chain of one task, no batch axes; vmapped over chains and tasks).


def truncated_std_normal(u: jax.Array, lower: jax.Array, upper: jax.Array) -> jax.Array:
    """N(0, 1) truncated to [lower, upper] by inversion of a uniform ``u`` in (0, 1), elementwise.

    The interval is first reflected so that its centre is <= 0: then both CDF values are computed in the
    lower tail (``ndtr`` keeps relative precision there, unlike ``erf`` near +-1 in float32, which makes
    ``jax.random.truncated_normal`` collapse onto a bound beyond ~4 standard deviations). When even the
    upper bound of the reflected interval is beyond ``_FAR_TAIL`` standard deviations its CDF underflows,
    and the draw uses the tail's exponential approximation t = hi - E / |hi|, E ~ Exp(1) (density error
    O(1/hi^2) over a width O(1/|hi|)). The result is clipped into [lower, upper]: never NaN.
    """
    flip = lower + upper > 0
    lo = jnp.where(flip, -upper, lower)
    hi = jnp.where(flip, -lower, upper)
    far = hi < -_FAR_TAIL
    p_lo, p_hi = ndtr(lo), ndtr(hi)
    p = jnp.clip(p_lo + u * (p_hi - p_lo), _TINY, 1.0 - 1e-7)
    t = jnp.where(far, hi + jnp.log(u) / jnp.maximum(jnp.abs(hi), 1.0), ndtri(p))
    t = jnp.clip(t, lo, hi)
    return jnp.where(flip, -t, t)


def _z_step(u_N, x_NxD, sq_x_N, point_mask_N, component_mask_K, weights_K, means_KxD):
    """z_n | pi, mu, x ~ Cat(softmax(log pi_k - ||x_n - mu_k||^2 / 2)), by inversion of the uniforms
    ``u_N``; -1 on padded points. Also returns log p(x | pi, mu) of the real points (the Gaussian
    constant D/2 log 2 pi dropped)."""
    log_w_K = jnp.where(component_mask_K, jnp.log(jnp.maximum(weights_K, _TINY)), -jnp.inf)
    cross_NxK = jnp.einsum("nd,kd->nk", x_NxD, means_KxD, precision=HIGHEST)
    logits_NxK = cross_NxK + (log_w_K - 0.5 * jnp.sum(means_KxD**2, axis=-1))[None, :]
    lse_N = jax.nn.logsumexp(logits_NxK, axis=-1)
    probs_NxK = jnp.exp(logits_NxK - lse_N[:, None])
    cdf_NxK = jnp.cumsum(probs_NxK, axis=-1)
    hit_NxK = (cdf_NxK >= (u_N * cdf_NxK[:, -1])[:, None]) & (probs_NxK > 0)
    last_live = jnp.argmax(jnp.where(component_mask_K, jnp.arange(component_mask_K.shape[0]), -1))
    z_N = jnp.where(jnp.any(hit_NxK, axis=-1), jnp.argmax(hit_NxK, axis=-1), last_live).astype(jnp.int32)
    loglik = jnp.sum(jnp.where(point_mask_N, lse_N - 0.5 * sq_x_N, 0.0))
    return jnp.where(point_mask_N, z_N, -1), loglik


def _weight_step(g_key, u_MH, exp_K, exp_NxK, counts_K, weights_K, component_mask_K, config: BayesConfig):
    """pi | z. Returns (weights, accepted).

    Algorithm 1: independence MH with proposal Dirichlet(n + 1) (exact), ``u_MH`` its uniform. The
    Gamma(n_k + 1) variates are sums of n_k + 1 Exp(1) variates: ``exp_K[k]`` plus ``exp_NxK[n, k]``
    (one Exp(1) per point, one-hot on its component), an exact draw with no rejection loop.
    Conjugate: exact Dirichlet(n + alpha) draw (``jax.random.gamma`` with ``g_key``).
    """
    k_max = component_mask_K.shape[0]
    if config.prior == "conjugate":
        alpha_K = jnp.where(component_mask_K, counts_K + _per_component(config.alphas, k_max, "alphas"), 1.0)
        g_K = jnp.where(component_mask_K, jax.random.gamma(g_key, alpha_K), 0.0)
        return g_K / jnp.maximum(jnp.sum(g_K), _TINY), jnp.bool_(True)
    g_K = jnp.where(component_mask_K, exp_K + jnp.sum(exp_NxK, axis=0), 0.0)
    proposal_K = g_K / jnp.maximum(jnp.sum(g_K), _TINY)
    lp_old = log_weight_prior(weights_K, component_mask_K, config.weight_range)
    lp_new = log_weight_prior(proposal_K, component_mask_K, config.weight_range)
    # From outside the support (lp_old = -inf; only the initial state can be there) any proposal is taken.
    accept = (jnp.log(u_MH) < lp_new - lp_old) | (lp_old == -jnp.inf)
    return jnp.where(accept, proposal_K, weights_K), accept


def _mean_step(u_KxD, counts_K, sums_KxD, means_KxD, component_mask_K, config: BayesConfig):
    """mu | z, x, from the uniforms ``u_KxD``. Returns (means, number of accepted component updates)."""
    k_max = means_KxD.shape[0]
    n_Kx1 = counts_K[:, None]
    if config.prior == "conjugate":
        locs_K = _per_component(config.locs, k_max, "locs")
        prec_Kx1 = n_Kx1 + 1.0 / config.tau**2
        centre_KxD = (sums_KxD + locs_K[:, None] / config.tau**2) / prec_Kx1
        eps_KxD = ndtri(u_KxD)
        new_KxD = centre_KxD + eps_KxD / jnp.sqrt(prec_Kx1)
        new_KxD = jnp.where(component_mask_K[:, None], new_KxD, means_KxD)
        return new_KxD, jnp.sum(component_mask_K)
    # Algorithm 1: proposals from the conditional without the cosine constraint (box-truncated normal,
    # or uniform on the box when n_k = 0), drawn for all k at once: they depend on z and x only.
    a, b = config.mean_range
    safe_n_Kx1 = jnp.maximum(n_Kx1, 1.0)
    xbar_KxD = sums_KxD / safe_n_Kx1
    sd_Kx1 = 1.0 / jnp.sqrt(safe_n_Kx1)
    t_KxD = truncated_std_normal(u_KxD, (a - xbar_KxD) / sd_Kx1, (b - xbar_KxD) / sd_Kx1)
    prop_KxD = jnp.where(n_Kx1 > 0, xbar_KxD + sd_Kx1 * t_KxD, a + (b - a) * u_KxD)
    prop_KxD = jnp.clip(prop_KxD, a, b)
    unit_prop_KxD = prop_KxD / jnp.maximum(jnp.linalg.norm(prop_KxD, axis=-1, keepdims=True), 1e-12)
    unit_KxD = means_KxD / jnp.maximum(jnp.linalg.norm(means_KxD, axis=-1, keepdims=True), 1e-12)

    # The constraint couples the components: k = 0..K-1 in turn, each checked against the current others.
    def update(k, carry):
        means_KxD, unit_KxD, accepted = carry
        unit_D = unit_prop_KxD[k]
        cos_K = jnp.einsum("jd,d->j", unit_KxD, unit_D, precision=HIGHEST)
        others_K = component_mask_K & (jnp.arange(k_max) != k)
        ok = jnp.all((cos_K < config.cos_threshold) | ~others_K) & component_mask_K[k]
        means_KxD = jax.lax.dynamic_update_index_in_dim(
            means_KxD, jnp.where(ok, prop_KxD[k], means_KxD[k]), k, 0
        )
        unit_KxD = jax.lax.dynamic_update_index_in_dim(unit_KxD, jnp.where(ok, unit_D, unit_KxD[k]), k, 0)
        return means_KxD, unit_KxD, accepted + ok.astype(jnp.int32)

    means_KxD, _, accepted = jax.lax.fori_loop(0, k_max, update, (means_KxD, unit_KxD, jnp.int32(0)))
    return means_KxD, accepted


def _run_chain(key, x_NxD, point_mask_N, component_mask_K, config: BayesConfig, keep_labels):
    """One Gibbs chain on one task. Sweep t draws z_t | (pi, mu)_{t-1}, then pi_t | z_t, then mu_t | z_t;
    the recorded sample of sweep t is ((pi, mu)_{t-1}, z_t), a draw from the joint posterior once the chain
    is stationary, with log p(x, pi, mu) of (pi, mu)_{t-1} from the same pass."""
    n, d = x_NxD.shape
    k_max = component_mask_K.shape[0]
    x_NxD = jnp.where(point_mask_N[:, None], x_NxD, 0.0)
    init_key, key = jax.random.split(key)
    init_means_KxD = _initial_means(init_key, x_NxD, point_mask_N, component_mask_K, config)
    sq_x_N = jnp.sum(x_NxD**2, axis=-1)
    mask_f = component_mask_K.astype(x_NxD.dtype)
    weights_K = mask_f / jnp.sum(mask_f)
    kept, thin, burn_in = config.kept, config.thin, config.burn_in

    record = dict(
        weights=jnp.zeros((kept, k_max), x_NxD.dtype),
        means=jnp.zeros((kept, k_max, d), x_NxD.dtype),
        log_post=jnp.zeros((kept,), x_NxD.dtype),
    )
    if keep_labels:
        record["labels"] = jnp.zeros((kept, n), jnp.int32)

    def sweep(t, carry):
        weights_K, means_KxD, acc_w, acc_mu, record = carry
        # One threefry call for all uniforms of the sweep (each random call is a separate kernel, slow to
        # compile on CPU); g_key only serves the conjugate prior's gamma draws.
        u_key, g_key = jax.random.split(jax.random.fold_in(key, t))
        # Uniforms: z (N), MH (1), mean proposals (K D), exponentials for the Dirichlet (K + N).
        u = jax.random.uniform(u_key, (2 * n + 1 + k_max * (d + 1),), minval=1e-7, maxval=1.0 - 1e-7)
        exp_K = -jnp.log(u[n + 1 + k_max * d : n + 1 + k_max * (d + 1)])
        exp_N = -jnp.log(u[n + 1 + k_max * (d + 1) :])
        z_N, loglik = _z_step(u[:n], x_NxD, sq_x_N, point_mask_N, component_mask_K, weights_K, means_KxD)
        log_post = loglik + _log_prior(weights_K, means_KxD, component_mask_K, config)
        onehot_NxK = jax.nn.one_hot(z_N, k_max, dtype=x_NxD.dtype)  # all zero for z = -1 (padded)
        counts_K = jnp.sum(onehot_NxK, axis=0)
        sums_KxD = jnp.einsum("nk,nd->kd", onehot_NxK, x_NxD, precision=HIGHEST)
        exp_NxK = onehot_NxK * exp_N[:, None]
        new_w, w_ok = _weight_step(g_key, u[n], exp_K, exp_NxK, counts_K, weights_K, component_mask_K, config)
        u_KxD = u[n + 1 : n + 1 + k_max * d].reshape(k_max, d)
        new_mu, mu_ok = _mean_step(u_KxD, counts_K, sums_KxD, means_KxD, component_mask_K, config)
        after = t >= burn_in
        acc_w = acc_w + (after & w_ok).astype(jnp.int32)
        acc_mu = acc_mu + jnp.where(after, mu_ok, 0)
        # Keep the sample of sweeps burn_in + thin - 1, burn_in + 2 thin - 1, ... (a fixed-size buffer, one
        # row rewritten per sweep: one copy of the sweep in the compiled program).
        slot = (t - burn_in) // thin
        write = after & ((t - burn_in) % thin == thin - 1) & (slot < kept)
        slot = jnp.clip(slot, 0, kept - 1)
        row = dict(weights=weights_K, means=means_KxD, log_post=log_post)
        if keep_labels:
            row["labels"] = z_N
        record = {
            name: jax.lax.dynamic_update_index_in_dim(
                buf, jnp.where(write, row[name], buf[slot]), slot, axis=0
            )
            for name, buf in record.items()
        }
        return new_w, new_mu, acc_w, acc_mu, record

    carry = (weights_K, init_means_KxD, jnp.int32(0), jnp.int32(0), record)
    _, _, acc_w, acc_mu, record = jax.lax.fori_loop(0, config.sweeps, sweep, carry)
    after_sweeps = config.sweeps - burn_in
    record["weight_accept"] = acc_w / after_sweeps
    record["mean_accept"] = acc_mu / (after_sweeps * jnp.sum(component_mask_K))
    return record


def _initial_means(key, x_NxD, point_mask_N, component_mask_K, config: BayesConfig) -> jax.Array:
    """One chain's initial means: k-means++ seeding restricted to the prior's support: [K, D].

    The points are clipped into the box; seed j is drawn with probability proportional to the squared
    distance to the nearest earlier seed (the first uniformly) among the real points whose direction has
    cosine < threshold with every earlier seed. Where no point is admissible (e.g. a task with no points),
    the seed is the one of ``_BOX_CANDIDATES`` uniform draws on the box with the smallest largest cosine
    to the earlier seeds. So the initial means are almost always inside the support; if not, the mean step
    leaves the violating state as soon as its proposals satisfy the constraint.
    """
    k_max = component_mask_K.shape[0]
    n, d = x_NxD.shape
    a, b = config.mean_range
    u = jax.random.uniform(key, (k_max * (1 + _BOX_CANDIDATES * d),))
    u_pick_K = u[:k_max]
    cand_KxMxD = a + (b - a) * u[k_max:].reshape(k_max, _BOX_CANDIDATES, d)
    x_NxD = jnp.clip(x_NxD, a, b)
    unit_x_NxD = _unit(x_NxD)

    def step(j, carry):
        chosen_KxD, closest_N = carry
        earlier_K = jnp.arange(k_max) < j
        unit_chosen_KxD = _unit(chosen_KxD)

        def worst_cos(unit_MxD):
            cos_MxK = jnp.einsum("md,kd->mk", unit_MxD, unit_chosen_KxD, precision=HIGHEST)
            return jnp.max(jnp.where(earlier_K, cos_MxK, -jnp.inf), axis=-1)

        admissible_N = point_mask_N & (worst_cos(unit_x_NxD) < config.cos_threshold)
        w_N = jnp.where(admissible_N, jnp.where(j == 0, 1.0, closest_N), 0.0)
        cdf_N = jnp.cumsum(w_N)
        idx = jnp.minimum(jnp.sum(cdf_N < u_pick_K[j] * cdf_N[-1]), n - 1)
        cand_MxD = cand_KxMxD[j]
        new_D = jnp.where(cdf_N[-1] > 0, x_NxD[idx], cand_MxD[jnp.argmin(worst_cos(_unit(cand_MxD)))])
        new_D = jnp.where(component_mask_K[j], new_D, 0.0)
        chosen_KxD = jax.lax.dynamic_update_index_in_dim(chosen_KxD, new_D, j, axis=0)
        closer_N = jnp.minimum(closest_N, jnp.sum((x_NxD - new_D[None, :]) ** 2, axis=-1))
        return chosen_KxD, jnp.where(component_mask_K[j], closer_N, closest_N)

    init = (jnp.zeros((k_max, d), x_NxD.dtype), jnp.full((n,), jnp.inf, x_NxD.dtype))
    return jax.lax.fori_loop(0, k_max, step, init)[0]


def _sample_chunk(keys_C, task_C: GMMTask, config: BayesConfig, keep_labels: bool) -> dict:
    """Raw samples of every chain of a chunk of tasks: leaves [C, R, ...]."""
    chain_keys_CxR = jax.vmap(lambda k: jax.random.split(k, config.chains))(keys_C)
    run = functools.partial(_run_chain, config=config, keep_labels=keep_labels)
    run = jax.vmap(run, in_axes=(0, None, None, None))  # chains
    run = jax.vmap(run)  # tasks
    return run(chain_keys_CxR, task_C.points, task_C.point_mask, task_C.component_mask)


def _task_keys(key: jax.Array, batch: int):
    """One JAX key per task, from the task's index: a task's chains do not depend on the batch or chunking."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(batch))


def _chunk(config: BayesConfig, batch: int) -> int:
    return min(config.chunk_size or _DEFAULT_CHUNK, batch)


def _sample_posterior(
    key: jax.Array, task: GMMTask, config: BayesConfig = BayesConfig(), keep_labels: bool = False
) -> dict:
    """Raw (unaligned) posterior samples of every chain; R = config.chains, S = config.kept:

    weights [B, R, S, K], means [B, R, S, K, D], log_post [B, R, S] (log p(x, pi, mu) up to a constant),
    labels [B, R, S, N] (only with keep_labels; -1 on padded points), weight_accept, mean_accept [B, R].
    """
    _check_config(config, task)
    batch = task.points.shape[0]
    keys_B = _task_keys(key, batch)

    def fn(args):
        return _sample_chunk(*args, config=config, keep_labels=keep_labels)

    return map_task_chunks(fn, (keys_B, task), batch, _chunk(config, batch))


def _check_config(config: BayesConfig, task: GMMTask) -> None:
    if not isinstance(config, BayesConfig):
        raise TypeError(f"config must be a BayesConfig, got {type(config).__name__}")
    k_max = task.component_mask.shape[-1]
    if config.prior == "conjugate":
        _per_component(config.locs, k_max, "locs")
        _per_component(config.alphas, k_max, "alphas")


# ----------------------------------------------------------------------------------------------------
# Label alignment and the posterior mean.


def _align(weights_SxK, means_SxKxD, component_mask_K, ref_KxD):
    """Every sample's components permuted to best match ``ref`` (sum of squared mean distances)."""
    s = means_SxKxD.shape[0]
    # ||m_i - r_j||^2 expanded: no [S, K, K, D] intermediate (the means are O(10): no cancellation issue).
    cross_SxKxK = jnp.einsum("sid,jd->sij", means_SxKxD, ref_KxD, precision=HIGHEST)
    sq_m_SxK = jnp.sum(means_SxKxD**2, axis=-1)
    sq_r_K = jnp.sum(ref_KxD**2, axis=-1)
    cost_SxKxK = sq_m_SxK[:, :, None] - 2.0 * cross_SxKxK + sq_r_K[None, None, :]
    mask_SxK = jnp.broadcast_to(component_mask_K, (s, component_mask_K.shape[0]))
    index_SxK = best_permutation(masked_match_cost(cost_SxKxK, mask_SxK))
    take = jax.vmap(lambda a, i: a[i])
    return take(weights_SxK, index_SxK), take(means_SxKxD, index_SxK)


def aligned_posterior_mean(samples: dict, component_mask_K: jax.Array, chain_gap: float | None = None):
    """One task: (weights [K], means [K, D], chain_spread) from raw samples (leaves [R, S, ...]).

    Reference = the sample of highest log p(x, pi, mu); every sample is aligned to it, then once more to
    the mean of the aligned samples, and averaged. Samples outside the prior's support (log p = -inf: a
    chain that has not yet left a violating initial state) are left out, unless all are. Components come
    out in ascending weight order (as the tasks), padded ones last. chain_spread = max over chain pairs of
    1/(K D) sum_k ||m_r,k - m_r',k||^2, m_r the aligned mean of chain r (chains without a sample in the
    support are left out).
    """
    r, s, k_max, d = samples["means"].shape
    weights_SxK = samples["weights"].reshape(r * s, k_max)
    means_SxKxD = samples["means"].reshape(r * s, k_max, d)
    log_post = samples["log_post"].reshape(r * s)
    finite_RxS = jnp.isfinite(samples["log_post"])
    # A chain's mean log posterior over its samples in the support (-inf if it has none).
    count_R = jnp.sum(finite_RxS, axis=1)
    chain_lp_R = jnp.sum(jnp.where(finite_RxS, samples["log_post"], 0.0), axis=1) / jnp.maximum(count_R, 1)
    chain_lp_R = jnp.where(count_R > 0, chain_lp_R, -jnp.inf)
    keep_R = count_R > 0
    if chain_gap is not None:
        keep_R &= chain_lp_R >= jnp.max(chain_lp_R) - chain_gap
    use_RxS = finite_RxS & keep_R[:, None]
    use_S = jnp.where(jnp.any(use_RxS), use_RxS, True).reshape(r * s).astype(means_SxKxD.dtype)

    ref_KxD = means_SxKxD[jnp.argmax(jnp.where(jnp.isnan(log_post), -jnp.inf, log_post))]
    w, mu = _align(weights_SxK, means_SxKxD, component_mask_K, ref_KxD)
    total = jnp.sum(use_S)
    mu_mean = jnp.einsum("s,skd->kd", use_S, mu) / total
    w, mu = _align(weights_SxK, means_SxKxD, component_mask_K, mu_mean)
    weights_K = jnp.einsum("s,sk->k", use_S, w) / total
    means_KxD = jnp.einsum("s,skd->kd", use_S, mu) / total

    use_RxS = use_S.reshape(r, s)
    count_R = jnp.sum(use_RxS, axis=1)
    chains_used = jnp.sum(count_R > 0)
    chain_means_RxKxD = (
        jnp.einsum("rs,rskd->rkd", use_RxS, mu.reshape(r, s, k_max, d))
        / jnp.maximum(count_R, 1.0)[:, None, None]
    )
    sq_RxRxK = jnp.sum((chain_means_RxKxD[:, None] - chain_means_RxKxD[None, :]) ** 2, axis=-1)
    pair_RxR = (count_R[:, None] > 0) & (count_R[None, :] > 0)
    k_real = jnp.sum(component_mask_K)
    sq_RxR = jnp.sum(jnp.where(component_mask_K[None, None, :], sq_RxRxK, 0.0), axis=-1)
    spread = jnp.max(jnp.where(pair_RxR, sq_RxR, 0.0)) / (k_real * d)

    order_K = jnp.argsort(jnp.where(component_mask_K, weights_K, jnp.inf))
    weights_K = jnp.where(component_mask_K, weights_K[order_K], 0.0)
    means_KxD = jnp.where(component_mask_K[:, None], means_KxD[order_K], 0.0)
    return weights_K, means_KxD, spread, chains_used


def _fit_bayes(
    key: jax.Array, task: GMMTask, config: BayesConfig = BayesConfig()
) -> tuple[MixtureParams, dict]:
    """The aligned posterior mean of every task. Returns (MixtureParams [B, K_max, ...] with scales=None,
    info of [B] arrays: valid, chain_spread, weight_accept, mean_accept, log_post_max)."""
    _check_config(config, task)
    k_max = task.component_mask.shape[-1]
    if k_max > MAX_BRUTE_FORCE_K:
        raise ValueError(
            f"the Bayes baseline aligns labels by enumerating all K! permutations; K_max={k_max} exceeds "
            f"{MAX_BRUTE_FORCE_K}"
        )
    batch = task.points.shape[0]
    keys_B = _task_keys(key, batch)

    def fn(args):
        task_C = args[1]
        samples = _sample_chunk(*args, config=config, keep_labels=False)
        weights, means, spread, used = jax.vmap(
            functools.partial(aligned_posterior_mean, chain_gap=config.chain_gap)
        )({name: samples[name] for name in ("weights", "means", "log_post")}, task_C.component_mask)
        return dict(
            weights=weights,
            means=means,
            chain_spread=spread,
            chains_used=used,
            weight_accept=jnp.mean(samples["weight_accept"], axis=-1),
            mean_accept=jnp.mean(samples["mean_accept"], axis=-1),
            log_post_max=jnp.max(samples["log_post"], axis=(-2, -1)),
        )

    out = map_task_chunks(fn, (keys_B, task), batch, _chunk(config, batch))
    params = MixtureParams(out["weights"], out["means"], None, task.component_mask)
    names = ("chain_spread", "chains_used", "weight_accept", "mean_accept", "log_post_max")
    info = {name: out[name] for name in names}
    info["valid"] = mixture_steps.finite_estimates(out["weights"], out["means"])
    return params, info


fit_bayes = jax.jit(_fit_bayes, static_argnames=("config",))
sample_posterior = jax.jit(_sample_posterior, static_argnames=("config", "keep_labels"))
