"""The hard-regime study: where is maximum likelihood far from the Bayes answer, and does the learned model help?

    python -m experiments.studies.hard_regime.run [--tasks_per_cell=256] [--bayes_tasks=64] [--dims=2,8,32] [--ns=16,32,128]

Cells: Algorithm 1's isotropic tasks at d in {2, 8, 32}, K in {2, 3, 4, 5}, N in {16, 32, 128} (N fixed per
cell), and the phase-transition settings b0.1 and b1 (``experiments.studies.phase_transition.run``) at rho in {1, 1.5, 2}.
Every method sees the same tasks of a cell (``tasks_per_cell`` per K; ``bayes`` runs on the first
``bayes_tasks`` of them, and the gap ratio compares em_kmeanspp with it on exactly those tasks):

  tgmm          the shipped ``cluster`` checkpoint (no training here)
  tgmm+em       its estimate + 5 EM steps
                (``--seed_combine=average``: the model and its skeleton average their seedings the same way)
  em_seeded     the model's parameter-free skeleton (its seedings, iterations and rank; ``baselines.seeded_em``)
  em_seeded+em  the skeleton + the same 5 EM steps (the parameter-free counterpart of tgmm+em)
  em_kmeanspp   EM, k-means++ init, best of 10
  em_averaged   the same 10 EM fits averaged with probabilities softmax(total log-likelihood), each matched to
                the best one's components (``tgmm_jax.mixture.averaging``): a parameter-free hedge over optima
  spectral      Hsu-Kakade + tensor power method (n/a where K > d)
  bgm           scikit-learn's BayesianGaussianMixture (variational; spherical covariances, Dirichlet-process
                weight prior with its defaults, n_components = the true K, max_iter 200, one init per task):
                what a user would pick for small data
  bayes         the posterior mean under the task prior by MCMC (``baselines.bayes``): the limit column; on
                the phase-transition settings its ``phase_transition`` prior with that rho's Delta

Unknown noise (``--noise_scale_range=lo,hi``): for every (d, N) also the grid's tasks multiplied by a random
scale sigma, log-uniform on [lo, hi] (``TaskSpec(noise_scale_range=...)`` with the grid's key: exactly sigma
times the grid block's tasks; with ``--component_scale_range`` each component's noise also times u_k, and
bayes' prior has the same per-component scales), scored in the data's original units (l2, and l2_sigma_units = l2_means / sigma^2
+ l2_weights), by ``--noise_methods`` (kind 'grid_noise'):

  sklearn_gmm   scikit-learn's GaussianMixture(covariance_type="spherical", n_init=10), n_components = the true
                K: the classical reference when the noise is unknown. Its defaults add reg_covar = 1e-6 to
                every variance in the data's units: at sigma ~1e-3 its variances are ~2 sigma^2.
  bgm           as above
  bayes         ``baselines.bayes`` with noise_scale=None and the same log-uniform prior on sigma
  tgmm, ...     any method of METHODS (they assume unit noise)

``noise_summary`` gives each method's mean l2 over sklearn_gmm's, on the same tasks.

A gap cell is one where em_kmeanspp's mean l2 is at least ``GAP_RATIO`` (1.2) x bayes' on the same tasks. The
learned gain of tgmm (of tgmm+em) is the paired l2 difference to em_seeded (to em_seeded+em) on the same tasks.
Time per task is measured after compiling (a warm-up chunk first). Each (d, N) block and each phase-transition
setting is cached in ``--cache`` (rerunning skips finished ones); writes ``--results/hard_regime.json`` and
``hard_regime.png``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from matplotlib.figure import Figure

from baselines import get_baseline
from baselines.seeded_em import skeleton_settings
from experiments import methods as methods_lib
from experiments import study
from experiments.studies.hard_regime import report as hard_regime_report
from experiments.studies.phase_transition import run as pt
from tgmm_jax import scoring
from tgmm_jax.gmm import MixtureParams
from tgmm_jax.metrics import evaluate_estimates
from tgmm_jax.pretrained import load_pretrained
from tgmm_jax.tasks import GMMTask, TaskSpec, sample_tasks
from tgmm_jax.train.restore import load_run
from tgmm_jax.trained import with_slot_init

REFINE_STEPS = 5
GAP_RATIO = 1.2
KS = (2, 3, 4, 5)
METHODS = hard_regime_report.ORDER  # every method, in the report's column order
NOISE_METHODS = METHODS + ("sklearn_gmm",)
HOST_METHODS = ("bgm", "sklearn_gmm")  # fitted on the host with scikit-learn
_NEEDS_CHECKPOINT = ("tgmm", "tgmm+em", "em_seeded", "em_seeded+em")
GAINS = {"tgmm": "em_seeded", "tgmm+em": "em_seeded+em"}
# methods whose per-task results do not depend on --workdir: --baseline_cache keeps them
BASELINE_CACHED = (
    "em_kmeanspp",
    "em_averaged",
    "spectral",
    "bgm",
    "bayes",
    "sklearn_gmm",
)  # learned method -> its parameter-free skeleton
PT_SETTINGS = ("b0.1", "b1")
PT_RHOS = (1.0, 1.5, 2.0)


def define_flags() -> None:
    flags.DEFINE_list("dims", ["2", "8", "32"], "Data dimensions.")
    flags.DEFINE_list("ns", ["16", "32", "128"], "Points per task.")
    flags.DEFINE_list("pt_settings", list(PT_SETTINGS), "Phase-transition settings ('' for none).")
    flags.DEFINE_list("methods", list(METHODS), "Methods to run.")
    flags.DEFINE_integer("tasks_per_cell", 256, "Tasks per (d, K, N) cell and per phase-transition rho.")
    flags.DEFINE_integer("bayes_tasks", 64, "Tasks per cell for bayes (the first of each cell).")
    flags.DEFINE_integer("chunk", 256, "Tasks per compiled call.")
    flags.DEFINE_integer("bayes_sweeps", None, "Gibbs sweeps per chain of bayes (default: BayesConfig's).")
    flags.DEFINE_string(
        "workdir", "", "Evaluate this training workdir's model as tgmm instead of the shipped `cluster`."
    )
    flags.DEFINE_string(
        "slot_init",
        "",
        "Seed the model's read-out (and its skeleton) with these seedings instead ('' = as run).",
    )
    flags.DEFINE_enum(
        "seed_combine",
        "",
        ["", "best", "average"],
        "Combine the model's (and its skeleton's) seedings this way instead ('' = as run): the best, or their "
        "likelihood-weighted average.",
    )
    flags.DEFINE_string("name", "hard_regime", "Base name of the JSON and the figure in --results.")
    flags.DEFINE_integer("eval_seed", 20261206, "Seed of the tasks (the same for every method).")
    flags.DEFINE_string("cache", "runs/hard_regime", "Per-block cache of finished cells.")
    flags.DEFINE_string(
        "baseline_cache",
        "",
        "Per-task cache of the methods without a checkpoint (BASELINE_CACHED), shared by the evaluations of "
        "several models on the same tasks ('' = none).",
    )
    flags.DEFINE_string("results", "results", "Where the JSON and the figure go.")
    flags.DEFINE_list(
        "noise_scale_range",
        [],
        "lo,hi: also score the grid's tasks times sigma ~ log-U[lo, hi] (unknown noise).",
    )
    flags.DEFINE_list(
        "component_scale_range",
        [],
        "lo,hi: in the unknown-noise cells, per-component scales sigma u_k, u_k ~ log-U.",
    )
    flags.DEFINE_list("noise_methods", ["sklearn_gmm", "bgm", "bayes"], "Methods of the unknown-noise cells.")


FLAGS = flags.FLAGS


# ----------------------------------------------------------------------------------------------------
# Methods.


def _host_fit(task: GMMTask, seed: int, make) -> MixtureParams:
    """A scikit-learn mixture ``make(k, random_state)`` (spherical covariances) on every task, on the host."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    points, mask = np.asarray(task.points, np.float64), np.asarray(task.point_mask)
    ks, k_max = np.asarray(task.num_components), task.component_mask.shape[1]
    batch, _, d = points.shape
    weights, means, scales = np.zeros((batch, k_max)), np.zeros((batch, k_max, d)), np.ones((batch, k_max, d))
    for b in range(batch):
        k = int(ks[b])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            fit = make(k, seed + b).fit(points[b][mask[b]])
        weights[b, :k], means[b, :k] = fit.weights_, fit.means_
        scales[b, :k] = np.sqrt(fit.covariances_)[:, None]
    return MixtureParams(
        jnp.asarray(weights, jnp.float32),
        jnp.asarray(means, jnp.float32),
        jnp.asarray(scales, jnp.float32),
        task.component_mask,
    )


