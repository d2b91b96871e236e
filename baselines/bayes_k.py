"""How many clusters, the Bayes reference: log p(X | K) for K = 1..K_max by annealed importance sampling (AIS)
with resampling (an SMC sampler).

``log_evidence(key, points_BxNxD, point_mask_BxN, config) -> dict`` with 'log_evidence' [B, K_max] and
'posterior' [B, K_max] = P(K | X) under the uniform prior on K = 1..K_max (the softmax of log p(X | K)).

The prior is the held-out tasks' of the K-posterior study (``TaskSpec(cos_threshold=1.0)``, unit isotropic noise,
known): u_k iid U[lo, hi] (0.2, 0.8), w = u / sum(u) (the sampler's sort is a labelling convention, irrelevant
under exchangeable labels), mu_k iid U[a, b]^D (-5, 5), x_n ~ sum_k w_k N(mu_k, I). In theta = (u, mu) the prior
is uniform on a box, so p(X | K) = E_{theta ~ U(box)}[L(theta)], L(theta) = prod_n sum_k w_k N(x_n; mu_k, I).

AIS (Neal 2001) along the geometric path pi_beta ∝ U(box) L^beta, beta_0 = 0 < beta_1 < ... < beta_T = 1 with
beta_t = beta_min^{1 - t/T} for t >= 1 (geometric: under a Gaussian-like tempered posterior Var_beta(log L) =
d / (2 beta^2), so equal steps in log beta spread the log weights' variance evenly). ``particles`` particles
start from the prior; at step t each log weight gains (beta_t - beta_{t-1}) log L(theta); when the weights' ESS
falls below ``resample_ess`` x particles, log mean_p exp(log w_p) is added to the running log p(X | K), the
particles are resampled (systematic) and the weights reset to 0 (Del Moral, Doucet & Jasra 2006; the estimate
of p(X | K) stays unbiased; ``resample_ess=0`` is plain AIS, whose estimate is log mean_p exp(log w_p)). Then
``sweeps`` sweeps of Metropolis moves that leave pi_{beta_t} invariant:
  * mu_k, one component at a time, a guided proposal: with r_n the responsibilities of k under the current
    state, mu_k' ~ N((beta sum_n r_n x_n + centre / v0) / P, I / P), P = beta sum_n r_n + 1 / v0 (v0 the box's
    variance per coordinate): the Gibbs step of mu_k at beta if the assignments were r (exact for K = 1, near
    exact for separated clusters). Rejected outside the box; the Hastings ratio evaluates the reverse proposal
    from the proposed state's responsibilities. (A reflected random walk mixed far slower: its estimates moved
    by several nats between seeds at D = 8, N = 128.)
  * one real component k, chosen uniformly: an independence proposal at a random point's local centre,
    mu_k' = c_j + ``jump_scale`` eps / sqrt(D), j uniform over the real points, c_j = x_j after 3 mean-shift steps
    (``local_centres``, a function of the data only), or (probability ``JUMP_UNIFORM``, 0.1) uniform on the box;
    rejected outside the box; the Hastings ratio uses the mixture density
    q(mu) = 0.9 mean_j N(mu; c_j, jump_scale^2 I / D) + 0.1 U(box). It moves a component stranded away from
    the data (which the guided move, an N(centre, v0) draw for a component without points, almost never does)
    onto an uncovered cluster. Without the uniform part the reverse density at a stranded component is
    ~exp(-D d^2 / 2): such jumps were always rejected, and at D = 8 every particle of the true K could end with
    one component stranded and another between two clusters (log p(X | K) ~130 nats low, so a larger K won).
  * u, all components jointly: a Gaussian random walk reflected at the faces (a symmetric proposal), step
    ``u_step`` * min(hi - lo, 0.5 (1 + beta N / K)^(-1/2)) / sqrt(K).
The step sizes are fixed functions of (beta, N, K, D), not adapted, so each transition is exactly invariant.
Without resampling, at D = 8, N = 128 and the true K a third of the particles ended ~400 nats below the others
(a cluster left uncovered, two components sharing another; the moves above rarely undo that at large beta):
plain AIS then rests on the few good particles. Resampling drops such particles as soon as they fall behind.
The component densities exp(-||x_n - mu_k||^2 / 2) are cached per particle ([N, K_max]); a mean move recomputes
one column.

Padding: K is a component mask (components >= K are excluded from every sum; their coordinates still move,
harmlessly), the points a point mask; tasks and K are vmapped, the particles of one (task, K) are a population
(resampled together; the moves are vmapped over them).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

from tgmm_jax.validation import check_int, check_number

# Share of the jump proposal drawn uniformly from the box: it bounds the reverse density below, so that a
# component stranded far from every point (where the data-centred part has density ~exp(-D ||.||^2 / 2)) can
# still jump back to the data.
JUMP_UNIFORM = 0.1


@dataclasses.dataclass(frozen=True)
class BayesKConfig:
    """AIS settings and the prior's ranges (the study's defaults). Frozen and hashable: a static argument."""

    particles: int = 16
    temperatures: int = 1000  # T annealing steps after beta = 0
    sweeps: int = 1  # sweeps of all moves per temperature
    beta_min: float = 1e-4  # the geometric schedule's start: beta_t = beta_min^(1 - t/T)
    u_step: float = 2.0
    jump_scale: float = 1.0  # 0 disables the data-point jumps
    resample_ess: float = 0.5  # resample when the ESS < this fraction of the particles; 0: plain AIS
    k_max: int = 8
    weight_range: tuple[float, float] = (0.2, 0.8)
    mean_range: tuple[float, float] = (-5.0, 5.0)

    def __post_init__(self):
        for name in ("particles", "temperatures", "sweeps", "k_max"):
            check_int(getattr(self, name), f"BayesKConfig.{name}", 1)
        check_number(self.beta_min, "BayesKConfig.beta_min", 0.0, 1.0, low_open=True)
        check_number(self.u_step, "BayesKConfig.u_step", 0.0, low_open=True)
        check_number(self.jump_scale, "BayesKConfig.jump_scale", 0.0)
        check_number(self.resample_ess, "BayesKConfig.resample_ess", 0.0, 1.0)
        for name, low in (("weight_range", 0.0), ("mean_range", -math.inf)):
            value = getattr(self, name)
            ok = (
                isinstance(value, tuple)
                and len(value) == 2
                and all(isinstance(v, (int, float)) and math.isfinite(v) for v in value)
                and low < value[0] < value[1]
            )
            if not ok:
                raise ValueError(
                    f"BayesKConfig.{name} must be a tuple (lo, hi) of finite numbers with {low} < lo < hi, "
                    f"got {value!r}"
                )


def betas(config: BayesKConfig) -> jax.Array:
    """[T + 1] the annealing schedule: 0, then geometric from beta_min to 1."""
    t = jnp.arange(1, config.temperatures + 1, dtype=jnp.float32) / config.temperatures
    geometric = jnp.exp((1.0 - t) * math.log(config.beta_min))
    return jnp.concatenate([jnp.zeros((1,), jnp.float32), geometric.at[-1].set(1.0)])


def _reflect(x, lo, hi):
    """x folded into [lo, hi] by reflections at the faces (a symmetric map of a symmetric random walk)."""
    width = hi - lo
    y = jnp.mod(x - lo, 2.0 * width)
    return lo + jnp.where(y > width, 2.0 * width - y, y)


def _loglik(logdens_NxK, u_K, component_mask_K, point_mask_N):
    """sum_n log sum_k w_k exp(logdens_nk) over real points and components, w = u / sum(u)."""
    log_w_K = jnp.log(u_K) - jnp.log(jnp.sum(jnp.where(component_mask_K, u_K, 0.0)))
    log_w_K = jnp.where(component_mask_K, log_w_K, -jnp.inf)
    per_point_N = jax.nn.logsumexp(logdens_NxK + log_w_K[None, :], axis=-1)
    return jnp.sum(jnp.where(point_mask_N, per_point_N, 0.0))


def _column(points_NxD, mu_D):
    return -0.5 * jnp.sum((points_NxD - mu_D[None, :]) ** 2, axis=-1)


def _log_normal(x_D, mean_D, prec):
    """log N(x; mean, I / prec) up to the constant -D/2 log(2 pi)."""
    return 0.5 * x_D.shape[-1] * jnp.log(prec) - 0.5 * prec * jnp.sum((x_D - mean_D) ** 2)


def _jump_log_q(centres_NxD, point_mask_N, mu_D, scale, uniform, box):
    """log of the jump proposal's density at mu: (1 - uniform) mean_j N(mu; c_j, scale^2 I) + uniform U(box)."""
    d = mu_D.shape[-1]
    sq_N = jnp.sum((centres_NxD - mu_D[None, :]) ** 2, axis=-1)
    log_kde = (
        jax.nn.logsumexp(jnp.where(point_mask_N, -0.5 * sq_N / scale**2, -jnp.inf))
        - jnp.log(jnp.sum(point_mask_N).astype(jnp.float32))
        - 0.5 * d * jnp.log(2.0 * math.pi * scale**2)
    )
    return jnp.logaddexp(math.log1p(-uniform) + log_kde, math.log(uniform) - d * math.log(box))


