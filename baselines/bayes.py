"""Bayes reference baseline: the posterior mean under exactly the prior the tasks are drawn from, by MCMC.

``fit_bayes(key, task, config=BayesConfig()) -> (MixtureParams, info)`` estimates every task of a padded
``GMMTask`` batch (its own K from ``component_mask``, its own real points from ``point_mask``) by the
aligned posterior mean of (weights, means) under the isotropic Algorithm-1 prior (``mean_shift`` 0), or
under the phase-transition tasks' prior (``prior='phase_transition'``, section at the end).
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
  points    z_n ~ Cat(pi), x_n ~ N(mu_{z_n}, I) (unit variance, known; a known or unknown sigma: 'Noise scale'
            below).
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
means (``metrics.optimal_assignment``: all K! permutations for K_max <= 6, the Hungarian algorithm above, an
exact minimiser either way), first to the sample of highest log posterior, then once more to the mean of the
aligned samples; the estimate is the mean of the aligned samples (weights, means), components in ascending
weight order. Returned as MixtureParams(weights, means, scales=None, component_mask).

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
    the mean l2 over 256 tasks (0.080; 0.083 with 8 chains, 0.081 with 2x sweeps). Not so at d = 2,
    K = 6..8 without the cosine filter (overlapping means; ``benchmarks.estimator --bayes_tasks``): on its
    first 16 K = 6 tasks the defaults gave a mean l2 of 0.75 and 0.52 with two keys (single tasks moved by up
    to 2.5), 16 chains x 4000 sweeps 0.44 and 0.42, 64 x 4000 0.45, 16 x 16000 0.42; there use 16 x 4000
    (``--bayes_chains=16 --bayes_sweeps=4000``: mean l2 over 64 tasks per K 0.42 / 0.45 / 0.58 at
    K = 6 / 7 / 8, against 0.57 / 0.50 / 0.60 with the defaults);
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

Measured (default config: 4 chains, 1000 sweeps, burn-in 300, thin 5; a 2-core CPU shared with another
job's test suite, load average ~3): 0.04 s per task at d = 2, K = 5, N = 128 and 0.065 s per task at
d = 32, K = 5, N = 128 (64 tasks a call, compile excluded; compiling takes 5-10 s per shape).
Quality at d = 2, K = 5, N = 128 (sample_tasks, 64 tasks): mean l2 0.067 +- 0.007 vs em_kmeanspp's
0.187 +- 0.083, ratio 0.36 (0.33 over 256 tasks). The ratio is set by em_kmeanspp's failures (l2 > 1 on
~6% of tasks); on the other tasks it is 0.66-0.86 (0.73 over 256). At d = 32: 0.0440 vs 0.0462 (ratio 0.95).

Noise scale (``BayesConfig.noise_scale``, ``noise_scale_range``): the prior of ``TaskSpec(noise_scale_range=
...)``, in which the task is sigma times a unit-noise Algorithm-1 task (the means' box scales with sigma:
mu_k = sigma nu_k, nu_k in [a, b]^D with the cosine constraint, x_n ~ N(mu_{z_n}, sigma^2 I)).
  * known sigma = c (``noise_scale=c``, default 1.0): exactly a rescaling. The sampler runs on x / c under
    the unit prior and the means (samples and estimate) are multiplied by c; for every prior. The estimate's
    scales are c (None at the default c = 1, whose code path and numbers are unchanged).
  * unknown sigma (``noise_scale=None``, ``noise_scale_range=(lo, hi)``, prior='algorithm1' and a mean_range
    with a < 0 < b): log sigma ~ U[log lo, log hi]. The chain state is (pi, nu, s = log sigma); steps 1-3
    run on x / sigma exactly as above (unit noise in the units of sigma), then two slice-sampling steps on s
    (exact: shrinkage from the whole bracket, which is bounded, no stepping out; ``_slice_sample``):
      4a. s | nu, z, x (the means move with sigma): log density -N D s - sum_n ||x_n e^{-s} - nu_{z_n}||^2 / 2
          on [log lo, log hi] (the log-uniform prior is flat in s; nu's prior does not depend on sigma).
      4b. s | mu = sigma nu, z, x (the means held fixed in data units; nu <- mu / sigma'): in (mu, s)
          coordinates the box's density is sigma^{-K D}, so the log density is
          -(N + K) D s - sum_n ||x_n - mu_{z_n}||^2 e^{-2s} / 2 on s >= log lo, s <= log hi and
          mu / sigma in the box (sigma >= max over coordinates of mu / b or mu / a; the cosine constraint is
          scale-invariant).
    4a alone mixes slowly when the data pin the means (sigma then moves all means at once), 4b alone when
    the box binds (no data: sigma >= max |mu| / 5); together they cover both. The initial sigma is the
    points' rms deviation from their mean / sqrt(1 + (b - a)^2 / 12) (their spread under the prior when the
    components are spread over the box; sqrt(lo hi) without points), clipped into [lo, hi]; the initial nu
    as above on x / sigma. Samples record the means in data units and sigma; log_post is log p(x, pi, nu, s)
    up to a constant. The estimate adds the aligned posterior mean E[sigma] (over the same kept samples) as
    the scales, info['noise_scale'] = E[sigma] and info['noise_variance'] = E[sigma^2].
    Checked in tests/test_bayes.py against the exact posterior (enumeration of the 2^N assignments in D = 1
    with a quadrature over sigma), and against sigma = 1 on rescaled data.
  * per-component scales (``component_scale_range=(lo, hi)``, with a known or an unknown sigma; TaskSpec's
    option of the same name): component k's standard deviation is sigma u_k, log u_k ~ U[log lo, log hi]
    (the box still scales with sigma). The state adds v_k = log u_k; step 1 uses each component's variance
    (``_z_step_scaled``), step 3's proposal has standard deviation u_k / sqrt(n_k), then per component an
    exact slice step on v_k | nu, z, x (log density -n_k D v - SS_k e^{-2v} / 2, SS_k the component's sum of
    squares in the units of sigma; ``_component_steps``); 4a and 4b weight each point by 1 / u_{z_n}^2, and
    a step 4c moves s with mu and every sigma_k = sigma u_k fixed (u_k <- sigma_k / sigma): the likelihood is
    then constant and the log density -K D s on the intersection of sigma's range, the box's bound and every
    u_k's range (without it sigma and the u_k trade off along a ridge only through the box). Samples record
    component_scales [K] = sigma u_k; the estimate's scales are their aligned posterior means (permuted with
    the means), info['component_scale'] and info['component_variance'] = E[sigma_k], E[sigma_k^2] [B, K].
    Checked against a 3-D quadrature (log sigma, log u_0, log u_1) on top of the enumeration of z
    (tests/test_bayes.py; dropping 4c's density or halving the u-step's n_k D both fail it at z > 9).
    Measured (64 tasks of TaskSpec(dim=2, ks=(5,), N fixed, noise_scale_range=(0.01, 100),
    component_scale_range=(0.5, 2)), default 1000 sweeps; in units of sigma): N = 128: l2 0.118 +- 0.018 vs
    scikit-learn's GaussianMixture(spherical, n_init=10) 0.543 +- 0.123 (paired -0.43 +- 0.12), l2_scales
    0.029 vs 0.083; N = 32: 0.553 +- 0.067 vs 2.04 +- 0.25, l2_scales 0.088 vs 0.433. 25-32 s for the 64
    tasks, compile included, on a 2-core CPU under load.
  Measured, unknown sigma without per-component scales (64 tasks of TaskSpec(dim=2, ks=(5,), N fixed,
    noise_scale_range=(0.01, 100)) = sigma times the unit tasks of the same key; l2 in units of sigma,
    l2_means / sigma^2 + l2_weights; a 2-core CPU under load):
    N = 128: 0.107 +- 0.019 (default 1000 sweeps) and 0.093 (3000 sweeps, burn-in 900) vs 0.090 +- 0.010 for
    sigma = 1 known on the unit tasks (paired difference 0.017 +- 0.010 at 1000 sweeps, 0.004 +- 0.006 at
    3000: the excess is Monte-Carlo error on a few tasks whose chains visit different modes); E[sigma] /
    sigma 1.00 +- 0.04; scikit-learn's GaussianMixture(spherical, n_init=10) 0.368 +- 0.096, em_kmeanspp
    (sigma known) 0.248. N = 16: 0.864 +- 0.101 vs 0.845 +- 0.098 known; E[sigma] / sigma 1.00 +- 0.11;
    GaussianMixture 2.08 +- 0.20 (its sigma_k / sigma 0.52: overfitting); em_kmeanspp (known) 1.53. The
    time per task is about that of the known-sigma chain (the sigma steps are O(N D) plus O(1) per slice
    draw; 29 s vs 36 s for the 64 tasks at N = 128, compile included, under load).

``prior='phase_transition'``: the two-component tasks of ``tasks.sample_phase_transition_tasks(key, n, a, b,
batch)``, padded or not (``experiments.studies.phase_transition.run.pad_components``: K_max = 5, 2 real ones).
``BayesConfig(prior='phase_transition', delta=Delta)``, Delta = sqrt((1 + sqrt(a)) log n) (required, > 0;
the estimator knows it, as the tasks' setting fixes it). The prior:
  weights   fixed (1/2, 1/2); labels s_n = +1 (component 0) or -1 (component 1), each with probability 1/2;
  means     mu_{0,1} = c +- h u, h = Delta / 2, u uniform on the unit sphere S^{D-1}, c ~ N(0, Delta^2 I);
  points    x_n ~ N(c + s_n h u, I).
Blocked Gibbs sampler, one sweep (vmapped over tasks and chains; every step an exact conditional draw):
  1. s | c, u: P(s_n = +1) = sigmoid(Delta u . (x_n - c)) (||u|| = 1 cancels the quadratic terms).
  2. u | s, with c integrated out: with m = sum_n s_n and P = N + 1 / Delta^2 (c's posterior precision),
     -1/2 sum_n ||x_n - c - s_n h u||^2 - ||c||^2 / (2 Delta^2) integrates over c to
     h u . (sum_n s_n x_n - m sum_n x_n / P) + m^2 h^2 / (2 P) + const (every |u|^2 term is constant on
     the sphere), so u | s is von Mises-Fisher with natural parameter theta = h (sum_n s_n x_n -
     m sum_n x_n / P), drawn exactly by Wood's (1994) rejection sampler (``sample_von_mises_fisher``; stable
     for any kappa = ||theta||; D = 1 is the exact sign draw).
  3. c | s, u ~ N((sum_n x_n - m h u) / P, I / P).
  Steps 2-3 draw (u, c) | s jointly, which removes the c-u coupling of a plain three-step Gibbs sweep. Padded
  points have s = 0 and count nowhere; padded components get weight 0, means 0 (the two real components go
  to the first two real slots of component_mask). The recorded sample of sweep t is (s_t, c_t, u_t), a joint
  posterior draw at stationarity; log_post is log p(x, s_t) up to a constant, m^2 h^2 / (2 P) +
  log(kappa^{-nu} I_nu(kappa)), nu = D/2 - 1, the Bessel term by ``log_vmf_normaliser`` (within ~0.1 nat:
  it only ranks chains for ``chain_gap`` and picks the alignment reference). Initial state per chain:
  c = the mean of the points, u = their top principal direction (power iteration from a random start, so
  the sign is random).
Label switching: the posterior is symmetric under (s, u) -> (-s, -u) (swapping the components). Samples are
aligned as for the other priors, by the best permutation of the means to the kept sample of highest log_post,
then to the mean of the aligned samples (closed form for K = 2: swap iff u . u_ref < 0); the estimate is the
aligned posterior mean of the means, weights exactly (1/2, 1/2) (``_pt_posterior_mean``). A task whose real K
is not 2 raises ValueError in ``fit_bayes`` and ``sample_posterior`` when the arrays are concrete
(``check_phase_transition_task``); inside an outer jit its estimate is NaN and info['valid'] False.
info: valid, chain_spread, chains_used, log_post_max (of log p(x, s)), vmf_accept (accepted / proposed
Wood proposals after burn-in: 0.65-0.85 on the study's tasks), weight_accept = mean_accept = 1 (no MH step).
Exactness: every step is an exact conditional draw (float32; the uniforms are in [1e-7, 1 - 1e-7]); checked
in tests/test_bayes.py against the exact posterior by enumerating s in {-1, +1}^8 at D = 3 (with c and u
integrated out in closed form) and the vMF draws against E[mu . u] = A_D(kappa) = I_{D/2}(kappa) /
I_{D/2-1}(kappa) and the second moment for D in {1, 2, 62, 621}, kappa up to 1e4. Mixing: at rho = 1,
b = 1 the chains' mean log p(x, s) differ by a few nats (slow moves in s), so chain_gap = 3 drops ~10% of
chains; with chain_gap=None the estimate moves by an l2 of ~6e-6 (vs its own l2 0.012).
Written without dot_general (elementwise products and sums): jaxlib 0.10.2's CPU backend miscompiles some
vmapped matrix-vector products followed by a reduction (jax-ml/jax#39103); a first version of the vMF draw,
vmapped over 3 x 2000 lanes with jnp.dot, returned wrong directions on 70% of one row's lanes.
Cost (default config: 4 chains x 1000 sweeps, burn-in 300, thin 5; n = 128; 16 tasks a call, compile
excluded; a 2-core CPU shared with another job, load average 5-6): 0.07 s CPU (0.10-0.14 s wall) per
task at b = 0.1 (D = 62) and 0.55 s CPU (0.8-0.95 s wall) per task at b = 1 (D = 621), linear in N D
(two N x D products per sweep and chain). Compiling takes ~10-25 s per (shape, Delta): Delta is a static
config field, so each rho of a study compiles once.
Quality: mean l2 (evaluate_estimates after padding to K_max = 5) over 16 tasks per cell
(sample_phase_transition_tasks(key(int(100 rho)), 128, a_for(rho, b), b, 16)), rho = Delta / Delta_line
(``experiments.studies.phase_transition.run.a_for``), +- standard error, em_kmeanspp on the same tasks:
    b = 0.1 (D = 62)   rho = 1: 0.0148 +- 0.0005 vs 0.0208 +- 0.0012 (ratio 0.71; Bayes lower on 16/16)
                       rho = 1.5: 0.0147 +- 0.0005 vs 0.0185 +- 0.0012 (0.80; 16/16)
                       rho = 2: 0.0160 +- 0.0004 vs 0.0185 +- 0.0009 (0.86; 15/16)
    b = 1 (D = 621)    rho = 1: 0.0120 +- 0.0002 vs 0.0473 +- 0.0101 (0.25; 16/16)
                       rho = 1.5: 0.0127 +- 0.0001 vs 0.0197 +- 0.0013 (0.65; 16/16)
                       rho = 2: 0.0136 +- 0.0002 vs 0.0180 +- 0.0008 (0.76; 16/16)
The error is of the order of the means' statistical error with known labels (1/(N/2) = 0.016 per
coordinate; less at D = 621, where the shared offset c is estimated from all N points and u's prior
shrinks), which is why it hardly depends on rho. chain_spread is ~2-3e-4 in every cell above (vs l2 ~0.013).
Also d2 (n = 32, D = 2) at rho = 0.75, 1, 2: 0.091, 0.078, 0.047 vs 0.32, 0.14, 0.070 (chain_spread ~2e-3);
d8 (n = 128, D = 8) at rho = 1, 2: 0.0154, 0.0159 vs 0.0207, 0.0193; 0.03-0.05 s per task.
Doubling the sweeps moves the estimate by a mean l2 of 4.0e-5 (b = 0.1) and 4.6e-5 (b = 1) at rho = 1,
less than a rerun with another seed moves it (5.5e-5, 7.2e-5); its mean l2 to the truth changes by < 5e-5.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtr, ndtri

from baselines.chunking import map_task_chunks
from tgmm_jax.gmm import MixtureParams
from tgmm_jax.metrics import masked_match_cost, optimal_assignment
from tgmm_jax.mixture import fused
from tgmm_jax.tasks import GMMTask

HIGHEST = jax.lax.Precision.HIGHEST
PRIORS = ("algorithm1", "conjugate", "phase_transition")
_TINY = 1e-30
# Standardised truncation bound beyond which the truncated normal uses its exponential tail approximation.
_FAR_TAIL = 10.0
# Default number of tasks per chunk (the chain state of a task is a few KiB; see fit_bayes).
_DEFAULT_CHUNK = 64
# Uniform box draws tried for an initial seed when no data point is admissible.
_BOX_CANDIDATES = 64
# prior='phase_transition': largest number of kept-sample floats (R S 2 D per task) in one chunk, 32 MiB.
_PT_CHUNK_ELEMENTS = 1 << 23
# Power-iteration steps for the initial direction u (top principal direction of the centred points).
_POWER_STEPS = 30
# Largest number of shrinkage steps of one slice-sampling update of log sigma (each at least halves the
# bracket in expectation; the bracket starts at most ~10 wide and the conditional is >~1e-3 wide).
_SLICE_STEPS = 48


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
    ``delta`` is the separation Delta of ``prior='phase_transition'`` (required there, > 0; an error with
    the other priors): the tasks of ``sample_phase_transition_tasks(key, n, a, b, batch)`` have
    Delta = sqrt((1 + sqrt(a)) log n).
    ``weight_range``, ``mean_range``, ``cos_threshold`` are the Algorithm-1 prior's; the phase-transition
    prior ignores them.
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
    delta: float | None = None
    # Chains whose mean log posterior is more than chain_gap nats below the best chain's are left out of the
    # estimate (a minor mode; module docstring). None keeps every chain.
    chain_gap: float | None = 3.0
    chunk_size: int | None = None  # tasks per chunk; None: min(batch, 64)
    # The noise standard deviation in the data's units; None: unknown, log-uniform on noise_scale_range (the
    # means' box scales with it, as TaskSpec's; module docstring).
    noise_scale: float | None = 1.0
    noise_scale_range: tuple[float, float] | None = None
    # Per-component standard deviations sigma u_k, u_k log-uniform on this range (TaskSpec's
    # component_scale_range); None: u_k = 1.
    component_scale_range: tuple[float, float] | None = None

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
        for name in ("noise_scale_range", "component_scale_range"):
            value = getattr(self, name)
            if value is not None and hasattr(value, "__iter__"):
                set_(name, tuple(value))
        _check_noise(self)
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
        if self.prior == "phase_transition":
            if not (_is_number(self.delta) and self.delta > 0):
                raise ValueError(
                    f"BayesConfig(prior='phase_transition') needs delta, the separation Delta = "
                    f"sqrt((1 + sqrt(a)) log n) of the tasks, a finite number > 0; got delta={self.delta!r}"
                )
        elif self.delta is not None:
            raise ValueError(
                f"BayesConfig.delta is used by prior='phase_transition' only; got delta={self.delta!r} with "
                f"prior={self.prior!r}"
            )

    @property
    def kept(self) -> int:
        """Samples kept per chain."""
        return (self.sweeps - self.burn_in) // self.thin


def _check_noise(config: BayesConfig) -> None:
    cr = config.component_scale_range
    if cr is not None:
        if len(cr) != 2 or not all(_is_number(v) for v in cr) or not 0.0 < cr[0] < cr[1]:
            raise ValueError(
                f"BayesConfig.component_scale_range must be (lo, hi) with 0 < lo < hi, got {cr!r}"
            )
        if config.prior != "algorithm1":
            raise ValueError(
                f"per-component scales are implemented for prior='algorithm1' only, got {config.prior!r}"
            )
    nr = config.noise_scale_range
    if config.noise_scale is not None:
        if not (_is_number(config.noise_scale) and config.noise_scale > 0):
            raise ValueError(
                f"BayesConfig.noise_scale must be a finite number > 0 (known) or None (unknown), got "
                f"{config.noise_scale!r}"
            )
        if nr is not None:
            raise ValueError(
                f"BayesConfig.noise_scale_range is the prior of an unknown noise scale (noise_scale=None); got "
                f"noise_scale={config.noise_scale!r} and noise_scale_range={nr!r}"
            )
        return
    if nr is None or len(nr) != 2 or not all(_is_number(v) for v in nr) or not 0.0 < nr[0] < nr[1]:
        raise ValueError(
            f"BayesConfig(noise_scale=None) needs noise_scale_range=(lo, hi) with 0 < lo < hi, got {nr!r}"
        )
    if config.prior != "algorithm1":
        raise ValueError(
            f"an unknown noise scale is implemented for prior='algorithm1' only, got {config.prior!r}"
        )
    a, b = config.mean_range
    if not a < 0.0 < b:
        raise ValueError(
            f"an unknown noise scale needs a mean_range (a, b) with a < 0 < b (the box scales with sigma), got "
            f"{config.mean_range!r}"
        )


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


def _z_step_scaled(u_N, x_NxD, sq_x_N, point_mask_N, component_mask_K, weights_K, means_KxD, log_u_K):
    """``_z_step`` with per-component standard deviations u_k (in the units of x): z_n ~ Cat(softmax(log pi_k
    - D log u_k - ||x_n - mu_k||^2 / (2 u_k^2))); log p(x | pi, mu, u) without the Gaussian constant."""
    d = x_NxD.shape[1]
    prec_K = jnp.exp(-2.0 * log_u_K)
    log_w_K = jnp.where(component_mask_K, jnp.log(jnp.maximum(weights_K, _TINY)), -jnp.inf)
    cross_NxK = jnp.einsum("nd,kd->nk", x_NxD, means_KxD, precision=HIGHEST)
    const_K = log_w_K - d * log_u_K - 0.5 * prec_K * jnp.sum(means_KxD**2, axis=-1)
    logits_NxK = prec_K[None, :] * (cross_NxK - 0.5 * sq_x_N[:, None]) + const_K[None, :]
    lse_N = jax.nn.logsumexp(logits_NxK, axis=-1)
    probs_NxK = jnp.exp(logits_NxK - lse_N[:, None])
    cdf_NxK = jnp.cumsum(probs_NxK, axis=-1)
    hit_NxK = (cdf_NxK >= (u_N * cdf_NxK[:, -1])[:, None]) & (probs_NxK > 0)
    last_live = jnp.argmax(jnp.where(component_mask_K, jnp.arange(component_mask_K.shape[0]), -1))
    z_N = jnp.where(jnp.any(hit_NxK, axis=-1), jnp.argmax(hit_NxK, axis=-1), last_live).astype(jnp.int32)
    loglik = jnp.sum(jnp.where(point_mask_N, lse_N, 0.0))
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


def _mean_step(u_KxD, counts_K, sums_KxD, means_KxD, component_mask_K, config: BayesConfig, sd_K=None):
    """mu | z, x, from the uniforms ``u_KxD``; ``sd_K`` the components' noise standard deviations (None: 1).
    Returns (means, number of accepted component updates)."""
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
    if sd_K is not None:
        sd_Kx1 = sd_K[:, None] * sd_Kx1
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


def _slice_sample(key, log_f, s0, lower, upper):
    """One slice-sampling update of a scalar s0 in [lower, upper] for the (unnormalised) log density
    ``log_f``: the slice level log_f(s0) - Exp(1), then uniform draws on the bracket, shrunk towards s0 after
    each draw outside the slice (Neal 2003, no stepping out: the bracket is the whole bounded support).
    Exact; after ``_SLICE_STEPS`` misses (never seen) it keeps s0. Returns (s, number of draws)."""
    u = jax.random.uniform(key, (_SLICE_STEPS + 1,), minval=1e-7, maxval=1.0 - 1e-7)
    level = log_f(s0) + jnp.log(u[0])

    def body(carry):
        i, lo, hi, s, _ = carry
        s1 = lo + u[i + 1] * (hi - lo)
        inside = log_f(s1) > level
        lo = jnp.where(s1 < s0, s1, lo)
        hi = jnp.where(s1 >= s0, s1, hi)
        return i + 1, lo, hi, jnp.where(inside, s1, s), inside

    init = (jnp.int32(0), lower, upper, s0, jnp.bool_(False))
    steps, _, _, s, _ = jax.lax.while_loop(lambda c: ~c[4] & (c[0] < _SLICE_STEPS), body, init)
    return s, steps


def _noise_steps(
    key, log_sigma, nu_KxD, x_NxD, onehot_NxK, n_real, component_mask_K, config: BayesConfig, log_u_K=None
):
    """Steps 4a and 4b (and 4c with per-component scales u_k = exp(log_u_K)) of an unknown noise scale
    (module docstring): (log sigma, nu, log u) after them."""
    d = x_NxD.shape[1]
    k_real = jnp.sum(component_mask_K).astype(x_NxD.dtype)
    log_lo, log_hi = (math.log(v) for v in config.noise_scale_range)
    a, b = config.mean_range
    key_a, key_b, key_c = jax.random.split(key, 3)
    # Each point's precision factor 1 / u_{z_n}^2 (0 on padded points, whose one-hot rows are zeros).
    if log_u_K is None:
        w_N = jnp.sum(onehot_NxK, axis=-1)
    else:
        w_N = onehot_NxK @ jnp.exp(-2.0 * log_u_K)
    # 4a. s | nu: sum_n w_n ||x_n - sigma nu_z||^2 = A - 2 (sigma - sigma0) B + (sigma - sigma0)^2 C, expanded
    # around the current sigma0 (no cancellation near it).
    sigma0 = jnp.exp(log_sigma)
    nu_N = onehot_NxK @ nu_KxD
    resid_NxD = x_NxD - sigma0 * nu_N
    a_ss = jnp.sum(w_N * jnp.sum(resid_NxD**2, axis=-1))
    b_ss = jnp.sum(w_N * jnp.sum(resid_NxD * nu_N, axis=-1))
    c_ss = jnp.sum(w_N * jnp.sum(nu_N**2, axis=-1))

    def log_f_a(s):
        step = jnp.exp(s) - sigma0
        ss = jnp.maximum(a_ss - 2.0 * step * b_ss + step**2 * c_ss, 0.0)
        return -n_real * d * s - 0.5 * ss * jnp.exp(-2.0 * s)

    log_sigma, _ = _slice_sample(key_a, log_f_a, log_sigma, jnp.float32(log_lo), jnp.float32(log_hi))
    # 4b. s | mu = sigma nu (fixed in data units) and u, subject to mu / sigma in the box.
    sigma = jnp.exp(log_sigma)
    mu_KxD = sigma * nu_KxD
    ss = jnp.sum(w_N * jnp.sum((x_NxD - onehot_NxK @ mu_KxD) ** 2, axis=-1))
    need_KxD = jnp.where(mu_KxD > 0, mu_KxD / b, mu_KxD / a)  # sigma >= this, per coordinate (a < 0 < b)
    need = jnp.max(jnp.where(component_mask_K[:, None], need_KxD, 0.0))
    log_need = jnp.log(jnp.maximum(need, _TINY))
    lower = jnp.minimum(jnp.maximum(jnp.float32(log_lo), log_need), log_sigma)

    def log_f_b(s):
        return -(n_real + k_real) * d * s - 0.5 * ss * jnp.exp(-2.0 * s)

    new_log_sigma, _ = _slice_sample(key_b, log_f_b, log_sigma, lower, jnp.float32(log_hi))
    if log_u_K is not None:
        # 4c. s | mu and the components' sigma_k = sigma u_k (both fixed in data units; u_k <- sigma_k / sigma):
        # the likelihood is constant, the density -K D s on the box's, sigma's and every u_k's ranges.
        log_sigma_k_K = new_log_sigma + log_u_K
        log_u_lo, log_u_hi = (math.log(v) for v in config.component_scale_range)
        lower = jnp.maximum(
            jnp.maximum(jnp.float32(log_lo), log_need),
            jnp.max(jnp.where(component_mask_K, log_sigma_k_K - log_u_hi, -jnp.inf)),
        )
        upper = jnp.minimum(
            jnp.float32(log_hi), jnp.min(jnp.where(component_mask_K, log_sigma_k_K - log_u_lo, jnp.inf))
        )
        lower, upper = jnp.minimum(lower, new_log_sigma), jnp.maximum(upper, new_log_sigma)
        s_c, _ = _slice_sample(key_c, lambda s: -k_real * d * s, new_log_sigma, lower, upper)
        log_u_K = jnp.where(component_mask_K, jnp.clip(log_sigma_k_K - s_c, log_u_lo, log_u_hi), 0.0)
        new_log_sigma = s_c
    nu_KxD = jnp.clip(mu_KxD * jnp.exp(-new_log_sigma), a, b)
    return new_log_sigma, jnp.where(component_mask_K[:, None], nu_KxD, 0.0), log_u_K


def _component_steps(
    key, log_u_K, nu_KxD, xs_NxD, onehot_NxK, counts_K, component_mask_K, config: BayesConfig
):
    """log u_k | nu, z, x for every component (independent given them; slice sampling, exact): log density
    -n_k D v - SS_k e^{-2v} / 2 on [log lo, log hi], SS_k = sum_{z_n = k} ||x_n / sigma - nu_k||^2."""
    d = xs_NxD.shape[1]
    log_lo, log_hi = (math.log(v) for v in config.component_scale_range)
    resid_NxD = xs_NxD - onehot_NxK @ nu_KxD
    ss_K = jnp.einsum("nk,n->k", onehot_NxK, jnp.sum(resid_NxD**2, axis=-1), precision=HIGHEST)

    def one(key, v0, n_k, ss):
        return _slice_sample(
            key,
            lambda v: -n_k * d * v - 0.5 * ss * jnp.exp(-2.0 * v),
            v0,
            jnp.float32(log_lo),
            jnp.float32(log_hi),
        )[0]

    keys = jax.random.split(key, log_u_K.shape[0])
    new_K = jax.vmap(one)(keys, log_u_K, counts_K, ss_K)
    return jnp.where(component_mask_K, new_K, 0.0)


def _initial_log_sigma(x_NxD, point_mask_N, config: BayesConfig) -> jax.Array:
    """log of the initial sigma of an unknown noise scale (module docstring), inside [log lo, log hi]."""
    lo, hi = config.noise_scale_range
    a, b = config.mean_range
    n_real = jnp.sum(point_mask_N).astype(x_NxD.dtype)
    centre_D = jnp.sum(x_NxD, axis=0) / jnp.maximum(n_real, 1.0)  # padded rows are zero
    dev = jnp.sum(jnp.where(point_mask_N[:, None], (x_NxD - centre_D[None, :]) ** 2, 0.0))
    rms = jnp.sqrt(dev / jnp.maximum(n_real * x_NxD.shape[1], 1.0)) / math.sqrt(1.0 + (b - a) ** 2 / 12.0)
    guess = jnp.where(rms > 0, jnp.log(jnp.maximum(rms, _TINY)), 0.5 * (math.log(lo) + math.log(hi)))
    return jnp.clip(guess, math.log(lo), math.log(hi))


def _run_chain(key, x_NxD, point_mask_N, component_mask_K, config: BayesConfig, keep_labels):
    """One Gibbs chain on one task. Sweep t draws z_t | (pi, mu)_{t-1}, then pi_t | z_t, then mu_t | z_t;
    the recorded sample of sweep t is ((pi, mu)_{t-1}, z_t), a draw from the joint posterior once the chain
    is stationary, with log p(x, pi, mu) of (pi, mu)_{t-1} from the same pass. With an unknown noise scale
    the means of the state are nu = mu / sigma, steps 1-3 see x / sigma, and steps 4a-4b update sigma; the
    record holds mu = sigma nu and sigma (``noise_scale``)."""
    n, d = x_NxD.shape
    k_max = component_mask_K.shape[0]
    unknown = config.noise_scale is None
    per_component = config.component_scale_range is not None
    x_NxD = jnp.where(point_mask_N[:, None], x_NxD, 0.0)
    init_key, key = jax.random.split(key)
    log_sigma = jnp.zeros((), x_NxD.dtype)
    log_u_K = jnp.zeros((k_max,), x_NxD.dtype)
    if per_component:  # u_k = 1 (clipped into the prior's range) to start
        u_lo, u_hi = config.component_scale_range
        log_u_K = jnp.where(component_mask_K, jnp.clip(log_u_K, math.log(u_lo), math.log(u_hi)), 0.0)
    if unknown:
        log_sigma = _initial_log_sigma(x_NxD, point_mask_N, config)
        n_real = jnp.sum(point_mask_N).astype(x_NxD.dtype)
    x_init_NxD = x_NxD * jnp.exp(-log_sigma) if unknown else x_NxD
    init_means_KxD = _initial_means(init_key, x_init_NxD, point_mask_N, component_mask_K, config)
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
    if unknown:
        record["noise_scale"] = jnp.zeros((kept,), x_NxD.dtype)
    if per_component:
        record["component_scales"] = jnp.zeros((kept, k_max), x_NxD.dtype)

    def sweep(t, carry):
        weights_K, means_KxD, log_sigma, log_u_K, acc_w, acc_mu, record = carry
        # One threefry call for all uniforms of the sweep (each random call is a separate kernel, slow to
        # compile on CPU); g_key serves the conjugate prior's gamma draws, or the unknown noise scale's steps.
        u_key, g_key = jax.random.split(jax.random.fold_in(key, t))
        # Uniforms: z (N), MH (1), mean proposals (K D), exponentials for the Dirichlet (K + N).
        u = jax.random.uniform(u_key, (2 * n + 1 + k_max * (d + 1),), minval=1e-7, maxval=1.0 - 1e-7)
        exp_K = -jnp.log(u[n + 1 + k_max * d : n + 1 + k_max * (d + 1)])
        exp_N = -jnp.log(u[n + 1 + k_max * (d + 1) :])
        if unknown:  # steps 1-3 in the units of sigma
            inv_sigma = jnp.exp(-log_sigma)
            xs_NxD, sq_xs_N = x_NxD * inv_sigma, sq_x_N * inv_sigma**2
        else:
            xs_NxD, sq_xs_N = x_NxD, sq_x_N
        if per_component:
            z_N, loglik = _z_step_scaled(
                u[:n], xs_NxD, sq_xs_N, point_mask_N, component_mask_K, weights_K, means_KxD, log_u_K
            )
        else:
            z_N, loglik = _z_step(
                u[:n], xs_NxD, sq_xs_N, point_mask_N, component_mask_K, weights_K, means_KxD
            )
        if unknown:
            loglik = loglik - n_real * d * log_sigma
        log_post = loglik + _log_prior(weights_K, means_KxD, component_mask_K, config)
        onehot_NxK = jax.nn.one_hot(z_N, k_max, dtype=x_NxD.dtype)  # all zero for z = -1 (padded)
        counts_K = jnp.sum(onehot_NxK, axis=0)
        sums_KxD = jnp.einsum("nk,nd->kd", onehot_NxK, xs_NxD, precision=HIGHEST)
        exp_NxK = onehot_NxK * exp_N[:, None]
        new_w, w_ok = _weight_step(g_key, u[n], exp_K, exp_NxK, counts_K, weights_K, component_mask_K, config)
        u_KxD = u[n + 1 : n + 1 + k_max * d].reshape(k_max, d)
        sd_K = jnp.exp(log_u_K) if per_component else None
        new_mu, mu_ok = _mean_step(u_KxD, counts_K, sums_KxD, means_KxD, component_mask_K, config, sd_K)
        new_log_sigma, new_log_u = log_sigma, log_u_K
        if per_component:
            c_key, g_key = jax.random.split(g_key)
            new_log_u = _component_steps(
                c_key, log_u_K, new_mu, xs_NxD, onehot_NxK, counts_K, component_mask_K, config
            )
        if unknown:
            new_log_sigma, new_mu, new_log_u = _noise_steps(
                g_key,
                log_sigma,
                new_mu,
                x_NxD,
                onehot_NxK,
                n_real,
                component_mask_K,
                config,
                new_log_u if per_component else None,
            )
            new_log_u = log_u_K if new_log_u is None else new_log_u
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
        if unknown:
            row["means"] = jnp.exp(log_sigma) * means_KxD
            row["noise_scale"] = jnp.exp(log_sigma)
        if per_component:
            row["component_scales"] = jnp.where(component_mask_K, jnp.exp(log_sigma + log_u_K), 0.0)
        record = {
            name: jax.lax.dynamic_update_index_in_dim(
                buf, jnp.where(write, row[name], buf[slot]), slot, axis=0
            )
            for name, buf in record.items()
        }
        return new_w, new_mu, new_log_sigma, new_log_u, acc_w, acc_mu, record

    carry = (weights_K, init_means_KxD, log_sigma, log_u_K, jnp.int32(0), jnp.int32(0), record)
    _, _, _, _, acc_w, acc_mu, record = jax.lax.fori_loop(0, config.sweeps, sweep, carry)
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


# ----------------------------------------------------------------------------------------------------
# prior='phase_transition': two components c +- (Delta / 2) u, u uniform on the sphere (module docstring).


def sample_von_mises_fisher(key: jax.Array, theta_D: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One exact draw u on the unit sphere S^{D-1} with density proportional to exp(theta . u).

    Returns (u [D], number of proposals). D = 1 (the sphere {-1, +1}): P(u = +1) = sigmoid(2 theta).
    D >= 2: Wood's (1994) rejection sampler for W = mu . u (mu = theta / kappa, kappa = ||theta||), then
    u = W mu + sqrt(1 - W^2) v with v uniform on the unit sphere orthogonal to mu. The proposal is
    W = (1 - (1 + b) Z) / (1 - (1 - b) Z), Z ~ Beta((D - 1) / 2, (D - 1) / 2), accepted with probability
    exp(kappa (W - x0) + (D - 1) log((1 - x0 W) / (1 - x0^2))) <= 1, where
    b = (D - 1) / (2 kappa + sqrt(4 kappa^2 + (D - 1)^2)) and x0 = (1 - b) / (1 + b). Every quantity near
    W = 1 is computed from 1 - W = 2 b Z / (1 - (1 - b) Z), 1 + W = 2 (1 - Z) / (1 - (1 - b) Z),
    1 - x0 = 2 b / (1 + b) and 1 - x0^2 = 4 b / (1 + b)^2 (no cancellation in float32 for any kappa).
    Z = A / (A + B) with A, B independent Gamma((D - 1) / 2) (``jax.random.gamma``: exact, O(1) per draw
    whatever D). The measured mean number of proposals is <= 1.52 over D in [2, 621] and kappa in
    [0, 1e4] (1 at kappa = 0, largest at large kappa); the loop (``lax.while_loop``, vmappable) draws
    until acceptance. kappa = 0 gives b = 1, x0 = 0: every proposal is accepted and W = 1 - 2 Z, the
    uniform distribution's. Elementwise products and sums only (no dot_general: see ``_pt_posterior_mean``).
    """
    d = theta_D.shape[-1]
    dtype = theta_D.dtype
    if d == 1:
        u01 = jax.random.uniform(key, (), dtype, minval=1e-7, maxval=1.0 - 1e-7)
        return jnp.where(u01 < jax.nn.sigmoid(2.0 * theta_D), 1.0, -1.0).astype(dtype), jnp.int32(1)
    kappa = jnp.sqrt(jnp.sum(theta_D**2))
    e1_D = jnp.zeros((d,), dtype).at[0].set(1.0)
    mu_D = jnp.where(kappa > 0, theta_D / jnp.maximum(kappa, _TINY), e1_D)
    p1 = float(d - 1)
    b = p1 / (2.0 * kappa + jnp.sqrt(4.0 * kappa**2 + p1**2))
    x0 = (1.0 - b) / (1.0 + b)
    one_minus_x0 = 2.0 * b / (1.0 + b)
    log_one_minus_x0_sq = jnp.log(4.0 * b) - 2.0 * jnp.log1p(b)
    loop_key, v_key = jax.random.split(key)

    def propose(i):
        u_key, g_key = jax.random.split(jax.random.fold_in(loop_key, i))
        log_u = jnp.log(jax.random.uniform(u_key, (), dtype, minval=1e-7, maxval=1.0 - 1e-7))
        g_2 = jax.random.gamma(g_key, jnp.full((2,), p1 / 2.0, dtype))
        total = jnp.maximum(g_2[0] + g_2[1], _TINY)  # both underflow to 0 with probability ~1e-19 at D = 2
        z, one_minus_z = g_2[0] / total, g_2[1] / total
        denom = 1.0 - (1.0 - b) * z
        one_minus_w = 2.0 * b * z / denom
        one_plus_w = 2.0 * one_minus_z / denom
        log_ratio = kappa * (one_minus_x0 - one_minus_w) + p1 * (
            jnp.log(one_minus_x0 + x0 * one_minus_w) - log_one_minus_x0_sq
        )
        return log_u <= log_ratio, one_minus_w, one_plus_w

    def body(carry):
        i, _, _, _ = carry
        ok, one_minus_w, one_plus_w = propose(i)
        return i + 1, ok, one_minus_w, one_plus_w

    zero = jnp.zeros((), dtype)
    tries, _, one_minus_w, one_plus_w = jax.lax.while_loop(
        lambda carry: ~carry[1], body, (jnp.int32(0), jnp.bool_(False), zero, zero)
    )
    g_D = jax.random.normal(v_key, (d,), dtype)
    v_D = g_D - jnp.sum(g_D * mu_D) * mu_D
    v_D = v_D / jnp.maximum(jnp.linalg.norm(v_D), _TINY)
    w = 1.0 - one_minus_w
    u_D = w * mu_D + jnp.sqrt(jnp.maximum(one_minus_w * one_plus_w, 0.0)) * v_D
    return u_D / jnp.linalg.norm(u_D), tries