def _bgm_fit(task: GMMTask, seed: int) -> MixtureParams:
    """scikit-learn's variational mixture on every task, on the host (see the module docstring)."""
    from sklearn.mixture import BayesianGaussianMixture

    return _host_fit(
        task,
        seed,
        lambda k, rs: BayesianGaussianMixture(
            n_components=k, covariance_type="spherical", max_iter=200, random_state=rs
        ),
    )


def _sklearn_gmm_fit(task: GMMTask, seed: int) -> MixtureParams:
    """scikit-learn's GaussianMixture (EM, spherical, best of 10 k-means initialisations) on every task."""
    from sklearn.mixture import GaussianMixture

    return _host_fit(
        task,
        seed,
        lambda k, rs: GaussianMixture(
            n_components=k, covariance_type="spherical", n_init=10, random_state=rs
        ),
    )


_HOST_FITS = {"bgm": _bgm_fit, "sklearn_gmm": _sklearn_gmm_fit}


def bayes_overrides() -> dict:
    """BayesConfig fields set from the command line (a shorter chain for smoke tests)."""
    if FLAGS.bayes_sweeps is None:
        return {}
    return dict(sweeps=FLAGS.bayes_sweeps, burn_in=FLAGS.bayes_sweeps // 3)


def noise_range() -> tuple[float, float] | None:
    """--noise_scale_range as (lo, hi), or None."""
    if not FLAGS.noise_scale_range:
        return None
    lo, hi = map(float, FLAGS.noise_scale_range)
    return lo, hi


def component_range() -> tuple[float, float] | None:
    """--component_scale_range as (lo, hi), or None."""
    if not FLAGS.component_scale_range:
        return None
    lo, hi = map(float, FLAGS.component_scale_range)
    return lo, hi


def bayes_config(noise: tuple[float, float] | None = None) -> dict:
    """The BayesConfig fields of bayes: unknown noise with the log-uniform prior on ``noise`` when given."""
    if noise is None:
        return bayes_overrides()
    out = dict(bayes_overrides(), noise_scale=None, noise_scale_range=noise)
    if component_range() is not None:
        out["component_scale_range"] = component_range()
    return out


def build_methods(names, noise: tuple[float, float] | None = None) -> tuple[dict, dict]:
    """{name: scoring method} (bgm and sklearn_gmm are run on the host, apart) and their parameters. With
    ``noise`` (lo, hi), bayes has an unknown noise scale with that log-uniform prior."""
    all_methods = {
        "em_kmeanspp": scoring.param_free(get_baseline("em_kmeanspp")),
        "em_averaged": scoring.param_free(get_baseline("em_averaged")),
        "spectral": scoring.param_free(get_baseline("spectral")),
        "bayes": scoring.param_free(get_baseline("bayes", **bayes_config(noise))),
    }
    params = {}
    if any(n in _NEEDS_CHECKPOINT for n in names):
        cluster = _evaluated_model()
        # unknown noise: a noise-conditioned model is told nothing, and so is its skeleton (a unit-noise
        # model and skeleton assume variance 1 in the data's units, as they always do)
        unknown = noise is not None and cluster.model_config.noise == "conditioned"
        settings = dict(skeleton_settings(cluster.model_config), noise="unknown" if unknown else "unit")
        skeleton = scoring.param_free(get_baseline("em_seeded", **settings))
        all_methods.update(
            {
                "tgmm": scoring.model_method(cluster.model, noise="unknown" if unknown else "known"),
                "tgmm+em": scoring.model_method(cluster.model, REFINE_STEPS),
                "em_seeded": skeleton,
                "em_seeded+em": methods_lib.method_then_em(skeleton, REFINE_STEPS),
            }
        )
        params = {n: cluster.params for n in ("tgmm", "tgmm+em")}
    methods = {n: fn for n, fn in all_methods.items() if n in names}
    return methods, params


# ----------------------------------------------------------------------------------------------------
# Scoring one batch of tasks.


def _take(task: GMMTask, index) -> GMMTask:
    return jax.tree.map(lambda a: a[np.asarray(index)], task)


def _score(name, fn, params, key, task, chunk) -> tuple[dict, float]:
    """Per-task metrics and seconds per task, timed after a warm-up chunk (compilation excluded)."""
    if name in HOST_METHODS:
        start = time.perf_counter()
        estimate = _HOST_FITS[name](task, FLAGS.eval_seed)
        seconds = time.perf_counter() - start
    else:
        chunk = min(chunk, task.points.shape[0])
        jax.block_until_ready(scoring.fit_in_chunks(fn, params, key, _take(task, np.arange(chunk)), chunk))
        start = time.perf_counter()
        estimate = jax.block_until_ready(scoring.fit_in_chunks(fn, params, key, task, chunk))
        seconds = time.perf_counter() - start
    metrics = {
        k: np.asarray(v) for k, v in evaluate_estimates(jax.tree.map(jnp.asarray, estimate), task).items()
    }
    if task.noise_scale is not None:  # the l2 in units of the task's sigma (metrics are in the data's units)
        sigma_sq = np.asarray(task.noise_scale, np.float64) ** 2
        metrics["l2_sigma_units"] = metrics["l2_means"] / sigma_sq + metrics["l2_weights"]
    return metrics, seconds / task.points.shape[0]


def _cached_per_task(name: str, where: dict | None, noise, compute) -> tuple[dict, float]:
    """``compute()`` (per-task metrics, seconds per task), kept in ``--baseline_cache`` for the methods of
    BASELINE_CACHED, keyed by the method, the block (``where``: its tasks' fingerprint) and every flag that changes
    their results; ``where`` None: not cached."""
    if not FLAGS.baseline_cache or name not in BASELINE_CACHED or where is None:
        return compute()
    key = dict(
        method=name,
        where=where,
        noise=list(noise) if noise is not None else None,
        eval_seed=FLAGS.eval_seed,
        chunk=FLAGS.chunk,
        bayes=repr(get_baseline("bayes", **bayes_config(noise)).keywords),
    )
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    path = os.path.join(FLAGS.baseline_cache, f"{name}_{digest}.npz")
    if os.path.exists(path):
        with np.load(path) as saved:
            return {k: saved[k] for k in saved.files if k != "seconds_per_task"}, float(
                saved["seconds_per_task"]
            )
    values, seconds = compute()
    os.makedirs(FLAGS.baseline_cache, exist_ok=True)
    np.savez(path + ".tmp.npz", seconds_per_task=seconds, **values)
    os.replace(path + ".tmp.npz", path)
    return values, seconds


def _stat(values: np.ndarray) -> dict:
    values = np.asarray(values, np.float64)
    sem = float(values.std(ddof=1) / np.sqrt(values.size)) if values.size > 1 else float("nan")
    return {"mean": float(values.mean()), "sem": sem, "median": float(np.median(values))}


def score_block(
    task: GMMTask, groups: dict, key, names, where: dict, bayes_by_group=None, noise=None
) -> list[dict]:
    """Every method on ``task``; one cell per (group, method). ``groups`` maps a group key (K, or rho) to its
    task indices; bayes runs on the first ``bayes_tasks`` of each group (with ``bayes_by_group[group]``, a
    method, where the prior differs by group), and em_kmeanspp is also summarised on those tasks
    (``l2_on_bayes_tasks``) for the gap ratio. ``noise``: bayes' prior on an unknown sigma (build_methods)."""
    methods, params = build_methods(names, noise)
    bayes_runs = [
        (idx[: FLAGS.bayes_tasks], (bayes_by_group or {}).get(group, methods.get("bayes")))
        for group, idx in groups.items()
    ]
    if not bayes_by_group:  # one prior for every group: one call
        bayes_runs = [(np.concatenate([idx for idx, _ in bayes_runs]), methods.get("bayes"))]
    per_task, seconds = {}, {}
    for name in names:
        if name == "bayes":
            full, spent, count = None, 0.0, 0
            for index, method in bayes_runs:
                values, per = _cached_per_task(
                    name,
                    dict(where, index=[int(i) for i in index]) if not bayes_by_group else None,
                    noise,
                    lambda index=index, method=method, name=name: _score(
                        name, method, None, key, _take(task, index), FLAGS.chunk
                    ),
                )
                if full is None:
                    full = {k: np.full(task.points.shape[:1], np.nan) for k in values}
                    full["applicable"] = np.zeros(task.points.shape[:1], bool)
                for k, v in values.items():
                    full[k][index] = v
                spent, count = spent + per * len(index), count + len(index)
            seconds[name] = spent / count
            per_task[name] = full
        else:
            per_task[name], seconds[name] = _cached_per_task(
                name,
                where,
                noise,
                lambda name=name: _score(name, methods.get(name), params.get(name), key, task, FLAGS.chunk),
            )
        logging.warning("%s: %s done (%.4f s per task)", where, name, seconds[name])
    cells = []
    for group, idx in groups.items():
        sub_idx = idx[: FLAGS.bayes_tasks]
        for name in names:
            values = per_task[name]
            use = idx[values["applicable"][idx].astype(bool)]
            cell = dict(
                where,
                group=group,
                method=name,
                num_tasks=int(len(idx) if name != "bayes" else len(sub_idx)),
                not_applicable=float(1 - len(use) / (len(idx) if name != "bayes" else len(sub_idx))),
                seconds_per_task=seconds[name],
            )
            if len(use):
                cell.update(l2=_stat(values["l2"][use]), cluster_acc=_stat(values["cluster_acc"][use]))
                if "l2_sigma_units" in values:
                    cell["l2_sigma_units"] = _stat(values["l2_sigma_units"][use])
                sub_use = sub_idx[values["applicable"][sub_idx].astype(bool)]
                if len(sub_use):
                    cell["l2_on_bayes_tasks"] = _stat(values["l2"][sub_use])
            reference = GAINS.get(name)
            if reference in per_task:
                # unknown noise: the paired gain in units of each task's sigma (in the data's units the
                # tasks of largest sigma would decide it alone)
                metric = "l2_sigma_units" if "l2_sigma_units" in values else "l2"
                gain = scoring.paired_gain(
                    _take_dict(values, idx), _take_dict(per_task[reference], idx), np.zeros(len(idx)), metric
                )[0]
                cell["learned_gain"] = dict(gain, reference=reference)
                # the learned model against the classical method of its setting, paired on the same tasks
                classical = "sklearn_gmm" if "l2_sigma_units" in values else "em_kmeanspp"
                if classical in per_task:
                    gain = scoring.paired_gain(
                        _take_dict(values, idx),
                        _take_dict(per_task[classical], idx),
                        np.zeros(len(idx)),
                        metric,
                    )[0]
                    cell["gain_over_classical"] = dict(gain, reference=classical)
            cells.append(cell)
    return cells


def _take_dict(values: dict, idx) -> dict:
    return {k: np.asarray(v)[idx] for k, v in values.items()}


# ----------------------------------------------------------------------------------------------------
# Blocks.


def grid_tasks(eval_seed: int, dim: int, n: int, tasks_per_cell: int, **spec_options) -> tuple:
    """(key, tasks) of the grid's (d, N) block: ``tasks_per_cell`` tasks of each K in KS, K-major, N fixed;
    ``spec_options`` extend the ``TaskSpec`` (the unknown-noise block: the same key, so the same tasks scaled)."""
    spec = TaskSpec(dim=dim, ks=KS, n_max=n, n_min=n, variable_n=False, **spec_options)
    key = jax.random.fold_in(jax.random.key(eval_seed), 1000 * dim + n)
    return key, sample_tasks(key, spec, tasks_per_cell)


def grid_block(dim: int, n: int, names) -> list[dict]:
    key, task = grid_tasks(FLAGS.eval_seed, dim, n, FLAGS.tasks_per_cell)
    t = FLAGS.tasks_per_cell
    groups = {k: np.arange(i * t, (i + 1) * t) for i, k in enumerate(KS)}
    where = dict(kind="grid", dim=dim, N=n, fingerprint=scoring.task_fingerprint(task))
    cells = score_block(task, groups, jax.random.fold_in(key, 1), names, where)
    for c in cells:
        c["K"] = c.pop("group")
    return cells


def noise_block(dim: int, n: int, names, noise: tuple[float, float]) -> list[dict]:
    """grid_block's tasks (same key) times sigma ~ log-U[noise], the unknown-noise cells (kind 'grid_noise')."""
    key, task = grid_tasks(
        FLAGS.eval_seed,
        dim,
        n,
        FLAGS.tasks_per_cell,
        noise_scale_range=noise,
        component_scale_range=component_range(),
    )
    t = FLAGS.tasks_per_cell
    groups = {k: np.arange(i * t, (i + 1) * t) for i, k in enumerate(KS)}
    where = dict(kind="grid_noise", dim=dim, N=n, noise_scale_range=list(noise))
    if component_range() is not None:
        where["component_scale_range"] = list(component_range())
    where["fingerprint"] = scoring.task_fingerprint(task)
    cells = score_block(task, groups, jax.random.fold_in(key, 1), names, where, noise=noise)
    for c in cells:
        c["K"] = c.pop("group")
    return cells


def noise_summary(cells: list[dict], reference: str = "sklearn_gmm") -> list[dict]:
    """Per unknown-noise cell: each method's mean l2 (data units) over ``reference``'s on the same tasks (bayes'
    own tasks, the first ``bayes_tasks``, for bayes and for the reference's ``l2_on_bayes_tasks``), and for the
    other methods also the ratio of their mean l2 in units of sigma (``_sigma_units``). The mean l2 in data
    units is dominated by the tasks of largest sigma (l2 grows as sigma^2)."""
    keyed = {}
    for c in cells:
        if c["kind"] == "grid_noise":
            keyed.setdefault((c["dim"], c["N"], c["K"]), {})[c["method"]] = c
    out = []
    for (dim, n, k), by_method in keyed.items():
        ref = by_method.get(reference)
        if not ref or "l2" not in ref:
            continue
        entry = dict(dim=dim, N=n, K=k, reference=reference)
        for name, c in by_method.items():
            if name == reference or "l2" not in c:
                continue
            if name == "bayes":
                if "l2_on_bayes_tasks" in ref:
                    entry[f"{name}_over_{reference}"] = c["l2"]["mean"] / ref["l2_on_bayes_tasks"]["mean"]
            else:
                entry[f"{name}_over_{reference}"] = c["l2"]["mean"] / ref["l2"]["mean"]
                if "l2_sigma_units" in c and "l2_sigma_units" in ref:
                    ratio = c["l2_sigma_units"]["mean"] / ref["l2_sigma_units"]["mean"]
                    entry[f"{name}_over_{reference}_sigma_units"] = ratio
        out.append(entry)
    return out


def pt_block(setting: str, names) -> list[dict]:
    n, b, _ = pt.SETTINGS[setting]
    tasks, groups = [], {}
    for i, rho in enumerate(PT_RHOS):
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(FLAGS.eval_seed), n), i)
        tasks.append(sample_phase_transition_tasks_padded(key, n, pt.a_for(rho, b), b, FLAGS.tasks_per_cell))
        groups[rho] = np.arange(i * FLAGS.tasks_per_cell, (i + 1) * FLAGS.tasks_per_cell)
    task = jax.tree.map(lambda *xs: jnp.concatenate(xs), *tasks)
    where = dict(kind="phase_transition", setting=setting, dim=pt.dimension(n, b), N=n, K=2)
    where["fingerprint"] = scoring.task_fingerprint(task)
    key = jax.random.fold_in(jax.random.key(FLAGS.eval_seed), 7 + list(pt.SETTINGS).index(setting))
    bayes_by_group = {  # the phase-transition prior, with this rho's separation Delta
        rho: scoring.param_free(
            get_baseline(
                "bayes",
                prior="phase_transition",
                delta=pt.line_delta(n, b) * rho,
                **bayes_overrides(),
            )
        )
        for rho in PT_RHOS
    }
    cells = score_block(task, groups, key, names, where, bayes_by_group)
    for c in cells:
        c["rho"] = c.pop("group")
    return cells