def local_centres(points_NxD, point_mask_N, steps: int = 3):
    """Each point moved by ``steps`` mean-shift steps (Gaussian kernel of bandwidth sqrt(D), the distance between
    two points of one unit-noise cluster is ~sqrt(2 D)): about the centre of its cluster. A function of the data
    only, so the jump proposal built on it is a fixed independence proposal."""
    h2 = float(points_NxD.shape[-1])

    def shift(centres_NxD, _):
        sq_NxN = jnp.sum((centres_NxD[:, None, :] - points_NxD[None, :, :]) ** 2, axis=-1)
        weights_NxN = jax.nn.softmax(jnp.where(point_mask_N[None, :], -0.5 * sq_NxN / h2, -jnp.inf), axis=-1)
        real_NxD = jnp.where(point_mask_N[:, None], points_NxD, 0.0)
        return weights_NxN @ real_NxD, None

    centres_NxD, _ = jax.lax.scan(
        shift, jnp.where(point_mask_N[:, None], points_NxD, 0.0), None, length=steps
    )
    return centres_NxD


def _sweep(key, state, beta, points_NxD, centres_NxD, point_mask_N, component_mask_K, config):
    """One sweep at inverse temperature beta: a random-walk move of every mean, a jump of one, the weights."""
    u_K, mu_KxD, logdens_NxK, ll = state
    k_max, dim = mu_KxD.shape
    (a, b), (lo, hi) = config.mean_range, config.weight_range
    n_real = jnp.sum(point_mask_N).astype(jnp.float32)
    k_real = jnp.sum(component_mask_K).astype(jnp.float32)
    prior_var = (b - a) ** 2 / 12.0
    centre = 0.5 * (a + b)

    def guide(logdens_NxK, k):
        """(mean [D], precision) of component k's guided proposal: the responsibilities r_n of k under the state
        give the tempered conditional N((beta sum_n r_n x_n + centre / v0) / P, 1 / P), P = beta sum_n r_n + 1 / v0
        (v0 the box's variance), the Gibbs step of mu_k if the assignments were r."""
        log_w_K = jnp.where(component_mask_K, jnp.log(u_K), -jnp.inf)
        resp_N = jax.nn.softmax(logdens_NxK + log_w_K[None, :], axis=-1)[:, k]
        resp_N = jnp.where(point_mask_N, resp_N, 0.0)
        prec = beta * jnp.sum(resp_N) + 1.0 / prior_var
        sum_D = jnp.sum(jnp.where(point_mask_N[:, None], resp_N[:, None] * points_NxD, 0.0), axis=0)
        return (beta * sum_D + centre / prior_var) / prec, prec

    jump_sd = config.jump_scale / math.sqrt(dim)
    u_sd = (
        config.u_step * jnp.minimum(hi - lo, 0.5 / jnp.sqrt(1.0 + beta * n_real / k_real)) / jnp.sqrt(k_real)
    )
    # the jump picks a real point uniformly: its cumulative mask counts
    real_cdf_N = jnp.cumsum(point_mask_N.astype(jnp.float32))
    key_mu, key_u, key_jump = jax.random.split(key, 3)
    keys_K = jax.random.split(key_mu, k_max)

    def accept(key, log_ratio):
        return jnp.log(jax.random.uniform(key, minval=1e-12)) < log_ratio

    def component(k, carry):
        mu_KxD, logdens_NxK, ll = carry
        k_prop, k_acc = jax.random.split(keys_K[k])
        # guided: a Gaussian around the responsibility-weighted mean of the points (an EM step), rejected
        # outside the box; the reverse proposal is computed from the proposed state
        mean_D, prec = guide(logdens_NxK, k)
        mu_D = mean_D + jax.random.normal(k_prop, (dim,)) / jnp.sqrt(prec)
        inside = jnp.all((mu_D >= a) & (mu_D <= b))
        mu_D = jnp.clip(mu_D, a, b)
        logdens_new = logdens_NxK.at[:, k].set(_column(points_NxD, mu_D))
        ll_new = _loglik(logdens_new, u_K, component_mask_K, point_mask_N)
        mean_back_D, prec_back = guide(logdens_new, k)
        log_ratio = (
            beta * (ll_new - ll)
            + _log_normal(mu_KxD[k], mean_back_D, prec_back)
            - _log_normal(mu_D, mean_D, prec)
        )
        ok = inside & accept(k_acc, log_ratio)
        mu_KxD = jnp.where(ok, mu_KxD.at[k].set(mu_D), mu_KxD)
        logdens_NxK = jnp.where(ok, logdens_new, logdens_NxK)
        ll = jnp.where(ok, ll_new, ll)
        return mu_KxD, logdens_NxK, ll

    mu_KxD, logdens_NxK, ll = jax.lax.fori_loop(0, k_max, component, (mu_KxD, logdens_NxK, ll))
    if config.jump_scale > 0:  # one real component, chosen uniformly, jumps to a random point
        k_which, k_j, k_pick, k_j_acc = jax.random.split(key_jump, 4)
        k = jnp.minimum(jnp.floor(jax.random.uniform(k_which) * k_real).astype(jnp.int32), k_max - 1)
        pick = jnp.searchsorted(real_cdf_N, jax.random.uniform(k_pick) * n_real, side="right")
        mu_D = centres_NxD[jnp.minimum(pick, points_NxD.shape[0] - 1)]
        mu_D = mu_D + jump_sd * jax.random.normal(k_j, (dim,))
        k_mix, k_box = jax.random.split(k_which)
        from_box = jax.random.uniform(k_mix) < JUMP_UNIFORM
        mu_D = jnp.where(from_box, jax.random.uniform(k_box, (dim,), minval=a, maxval=b), mu_D)
        inside = jnp.all((mu_D >= a) & (mu_D <= b))
        mu_D = jnp.clip(mu_D, a, b)
        logdens_new = logdens_NxK.at[:, k].set(_column(points_NxD, mu_D))
        ll_new = _loglik(logdens_new, u_K, component_mask_K, point_mask_N)
        log_ratio = (
            beta * (ll_new - ll)
            + _jump_log_q(centres_NxD, point_mask_N, mu_KxD[k], jump_sd, JUMP_UNIFORM, b - a)
            - _jump_log_q(centres_NxD, point_mask_N, mu_D, jump_sd, JUMP_UNIFORM, b - a)
        )
        ok = inside & accept(k_j_acc, log_ratio)
        mu_KxD = jnp.where(ok, mu_KxD.at[k].set(mu_D), mu_KxD)
        logdens_NxK = jnp.where(ok, logdens_new, logdens_NxK)
        ll = jnp.where(ok, ll_new, ll)
    k_step, k_acc = jax.random.split(key_u)
    u_new = _reflect(u_K + u_sd * jax.random.normal(k_step, u_K.shape), lo, hi)
    ll_new = _loglik(logdens_NxK, u_new, component_mask_K, point_mask_N)
    ok = accept(k_acc, beta * (ll_new - ll))
    return jnp.where(ok, u_new, u_K), mu_KxD, logdens_NxK, jnp.where(ok, ll_new, ll)


