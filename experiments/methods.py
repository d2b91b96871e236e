"""Composing a run: the ``{name: method}`` dicts the library scores, built from the ``baselines`` registry.

The library (``tgmm_jax``) never imports ``baselines``; these functions build the methods and hand them to
the trainer (``train``) and to ``tgmm_jax.scoring.evaluate_methods`` (``methods_for_run``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from baselines import NAMES, applies_to, get_baseline
from baselines.em import fit_em_from
from experiments import reporting
from tgmm_jax import scoring
from tgmm_jax.train import train_and_evaluate
from tgmm_jax.train.config import eval_baseline_names


def baseline_methods(names, variant: str = "isotropic") -> dict[str, scoring.Method]:
    """The registered baselines ``names`` for ``variant``, as methods (unknown or inapplicable names raise)."""
    return {name: scoring.param_free(get_baseline(name, variant=variant)) for name in names}


def eval_baselines(config) -> dict[str, scoring.Method]:
    """The baselines a training config's periodic evaluation names (``config.eval.baselines``)."""
    return baseline_methods(eval_baseline_names(config.eval), config.task.variant)


def train(config, workdir: str, **kwargs) -> dict:
    """``train_and_evaluate`` with the config's evaluation baselines; prints the last evaluation's l2 table."""
    summaries = train_and_evaluate(config, workdir, baselines=eval_baselines(config), **kwargs)
    if summaries and jax.process_index() == 0:
        n = config.eval.n or config.task.n_max
        print(
            f"\nlast evaluation, on {n}-point tasks, l2 error, mean ± sem (median):\n{reporting.format_table(summaries)}"
        )
    return summaries


def methods_for_run(run, names=None) -> tuple[dict[str, scoring.Method], dict]:
    """TGMM of a trained run (``train.restore.load_run``) and the baselines: all that apply, or ``names``.

    Returns the methods and their parameters ({MODEL_METHOD: run.params} when TGMM is among them), the two
    mappings ``scoring.evaluate_methods`` takes.
    """
    available = [scoring.MODEL_METHOD] + [b for b in NAMES if applies_to(b, run.spec.variant)]
    names = list(names or available)
    unknown = [m for m in names if m not in available]
    if unknown:
        raise ValueError(
            f"unknown or inapplicable method(s) {unknown} for the {run.spec.variant} variant; "
            f"available: {available}"
        )
    methods, params = {}, {}
    if scoring.MODEL_METHOD in names:
        methods[scoring.MODEL_METHOD] = scoring.model_method(run.model)
        params[scoring.MODEL_METHOD] = run.params
    methods.update(baseline_methods([m for m in names if m != scoring.MODEL_METHOD], run.spec.variant))
    return methods, params


def _model_then_restarts(model, n_init: int, params, key, task):
    fitted, fitted_info = fit_em_from(
        task, model.apply({"params": params}, task.points, task.point_mask, task.num_components).to_params()
    )
    restarts, restarts_info = get_baseline("em_kmeanspp", n_init=n_init)(key, task)
    keep_B = fitted_info["valid"] & ~(
        restarts_info["valid"] & (restarts_info["loglik"] > fitted_info["loglik"])
    )

    def pick(a, b):
        return None if a is None else jnp.where(keep_B.reshape(keep_B.shape + (1,) * (a.ndim - 1)), a, b)

    return jax.tree.map(pick, fitted, restarts, is_leaf=lambda x: x is None), {
        "valid": keep_B | restarts_info["valid"]
    }


def model_with_restarts(model, n_init: int = 3) -> scoring.Method:
    """TGMM as the first restart of EM: EM to convergence from the network's estimate and from ``n_init``
    k-means++ starts; each task keeps the fit of highest log-likelihood (isotropic variant)."""
    return functools.partial(_model_then_restarts, model, int(n_init))