def sample_phase_transition_tasks_padded(key, n, a, b, batch) -> GMMTask:
    from tgmm_jax.tasks import sample_phase_transition_tasks

    return pt.pad_components(sample_phase_transition_tasks(key, n, a, b, batch), max(KS))


TARGET = dict(dim=2, K=5, N=128)  # the cell of the "bayes at most 0.6x em_kmeanspp" check


def target_check() -> dict:
    """bayes against em_kmeanspp (and EM started from the true parameters) on ALL tasks of the target cell:
    the mean ratio, the median per-task ratio, and the ratio without EM's failures (l2 > 1), to tell a
    systematic posterior advantage from EM's occasional local optima."""
    from baselines.em import fit_em_from

    dim, k, n = TARGET["dim"], TARGET["K"], TARGET["N"]
    spec = TaskSpec(dim=dim, ks=KS, n_max=n, n_min=n, variable_n=False)
    key = jax.random.fold_in(jax.random.key(FLAGS.eval_seed), 1000 * dim + n)  # grid_block's tasks
    task = sample_tasks(key, spec, FLAGS.tasks_per_cell)
    i = KS.index(k)
    task = _take(task, np.arange(i * FLAGS.tasks_per_cell, (i + 1) * FLAGS.tasks_per_cell))
    l2 = {}
    for name, fn in (
        ("bayes", get_baseline("bayes", **bayes_overrides())),
        ("em_kmeanspp", get_baseline("em_kmeanspp")),
        ("em_from_truth", lambda key, t: fit_em_from(t, t.params().replace(scales=None))),
    ):
        estimate, _ = fn(jax.random.fold_in(key, 1), task)
        l2[name] = np.asarray(evaluate_estimates(estimate, task)["l2"], np.float64)
    failed = l2["em_kmeanspp"] > 1.0
    ratio_B = l2["bayes"] / l2["em_kmeanspp"]
    return dict(
        TARGET,
        num_tasks=len(failed),
        l2={name: _stat(values) for name, values in l2.items()},
        bayes_over_em=float(l2["bayes"].mean() / l2["em_kmeanspp"].mean()),
        median_per_task_ratio=float(np.median(ratio_B)),
        em_failures=int(failed.sum()),
        bayes_over_em_without_failures=float(l2["bayes"][~failed].mean() / l2["em_kmeanspp"][~failed].mean()),
        bayes_over_em_from_truth=float(l2["bayes"].mean() / l2["em_from_truth"].mean()),
    )