def _systematic(key, log_w_P):
    """Indices [P] of a systematic resample of the particles with weights softmax(log_w)."""
    p = log_w_P.shape[0]
    cdf_P = jnp.cumsum(jax.nn.softmax(log_w_P))
    grid_P = (jax.random.uniform(key) + jnp.arange(p, dtype=jnp.float32)) / p
    return jnp.minimum(jnp.searchsorted(cdf_P, grid_P * cdf_P[-1], side="left"), p - 1)


def _smc_one(key, points_NxD, point_mask_N, component_mask_K, config):
    """One (task, K): (log p(X | K) without the Gaussian normaliser, the final log weights [P], the number of
    resampling steps)."""
    k_max, dim, p = component_mask_K.shape[0], points_NxD.shape[-1], config.particles
    (a, b), (lo, hi) = config.mean_range, config.weight_range
    key_u, key_mu, key_run = jax.random.split(key, 3)
    u_PxK = jax.random.uniform(key_u, (p, k_max), minval=lo, maxval=hi)
    mu_PxKxD = jax.random.uniform(key_mu, (p, k_max, dim), minval=a, maxval=b)
    logdens_PxNxK = jax.vmap(jax.vmap(lambda m: _column(points_NxD, m), out_axes=1))(mu_PxKxD)
    ll_P = jax.vmap(_loglik, in_axes=(0, 0, None, None))(logdens_PxNxK, u_PxK, component_mask_K, point_mask_N)
    beta_T = betas(config)
    centres_NxD = local_centres(points_NxD, point_mask_N)
    sweep = jax.vmap(_sweep, in_axes=(0, 0, None, None, None, None, None, None))

    def step(carry, t):
        state, log_w_P, log_z, resamples = carry
        beta, prev = beta_T[t], beta_T[t - 1]
        log_w_P = log_w_P + (beta - prev) * state[3]
        key_t, key_resample = jax.random.split(jax.random.fold_in(key_run, t))
        if config.resample_ess > 0:  # resample when the ESS falls below the threshold (fraction of P)
            ess = 1.0 / jnp.sum(jax.nn.softmax(log_w_P) ** 2)
            do = ess < config.resample_ess * p
            index_P = jnp.where(do, _systematic(key_resample, log_w_P), jnp.arange(p))
            state = jax.tree.map(lambda x: x[index_P], state)
            log_z = log_z + jnp.where(do, jax.nn.logsumexp(log_w_P) - math.log(p), 0.0)
            log_w_P = jnp.where(do, 0.0, log_w_P)
            resamples = resamples + do
        keys = jax.random.split(key_t, config.sweeps * p).reshape(config.sweeps, p, -1)
        for s in range(config.sweeps):
            state = sweep(
                keys[s], state, beta, points_NxD, centres_NxD, point_mask_N, component_mask_K, config
            )
        return (state, log_w_P, log_z, resamples), None

    init = (
        (u_PxK, mu_PxKxD, logdens_PxNxK, ll_P),
        jnp.zeros((p,), jnp.float32),
        jnp.zeros((), jnp.float32),
        0,
    )
    (_, log_w_P, log_z, resamples), _ = jax.lax.scan(step, init, jnp.arange(1, config.temperatures + 1))
    return log_z + jax.nn.logsumexp(log_w_P) - math.log(p), log_w_P, resamples