def log_vmf_normaliser(kappa: jax.Array, d: int) -> jax.Array:
    """log of kappa^{-nu} I_nu(kappa), nu = D / 2 - 1 (the vMF normaliser's kappa-dependence, i.e.
    log E_{u uniform}[exp(kappa mu . u)] up to a constant), approximately, up to a constant in kappa.

    It is the integral of A_D(t) = I_{D/2}(t) / I_{D/2-1}(t) from 0 to kappa with A_D replaced by the
    Amos-type form t / (alpha + sqrt(t^2 + beta^2)), alpha = (D - 1) / 2, beta = D / 2 + 1/5, whose
    integral is r - alpha log(alpha + r), r = sqrt(kappa^2 + beta^2). Over kappa in [0.01, 1e5] its error
    (up to a constant) varies by at most 0.11 nats at D = 1, 0.07 at D = 2, 0.04 for D >= 8 in exact
    arithmetic (float32 adds ~1e-7 kappa; checked against scipy in tests/test_bayes.py), slowly with
    kappa. Used only to rank chains and pick the reference sample (``log_post`` of the phase-transition
    prior), never in a sampling step.
    """
    alpha, beta = (d - 1) / 2.0, d / 2.0 + 0.2
    r = jnp.sqrt(kappa**2 + beta**2)
    return r - alpha * jnp.log(alpha + r)