def _evaluated_model():
    """The model scored as `tgmm`: a workdir's latest checkpoint or the shipped `cluster`, seeded by
    ``--slot_init`` and combined by ``--seed_combine`` where given (its skeleton em_seeded then does the same)."""
    cluster = load_run(FLAGS.workdir) if FLAGS.workdir else load_pretrained("cluster")
    return with_slot_init(cluster, FLAGS.slot_init, FLAGS.seed_combine)


def model_text() -> str:
    """Which model is `tgmm` here: a workdir's latest checkpoint, or the shipped `cluster`."""
    if FLAGS.workdir:
        run = _evaluated_model()
        combine = run.model_config.seed_combine
        return (
            f"computed with the workdir `{FLAGS.workdir}` (step {run.step}, slot_init {run.model_config.slot_init!r}"
            + (", the seedings' likelihood-weighted average" if combine == "average" else "")
            + ")"
        )
    text = study.shipped_checkpoint_text("cluster")
    text = f"{text}, seeded by {FLAGS.slot_init!r}" if FLAGS.slot_init else text
    return f"{text}, the seedings' likelihood-weighted average" if FLAGS.seed_combine == "average" else text


def _cached(path: str, settings: dict, compute) -> list[dict]:
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        if saved.get("settings") == settings:
            return saved["cells"]
    cells = compute()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"settings": settings, "cells": cells}, f, indent=1)
    return cells