@functools.partial(jax.jit, static_argnames=("config",))
def _log_evidence(key, points_BxNxD, point_mask_BxN, config):
    batch, _, dim = points_BxNxD.shape
    k_max = config.k_max
    component_mask_KxK = jnp.arange(k_max)[None, :] < jnp.arange(1, k_max + 1)[:, None]
    keys_BxK = jax.random.split(key, batch * k_max).reshape(batch, k_max, -1)
    one = functools.partial(_smc_one, config=config)
    per_k = jax.vmap(one, in_axes=(0, None, None, 0))
    per_task = jax.vmap(per_k, in_axes=(0, 0, 0, None))
    log_z_BxK, log_w_BxKxP, resamples_BxK = per_task(
        keys_BxK, points_BxNxD, point_mask_BxN, component_mask_KxK
    )
    n_real_B = jnp.sum(point_mask_BxN, axis=-1).astype(jnp.float32)
    normaliser_B = -0.5 * dim * math.log(2.0 * math.pi) * n_real_B
    return log_z_BxK + normaliser_B[:, None], log_w_BxKxP, resamples_BxK


def log_evidence(key, points_BxNxD, point_mask_BxN=None, config: BayesKConfig = BayesKConfig()) -> dict:
    """log p(X | K) for K = 1..config.k_max per task, and the posterior over K under the uniform prior.

    Returns {'log_evidence': [B, K_max], 'posterior': [B, K_max] (softmax over K), 'log_weights':
    [B, K_max, particles] (the log weights since the last resampling, without the Gaussian normaliser), 'ess':
    [B, K_max] their effective sample size, 'resamples': [B, K_max] how many times the particles were
    resampled}.
    """
    if not isinstance(config, BayesKConfig):
        raise ValueError(f"config must be a BayesKConfig, got {type(config).__name__}")
    points_BxNxD = jnp.asarray(points_BxNxD, jnp.float32)
    if points_BxNxD.ndim != 3:
        raise ValueError(f"points must be [B, N, D], got shape {points_BxNxD.shape}")
    if point_mask_BxN is None:
        point_mask_BxN = jnp.ones(points_BxNxD.shape[:2], bool)
    point_mask_BxN = jnp.asarray(point_mask_BxN, bool)
    if point_mask_BxN.shape != points_BxNxD.shape[:2]:
        raise ValueError(f"point_mask must be [B, N] = {points_BxNxD.shape[:2]}, got {point_mask_BxN.shape}")
    log_z_BxK, log_w_BxKxP, resamples_BxK = _log_evidence(key, points_BxNxD, point_mask_BxN, config)
    return {
        "log_evidence": log_z_BxK,
        "posterior": jax.nn.softmax(log_z_BxK, axis=-1),
        "log_weights": log_w_BxKxP,
        "ess": 1.0 / jnp.sum(jax.nn.softmax(log_w_BxKxP, axis=-1) ** 2, axis=-1),
        "resamples": resamples_BxK,
    }