def _initial_direction(key, xc_NxD) -> jax.Array:
    """Top principal direction of the centred points ``xc`` by power iteration from a random start (so
    its sign is random: chains start in either of the two mirror-image labellings): [D]."""
    v_D = jax.random.normal(key, (xc_NxD.shape[1],), xc_NxD.dtype)

    def step(_, v_D):
        w_D = jnp.sum(xc_NxD * jnp.sum(xc_NxD * v_D[None, :], axis=-1, keepdims=True), axis=0)
        return w_D / jnp.maximum(jnp.linalg.norm(w_D), _TINY)

    v_D = jax.lax.fori_loop(0, _POWER_STEPS, step, v_D / jnp.linalg.norm(v_D))
    # No points (or all equal): a random direction.
    start_D = jax.random.normal(key, v_D.shape, v_D.dtype)
    return jnp.where(jnp.linalg.norm(v_D) > 0.5, v_D, start_D / jnp.linalg.norm(start_D))


def _run_chain_phase_transition(key, x_NxD, point_mask_N, config: BayesConfig, keep_labels):
    """One blocked Gibbs chain of the phase-transition prior on one task. Sweep t draws s_t | (c, u)_{t-1},
    then u_t | s_t (c integrated out: von Mises-Fisher), then c_t | s_t, u_t (Gaussian), and records
    (s_t, c_t, u_t): a draw from the joint posterior once the chain is stationary. Returns the record
    with means [S, 2, D] (component 0 = c + (Delta / 2) u: s = +1), log_post [S] (log p(x, s) up to a
    constant, approximate: ``log_vmf_normaliser``), labels [S, N] (0 for s = +1, 1 for s = -1, -1 on
    padded points; only with keep_labels) and vmf_accept (accepted / proposed vMF draws after burn-in).
    """
    n, d = x_NxD.shape
    dtype = x_NxD.dtype
    delta = float(config.delta)
    h = delta / 2.0
    x_NxD = jnp.where(point_mask_N[:, None], x_NxD, 0.0)
    mask_f_N = point_mask_N.astype(dtype)
    n_real = jnp.sum(mask_f_N)
    prec = n_real + 1.0 / delta**2  # posterior precision of c (per coordinate) given s and u
    sum_x_D = jnp.sum(x_NxD, axis=0)
    init_key, key = jax.random.split(key)
    mean_D = sum_x_D / jnp.maximum(n_real, 1.0)
    c_D = mean_D
    u_D = _initial_direction(init_key, jnp.where(point_mask_N[:, None], x_NxD - mean_D[None, :], 0.0))
    kept, thin, burn_in = config.kept, config.thin, config.burn_in

    record = dict(means=jnp.zeros((kept, 2, d), dtype), log_post=jnp.zeros((kept,), dtype))
    if keep_labels:
        record["labels"] = jnp.zeros((kept, n), jnp.int32)

    def sweep(t, carry):
        c_D, u_D, tries, record = carry
        sweep_key = jax.random.fold_in(key, t)
        s_key, v_key, c_key = jax.random.split(sweep_key, 3)
        # 1. s_n | c, u: P(s_n = +1) = sigmoid(Delta u . (x_n - c)); s = 0 on padded points.
        u_N = jax.random.uniform(s_key, (n,), dtype, minval=1e-7, maxval=1.0 - 1e-7)
        proj_N = jnp.sum(x_NxD * u_D[None, :], axis=-1) - jnp.sum(c_D * u_D)
        s_N = jnp.where(u_N < jax.nn.sigmoid(delta * proj_N), 1.0, -1.0) * mask_f_N
        m = jnp.sum(s_N)
        # 2. u | s (c integrated out): vMF with theta = h (sum_n s_n x_n - m sum_n x_n / prec).
        theta_D = h * (jnp.sum(s_N[:, None] * x_NxD, axis=0) - (m / prec) * sum_x_D)
        u_D, n_tries = sample_von_mises_fisher(v_key, theta_D)
        # 3. c | s, u ~ N((sum_n x_n - m h u) / prec, I / prec).
        c_D = (sum_x_D - (m * h) * u_D) / prec + jax.random.normal(c_key, (d,), dtype) / jnp.sqrt(prec)
        kappa = jnp.sqrt(jnp.sum(theta_D**2))
        log_post = (m * h) ** 2 / (2.0 * prec) + log_vmf_normaliser(kappa, d)
        after = t >= burn_in
        tries = tries + jnp.where(after, n_tries, 0)
        slot = (t - burn_in) // thin
        write = after & ((t - burn_in) % thin == thin - 1) & (slot < kept)
        slot = jnp.clip(slot, 0, kept - 1)
        row = dict(means=jnp.stack([c_D + h * u_D, c_D - h * u_D]), log_post=log_post)
        if keep_labels:
            row["labels"] = jnp.where(point_mask_N, (s_N < 0).astype(jnp.int32), -1)
        record = {
            name: jax.lax.dynamic_update_index_in_dim(
                buf, jnp.where(write, row[name], buf[slot]), slot, axis=0
            )
            for name, buf in record.items()
        }
        return c_D, u_D, tries, record

    _, _, tries, record = jax.lax.fori_loop(0, config.sweeps, sweep, (c_D, u_D, jnp.int32(0), record))
    record["vmf_accept"] = (config.sweeps - burn_in) / jnp.maximum(tries, 1).astype(dtype)
    return record