# ----------------------------------------------------------------------------------------------------
# Summary and figure.


def gap_cells(cells: list[dict]) -> list[dict]:
    """Cells where em_kmeanspp's l2 on the bayes tasks is >= GAP_RATIO x bayes' l2, with their ratios."""
    keyed = {}
    for c in cells:
        key = (c["kind"], c.get("setting"), c["dim"], c["N"], c.get("K"), c.get("rho"))
        keyed.setdefault(key, {})[c["method"]] = c
    out = []
    for key, by_method in keyed.items():
        em, bayes = by_method.get("em_kmeanspp"), by_method.get("bayes")
        if not em or not bayes or "l2" not in bayes or "l2_on_bayes_tasks" not in em:
            continue
        ratio = em["l2_on_bayes_tasks"]["mean"] / bayes["l2"]["mean"]
        entry = dict(zip(("kind", "setting", "dim", "N", "K", "rho"), key), em_over_bayes=ratio)
        for name in ("tgmm", "em_seeded", "bgm", "tgmm+em"):
            if name in by_method and "l2_on_bayes_tasks" in by_method[name]:
                entry[f"{name}_over_bayes"] = (
                    by_method[name]["l2_on_bayes_tasks"]["mean"] / bayes["l2"]["mean"]
                )
        entry["gap"] = bool(ratio >= GAP_RATIO)
        out.append(entry)
    return out