def _real_pair(component_mask_K: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Indices of the first two real components (where the two phase-transition components go)."""
    order_K = jnp.argsort(~component_mask_K, stable=True)
    return order_K[0], order_K[1]


def _expand_pair(weights_X2, means_X2xD, component_mask_K):
    """Two-component parameters [..., 2] placed at the first two real components of K_max: weights
    [..., K], means [..., K, D] (padded components weight 0, means 0)."""
    i0, i1 = _real_pair(component_mask_K)
    k_max = component_mask_K.shape[0]
    index_K = jnp.arange(k_max)
    lead = (1,) * (weights_X2.ndim - 1)
    first_K = ((index_K == i0) & component_mask_K).reshape(lead + (k_max,))
    second_K = ((index_K == i1) & component_mask_K).reshape(lead + (k_max,))
    weights_XK = jnp.where(first_K, weights_X2[..., :1], jnp.where(second_K, weights_X2[..., 1:], 0.0))
    first_Kx1, second_Kx1 = first_K[..., None], second_K[..., None]
    means_XKxD = jnp.where(
        first_Kx1, means_X2xD[..., :1, :], jnp.where(second_Kx1, means_X2xD[..., 1:, :], 0.0)
    )
    return weights_XK, means_XKxD


def _pt_chunk(config: BayesConfig, batch: int, d: int) -> int:
    if config.chunk_size is not None:
        return min(config.chunk_size, batch)
    per_task = config.chains * config.kept * 2 * d
    return max(1, min(_DEFAULT_CHUNK, _PT_CHUNK_ELEMENTS // per_task, batch))


def _sample_chunk_phase_transition(keys_C, task_C: GMMTask, config: BayesConfig, keep_labels: bool) -> dict:
    """Raw two-component samples of every chain of a chunk of tasks: leaves [C, R, ...]."""
    chain_keys_CxR = jax.vmap(lambda k: jax.random.split(k, config.chains))(keys_C)
    run = functools.partial(_run_chain_phase_transition, config=config, keep_labels=keep_labels)
    run = jax.vmap(run, in_axes=(0, None, None))  # chains
    run = jax.vmap(run)  # tasks
    return run(chain_keys_CxR, task_C.points, task_C.point_mask)


def check_phase_transition_task(task: GMMTask) -> None:
    """ValueError unless every task of ``task`` has exactly 2 real components (host-side, concrete arrays;
    a no-op on traced arrays, where such tasks get NaN estimates and info['valid'] False instead)."""
    mask = task.component_mask
    if isinstance(mask, jax.core.Tracer):
        return
    k_real_B = np.sum(np.asarray(mask), axis=-1)
    bad = np.flatnonzero(k_real_B != 2)
    if bad.size:
        raise ValueError(
            "BayesConfig(prior='phase_transition') fits two-component tasks only (sample_phase_transition_"
            f"tasks, padded or not); tasks {bad[:10].tolist()} have {k_real_B[bad[:10]].tolist()} real "
            "components"
        )


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
    labels [B, R, S, N] (only with keep_labels; -1 on padded points), weight_accept, mean_accept [B, R];
    noise_scale [B, R, S] (sigma) with an unknown noise scale. Means in the data's units.
    """
    _check_config(config, task)
    scale = _known_scale(config)
    if scale is not None:  # a known sigma = c: the unit-noise posterior of x / c, means times c
        samples = _sample_posterior(key, _rescaled(task, scale), _unit_noise(config), keep_labels)
        samples = dict(samples, means=samples["means"] * scale)
        if "component_scales" in samples:
            samples["component_scales"] = samples["component_scales"] * scale
        return samples
    batch = task.points.shape[0]
    keys_B = _task_keys(key, batch)
    if config.prior == "phase_transition":

        def fn_pt(args):
            return _expand_samples(
                _sample_chunk_phase_transition(*args, config=config, keep_labels=keep_labels),
                args[1].component_mask,
            )

        chunk = _pt_chunk(config, batch, task.points.shape[-1])
        return map_task_chunks(fn_pt, (keys_B, task), batch, chunk)

    def fn(args):
        return _sample_chunk(*args, config=config, keep_labels=keep_labels)

    return map_task_chunks(fn, (keys_B, task), batch, _chunk(config, batch))


def _expand_samples(samples: dict, component_mask_CxK: jax.Array) -> dict:
    """Two-component phase-transition samples (leaves [C, R, ...]) in the K_max layout of the other priors:
    weights [C, R, S, K] (1/2 at the two real components), means [C, R, S, K, D], labels the components'
    indices; weight_accept and mean_accept 1 (no Metropolis-Hastings step), vmf_accept as sampled."""
    means = samples["means"]
    half = jnp.full(means.shape[:-2] + (2,), 0.5, means.dtype)
    weights, means = jax.vmap(_expand_pair)(half, means, component_mask_CxK)
    ones = jnp.ones(samples["vmf_accept"].shape, means.dtype)
    out = dict(
        weights=weights,
        means=means,
        log_post=samples["log_post"],
        weight_accept=ones,
        mean_accept=ones,
        vmf_accept=samples["vmf_accept"],
    )
    if "labels" in samples:
        i0_C, i1_C = jax.vmap(_real_pair)(component_mask_CxK)
        labels = samples["labels"]
        index = lambda i: i[:, None, None, None]
        out["labels"] = jnp.where(labels == 0, index(i0_C), jnp.where(labels == 1, index(i1_C), -1))
    return out


def _check_config(config: BayesConfig, task: GMMTask) -> None:
    if not isinstance(config, BayesConfig):
        raise TypeError(f"config must be a BayesConfig, got {type(config).__name__}")
    k_max = task.component_mask.shape[-1]
    if config.prior == "conjugate":
        _per_component(config.locs, k_max, "locs")
        _per_component(config.alphas, k_max, "alphas")
    if config.prior == "phase_transition" and k_max < 2:
        raise ValueError(
            f"BayesConfig(prior='phase_transition') fits two-component tasks; this batch has K_max={k_max}"
        )


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
    index_SxK = optimal_assignment(masked_match_cost(cost_SxKxK, mask_SxK))
    take = jax.vmap(lambda a, i: a[i])
    return take(weights_SxK, index_SxK), take(means_SxKxD, index_SxK), index_SxK


def kept_samples(log_post_RxS: jax.Array, chain_gap: float | None) -> jax.Array:
    """Which samples of one task enter its estimate ([R, S] bool): those in the prior's support of the chains
    within ``chain_gap`` of the best chain's mean log posterior (all samples if none qualifies)."""
    finite_RxS = jnp.isfinite(log_post_RxS)
    # A chain's mean log posterior over its samples in the support (-inf if it has none).
    count_R = jnp.sum(finite_RxS, axis=1)
    chain_lp_R = jnp.sum(jnp.where(finite_RxS, log_post_RxS, 0.0), axis=1) / jnp.maximum(count_R, 1)
    chain_lp_R = jnp.where(count_R > 0, chain_lp_R, -jnp.inf)
    keep_R = count_R > 0
    if chain_gap is not None:
        keep_R &= chain_lp_R >= jnp.max(chain_lp_R) - chain_gap
    use_RxS = finite_RxS & keep_R[:, None]
    return jnp.where(jnp.any(use_RxS), use_RxS, True)


def _aligned_samples(samples: dict, component_mask_K: jax.Array, chain_gap: float | None):
    """One task's samples aligned for averaging: (weights [S, K], means [S, K, D], index [S, K], use [S]) with
    S = R * S' flattened; sample s's component j is its raw component index[s, j], use[s] = 1 for the samples
    that enter the estimate (``kept_samples``). Reference = the sample of highest log p(x, pi, mu); every
    sample is aligned to it, then once more to the mean of the aligned samples."""
    r, s, k_max, d = samples["means"].shape
    weights_SxK = samples["weights"].reshape(r * s, k_max)
    means_SxKxD = samples["means"].reshape(r * s, k_max, d)
    log_post = samples["log_post"].reshape(r * s)
    use_S = kept_samples(samples["log_post"], chain_gap).reshape(r * s).astype(means_SxKxD.dtype)

    ref_KxD = means_SxKxD[jnp.argmax(jnp.where(jnp.isnan(log_post), -jnp.inf, log_post))]
    w, mu, _ = _align(weights_SxK, means_SxKxD, component_mask_K, ref_KxD)
    mu_mean = jnp.einsum("s,skd->kd", use_S, mu) / jnp.sum(use_S)
    w, mu, index_SxK = _align(weights_SxK, means_SxKxD, component_mask_K, mu_mean)
    return w, mu, index_SxK, use_S


def _weight_order(weights_K, component_mask_K) -> jax.Array:
    """The estimate's component order: ascending posterior-mean weight ``weights_K``, padded components last."""
    return jnp.argsort(jnp.where(component_mask_K, weights_K, jnp.inf))


def aligned_posterior_mean(samples: dict, component_mask_K: jax.Array, chain_gap: float | None = None):
    """One task: (weights [K], means [K, D], chain_spread, chains_used) from raw samples (leaves [R, S, ...]);
    with samples['component_scales'] [R, S, K] also their aligned E[sigma_k], E[sigma_k^2] [K].

    Every sample is aligned (``_aligned_samples``), then averaged. Samples outside the prior's support
    (log p = -inf: a chain that has not yet left a violating initial state) are left out, unless all are.
    Components come out in ascending weight order (as the tasks), padded ones last. chain_spread = max over
    chain pairs of 1/(K D) sum_k ||m_r,k - m_r',k||^2, m_r the aligned mean of chain r (chains without a
    sample in the support are left out).
    """
    r, s, k_max, d = samples["means"].shape
    w, mu, index_SxK, use_S = _aligned_samples(samples, component_mask_K, chain_gap)
    total = jnp.sum(use_S)
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

    order_K = _weight_order(weights_K, component_mask_K)
    weights_K = jnp.where(component_mask_K, weights_K[order_K], 0.0)
    means_KxD = jnp.where(component_mask_K[:, None], means_KxD[order_K], 0.0)
    if "component_scales" not in samples:
        return weights_K, means_KxD, spread, chains_used
    # Per-component scales, permuted as the means: (E[sigma_k] [K], E[sigma_k^2] [K]) as two more outputs.
    scales_SxK = jax.vmap(lambda a, i: a[i])(samples["component_scales"].reshape(r * s, k_max), index_SxK)
    moments = [jnp.einsum("s,sk->k", use_S, scales_SxK**p) / total for p in (1, 2)]
    moments = [jnp.where(component_mask_K, m[order_K], 0.0) for m in moments]
    return weights_K, means_KxD, spread, chains_used, moments[0], moments[1]


def posterior_responsibilities(
    samples: dict,
    x_NxD: jax.Array,
    point_mask_N: jax.Array,
    component_mask_K: jax.Array,
    chain_gap: float | None = None,
    noise_variance: float = 1.0,
) -> jax.Array:
    """One task's posterior membership probabilities P(z_n = k | x) [N, K], in the component order of
    ``aligned_posterior_mean`` (same samples, same alignment): the average over the kept aligned samples of
    each sample's E-step, pi_k N(x_n; mu_k, noise_variance I) normalised over k (Rao-Blackwellised: the
    exact conditional of z given the sample, not the sampled labels). Rows of padded points are zero, and so
    are the columns of padded components. Isotropic components with one known noise variance only."""
    w, mu, _, use_S = _aligned_samples(samples, component_mask_K, chain_gap)
    # ||x_n - mu_k||^2 expanded, as in _align: no [S, N, K, D] intermediate
    cross_SxNxK = jnp.einsum("nd,skd->snk", x_NxD, mu, precision=HIGHEST)
    sq_x_N = jnp.sum(x_NxD**2, axis=-1)
    sq_SxNxK = sq_x_N[None, :, None] - 2.0 * cross_SxNxK + jnp.sum(mu**2, axis=-1)[:, None, :]
    log_w_SxK = jnp.log(jnp.maximum(w, _TINY))
    logits_SxNxK = log_w_SxK[:, None, :] - 0.5 * sq_SxNxK / noise_variance
    logits_SxNxK = jnp.where(component_mask_K[None, None, :], logits_SxNxK, -jnp.inf)
    resp_SxNxK = jax.nn.softmax(logits_SxNxK, axis=-1)
    resp_NxK = jnp.einsum("s,snk->nk", use_S, resp_SxNxK) / jnp.sum(use_S)
    order_K = _weight_order(jnp.einsum("s,sk->k", use_S, w) / jnp.sum(use_S), component_mask_K)
    resp_NxK = resp_NxK[:, order_K]
    return jnp.where(point_mask_N[:, None] & component_mask_K[None, :], resp_NxK, 0.0)


def _fit_bayes(
    key: jax.Array, task: GMMTask, config: BayesConfig = BayesConfig()
) -> tuple[MixtureParams, dict]:
    """The aligned posterior mean of every task. Returns (MixtureParams [B, K_max, ...] with scales=None (or
    the known sigma, or E[sigma] of an unknown one), info of [B] arrays: valid, chain_spread, weight_accept,
    mean_accept, log_post_max; noise_scale and noise_variance (E[sigma], E[sigma^2]) unless sigma = 1)."""
    _check_config(config, task)
    scale = _known_scale(config)
    if scale is not None:  # a known sigma = c: the unit-noise estimate of x / c, means times c
        params, info = _fit_bayes(key, _rescaled(task, scale), _unit_noise(config))
        full_B = jnp.full(task.points.shape[:1], scale, task.points.dtype)
        info = dict(
            info,
            chain_spread=info["chain_spread"] * scale**2,
            noise_scale=full_B,
            noise_variance=full_B * scale,
        )
        if "component_scale" in info:
            info["component_scale"] = info["component_scale"] * scale
            info["component_variance"] = info["component_variance"] * scale**2
            return _with_scales(params, params.means * scale, info["component_scale"]), info
        return _with_scales(params, params.means * scale, full_B), info
    if config.prior == "phase_transition":
        return _fit_phase_transition(key, task, config)
    batch = task.points.shape[0]
    keys_B = _task_keys(key, batch)
    unknown = config.noise_scale is None
    per_component = config.component_scale_range is not None

    def fn(args):
        task_C = args[1]
        samples = _sample_chunk(*args, config=config, keep_labels=False)
        names = ("weights", "means", "log_post") + (("component_scales",) if per_component else ())
        moments = jax.vmap(functools.partial(aligned_posterior_mean, chain_gap=config.chain_gap))(
            {name: samples[name] for name in names}, task_C.component_mask
        )
        weights, means, spread, used = moments[:4]
        out = dict(
            weights=weights,
            means=means,
            chain_spread=spread,
            chains_used=used,
            weight_accept=jnp.mean(samples["weight_accept"], axis=-1),
            mean_accept=jnp.mean(samples["mean_accept"], axis=-1),
            log_post_max=jnp.max(samples["log_post"], axis=(-2, -1)),
        )
        if per_component:
            out["component_scale"], out["component_variance"] = moments[4:]
        if unknown:  # E[sigma], E[sigma^2] over the samples the means average
            use_CxRxS = jax.vmap(lambda lp: kept_samples(lp, config.chain_gap))(samples["log_post"])
            use_CxRxS = use_CxRxS.astype(means.dtype)
            total_C = jnp.sum(use_CxRxS, axis=(1, 2))
            sigma_CxRxS = samples["noise_scale"]
            out["noise_scale"] = jnp.sum(use_CxRxS * sigma_CxRxS, axis=(1, 2)) / total_C
            out["noise_variance"] = jnp.sum(use_CxRxS * sigma_CxRxS**2, axis=(1, 2)) / total_C
        return out

    out = map_task_chunks(fn, (keys_B, task), batch, _chunk(config, batch))
    params = MixtureParams(out["weights"], out["means"], None, task.component_mask)
    names = ("chain_spread", "chains_used", "weight_accept", "mean_accept", "log_post_max")
    if unknown:
        names += ("noise_scale", "noise_variance")
        params = _with_scales(params, out["means"], out["noise_scale"])
    if per_component:
        names += ("component_scale", "component_variance")
        params = _with_scales(params, out["means"], out["component_scale"])
    info = {name: out[name] for name in names}
    info["valid"] = fused.finite_estimates(out["weights"], out["means"])
    return params, info


def _known_scale(config: BayesConfig) -> float | None:
    """The known noise scale c when it is not 1 (the default path runs unchanged), else None."""
    if config.noise_scale is None or config.noise_scale == 1.0:
        return None
    return float(config.noise_scale)


def _unit_noise(config: BayesConfig) -> BayesConfig:
    return dataclasses.replace(config, noise_scale=1.0)


def _rescaled(task: GMMTask, scale: float) -> GMMTask:
    return task.replace(points=task.points / scale)


def _with_scales(params: MixtureParams, means_BxKxD: jax.Array, sigma: jax.Array) -> MixtureParams:
    """The estimate with the given means and spherical scales (sigma [B], or per component [B, K]) on the real
    components (1 on padding)."""
    sigma_BxKx1 = sigma[:, None, None] if sigma.ndim == 1 else sigma[:, :, None]
    scales_BxKxD = jnp.where(params.component_mask[..., None], sigma_BxKx1, 1.0)
    scales_BxKxD = jnp.broadcast_to(scales_BxKxD, means_BxKxD.shape)
    return MixtureParams(params.weights, means_BxKxD, scales_BxKxD, params.component_mask)


def _pt_posterior_mean(means_RxSx2xD, log_post_RxS, component_mask_K, chain_gap):
    """One task of the phase-transition prior: (weights [K], means [K, D], chain_spread, chains_used).

    The procedure of ``aligned_posterior_mean`` for two components: chains more than ``chain_gap`` below
    the best chain's mean log_post are left out; every sample is aligned to the kept sample of highest
    log_post, then to the mean of the aligned samples, and averaged. With two components the best
    permutation has a closed form: swap iff (m_0 - m_1) . (r_0 - r_1) < 0 (the two permutations' costs
    sum_k ||m_k - r_k||^2 differ by 2 (m_0 - m_1) . (r_0 - r_1)), i.e. iff u . u_ref < 0; no expansion
    of squared distances (the offset c is ~Delta sqrt(D) in norm). Written with elementwise products and
    sums, no dot_general: jaxlib 0.10.2's CPU backend miscompiles some vmapped matrix-vector products
    followed by reductions (jax-ml/jax#39103; seen here in the vMF draw at 3 x 2000 lanes). The weights
    are (1/2, 1/2) exactly. NaN estimates for a task whose real K is not 2.
    """
    r, s, _, d = means_RxSx2xD.shape
    diff_RxSxD = means_RxSx2xD[:, :, 0] - means_RxSx2xD[:, :, 1]  # 2 h u
    chain_lp_R = jnp.mean(log_post_RxS, axis=1)
    keep_R = jnp.ones((r,), bool)
    if chain_gap is not None:
        keep_R = chain_lp_R >= jnp.max(chain_lp_R) - chain_gap
    keep_f_R = keep_R.astype(means_RxSx2xD.dtype)
    best = jnp.argmax(jnp.where(keep_R[:, None], log_post_RxS, -jnp.inf).reshape(r * s))
    ref_D = diff_RxSxD.reshape(r * s, d)[best]

    def aligned_means(ref_D):
        flip_RxS = jnp.sum(diff_RxSxD * ref_D[None, None, :], axis=-1) < 0
        first = jnp.where(flip_RxS[..., None], means_RxSx2xD[:, :, 1], means_RxSx2xD[:, :, 0])
        second = jnp.where(flip_RxS[..., None], means_RxSx2xD[:, :, 0], means_RxSx2xD[:, :, 1])
        chain_RxKxD = jnp.stack([jnp.mean(first, axis=1), jnp.mean(second, axis=1)], axis=1)
        total_KxD = jnp.sum(keep_f_R[:, None, None] * chain_RxKxD, axis=0) / jnp.sum(keep_f_R)
        return total_KxD, chain_RxKxD

    mean_2xD, _ = aligned_means(ref_D)
    mean_2xD, chain_Rx2xD = aligned_means(mean_2xD[0] - mean_2xD[1])
    sq_RxR = jnp.sum((chain_Rx2xD[:, None] - chain_Rx2xD[None, :]) ** 2, axis=(-2, -1))
    pair_RxR = keep_R[:, None] & keep_R[None, :]
    spread = jnp.max(jnp.where(pair_RxR, sq_RxR, 0.0)) / (2 * d)
    weights_K, means_KxD = _expand_pair(jnp.full((2,), 0.5, mean_2xD.dtype), mean_2xD, component_mask_K)
    ok = jnp.sum(component_mask_K) == 2
    return jnp.where(ok, weights_K, jnp.nan), jnp.where(ok, means_KxD, jnp.nan), spread, jnp.sum(keep_R)


def _fit_phase_transition(key: jax.Array, task: GMMTask, config: BayesConfig) -> tuple[MixtureParams, dict]:
    batch, _, d = task.points.shape
    keys_B = _task_keys(key, batch)

    def fn(args):
        task_C = args[1]
        samples = _sample_chunk_phase_transition(*args, config=config, keep_labels=False)
        weights, means, spread, used = jax.vmap(
            functools.partial(_pt_posterior_mean, chain_gap=config.chain_gap)
        )(samples["means"], samples["log_post"], task_C.component_mask)
        return dict(
            weights=weights,
            means=means,
            chain_spread=spread,
            chains_used=used,
            vmf_accept=jnp.mean(samples["vmf_accept"], axis=-1),
            log_post_max=jnp.max(samples["log_post"], axis=(-2, -1)),
        )

    out = map_task_chunks(fn, (keys_B, task), batch, _pt_chunk(config, batch, d))
    params = MixtureParams(out["weights"], out["means"], None, task.component_mask)
    info = {name: out[name] for name in ("chain_spread", "chains_used", "vmf_accept", "log_post_max")}
    info["weight_accept"] = info["mean_accept"] = jnp.ones((batch,), out["means"].dtype)
    info["valid"] = fused.finite_estimates(out["weights"], out["means"])
    return params, info


_fit_bayes_jit = jax.jit(_fit_bayes, static_argnames=("config",))
_sample_posterior_jit = jax.jit(_sample_posterior, static_argnames=("config", "keep_labels"))


@functools.wraps(_fit_bayes)
def fit_bayes(key: jax.Array, task: GMMTask, config: BayesConfig = BayesConfig()):
    if isinstance(config, BayesConfig) and config.prior == "phase_transition":
        check_phase_transition_task(task)
    return _fit_bayes_jit(key, task, config)


@functools.wraps(_sample_posterior)
def sample_posterior(
    key: jax.Array, task: GMMTask, config: BayesConfig = BayesConfig(), keep_labels: bool = False
) -> dict:
    if isinstance(config, BayesConfig) and config.prior == "phase_transition":
        check_phase_transition_task(task)
    return _sample_posterior_jit(key, task, config, keep_labels)