def _curve(ax, pts, color, label, **style) -> None:
    """One method's (x, stat) points as an errorbar line (nothing when there are none)."""
    if pts:
        xs, stats = zip(*pts)
        ax.errorbar(
            xs, [s["mean"] for s in stats], yerr=[s["sem"] for s in stats], marker="o", ms=3, capsize=2,
            color=color, label=label, **style,
        )  # fmt: skip


def plot(cells: list[dict], path: str) -> None:
    """Grid: one panel per (d, K), l2 against N per method (log-log), every method on bayes' tasks (the first
    ``bayes_tasks`` of each cell, so the curves compare identical tasks); then l2 against rho per PT setting."""
    grid = [c for c in cells if c["kind"] == "grid"]
    dims = sorted({c["dim"] for c in grid})
    settings = list(dict.fromkeys(c["setting"] for c in cells if c["kind"] == "phase_transition"))
    methods = list(dict.fromkeys(c["method"] for c in cells))
    colors = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    rows = len(dims) + (1 if settings else 0)
    fig = Figure(figsize=(3.4 * len(KS), 2.8 * rows))
    axes = fig.subplots(rows, len(KS), squeeze=False)
    for i, dim in enumerate(dims):
        for j, k in enumerate(KS):
            ax = axes[i][j]
            for m in methods:
                pts = sorted(
                    (c["N"], c["l2_on_bayes_tasks"])
                    for c in grid
                    if c["dim"] == dim and c["K"] == k and c["method"] == m and "l2_on_bayes_tasks" in c
                )
                _curve(ax, pts, colors[m], m, linestyle="--" if m == "bayes" else "-")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"d={dim}, K={k}", fontsize=9)
            if i == rows - 1 or (settings and i == len(dims) - 1):
                ax.set_xlabel("N")
        axes[i][0].set_ylabel("l2 on bayes' tasks (mean ± sem)", fontsize=8)
    if settings:
        for j in range(len(KS)):
            ax = axes[-1][j]
            if j >= len(settings):
                ax.axis("off")
                continue
            mine = [c for c in cells if c.get("setting") == settings[j] and "l2_on_bayes_tasks" in c]
            for m in methods:
                pts = sorted((c["rho"], c["l2_on_bayes_tasks"]) for c in mine if c["method"] == m)
                _curve(ax, pts, colors[m], m)
            ax.set_yscale("log")
            ax.set_title(f"phase transition {settings[j]} (D={mine[0]['dim']})", fontsize=9)
            ax.set_xlabel("rho = Delta / Delta_line")
    handles = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.legend(list(handles.values()), list(handles), loc="upper center", ncol=len(handles), fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=110)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    names = [m for m in METHODS if m in FLAGS.methods]
    unknown = sorted(set(FLAGS.methods) - set(METHODS))
    if unknown:
        raise app.UsageError(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    noise = noise_range()
    noise_names = [m for m in NOISE_METHODS if m in FLAGS.noise_methods]
    unknown = sorted(set(FLAGS.noise_methods) - set(NOISE_METHODS))
    if unknown:
        raise app.UsageError(f"unknown noise method(s) {unknown}; choose from {list(NOISE_METHODS)}")
    if FLAGS.noise_scale_range and not (len(FLAGS.noise_scale_range) == 2 and 0 < noise[0] < noise[1]):
        raise app.UsageError(
            f"--noise_scale_range must be lo,hi with 0 < lo < hi, got {FLAGS.noise_scale_range}"
        )
    settings = dict(
        tasks_per_cell=FLAGS.tasks_per_cell,
        bayes_tasks=FLAGS.bayes_tasks,
        eval_seed=FLAGS.eval_seed,
        methods=names,
        bayes_config=repr(get_baseline("bayes", **bayes_overrides()).keywords["config"]),
    )
    if FLAGS.workdir:  # a trained model instead of the shipped one: its own cache entries
        settings["model"] = model_text()
    noise_settings = None
    if noise is not None:  # its own cache entries (the settings of the other blocks are unchanged)
        noise_settings = dict(
            settings,
            methods=noise_names,
            noise_scale_range=list(noise),
            component_scale_range=list(component_range() or ()),
            bayes_config=repr(get_baseline("bayes", **bayes_config(noise)).keywords["config"]),
        )
    cells = []
    for dim in map(int, FLAGS.dims):
        for n in map(int, FLAGS.ns):
            if names:
                path = os.path.join(FLAGS.cache, f"grid_d{dim}_n{n}.json")
                cells += _cached(path, settings, lambda dim=dim, n=n: grid_block(dim, n, names))
            if noise is not None:
                path = os.path.join(FLAGS.cache, f"noise_d{dim}_n{n}.json")
                cells += _cached(
                    path, noise_settings, lambda dim=dim, n=n: noise_block(dim, n, noise_names, noise)
                )
    for setting in [s for s in FLAGS.pt_settings if s and names]:
        path = os.path.join(FLAGS.cache, f"pt_{setting}.json")
        cells += _cached(path, settings, lambda setting=setting: pt_block(setting, names))
    target = None
    if names and not FLAGS.workdir and 2 in map(int, FLAGS.dims) and 128 in map(int, FLAGS.ns):
        path = os.path.join(FLAGS.cache, "target_check.json")
        target = _cached(path, settings, lambda: [target_check()])[0]
    payload = dict(
        settings=settings,
        target_check=target,
        refine_steps=REFINE_STEPS,
        gap_ratio=GAP_RATIO,
        checkpoint=model_text(),
        cells=cells,
        gaps=gap_cells(cells),
    )
    if noise is not None:
        payload["noise_settings"] = noise_settings
        payload["noise"] = noise_summary(cells)
    study.write_json(FLAGS.results, f"{FLAGS.name}.json", payload)
    if any(c["kind"] in ("grid", "phase_transition") for c in cells):  # the figure has no noise panels yet
        plot(cells, os.path.join(FLAGS.results, f"{FLAGS.name}.png"))
    for g in payload["gaps"]:
        if g["gap"]:
            print(json.dumps(g))


if __name__ == "__main__":
    define_flags()
    app.run(main)
