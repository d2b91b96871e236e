"""The missing-values REPORT section (experiments/studies/missing_values/report.py) from small synthetic JSON:
it renders, and its done-when verdicts follow the numbers."""

import json

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import logsumexp

from experiments.studies.missing_values import report
from tgmm_jax import masking
from tgmm_jax.gmm import MixtureParams
from tgmm_jax.tasks import TaskSpec, sample_tasks


def _stat(mean):
    return {"mean": mean, "sem": 0.01, "median": mean}


def _cell(dim, rate, l2, ari, agreement=1.0, kept=(True, True, False, True)):
    """``l2`` / ``ari``: method -> mean; ``kept``: per task, whether tgmm_restarts kept the network's start."""
    methods = {}
    for m in l2:
        methods[m] = {"l2": _stat(l2[m]), "ari": _stat(ari[m]), "ari_observed": _stat(ari[m]), "seconds": 0.1}
        if m in report.MODELS:
            methods[m]["predict_agreement"] = agreement
    cell = {
        "dim": dim,
        "rate": rate,
        "masked_fraction": rate,
        "points_with_missing": rate,
        "methods": methods,
    }
    for m in report.MODELS:
        for b in report.BASELINES:
            if m in l2:
                cell[f"{m}_minus_{b}"] = {"l2": _stat(l2[m] - l2[b]), "ari": _stat(ari[m] - ari[b])}
    r, n = "tgmm_restarts", "tgmm_refine"
    if r in l2 and n in l2:
        cell[f"{r}_minus_{n}"] = {"l2": _stat(l2[r] - l2[n]), "ari": _stat(ari[r] - ari[n])}
        cell[f"{r}_origin"] = {
            "network_fit": list(kept),
            "network_fit_fraction": sum(kept) / len(kept),
            "network_run": list(kept),
            "gap": [0.0 if k else 0.5 for k in kept],
            "loglik_gain": [0.0 if k else 0.25 for k in kept],
            "restart_gain": _stat(0.25) if not all(kept) else _stat(float("nan")),
            "below_refine": 0,
        }
    return cell


def _saved(tgmm_l2_d8=0.05, tgmm_ari_d2=0.70, models=report.MODELS, restarts_l2=None):
    """Every model arm scores ``tgmm_l2`` / ``tgmm_ari``, but tgmm_restarts scores ``restarts_l2`` where given."""

    def cell(dim, rate, tgmm_l2, tgmm_ari):
        l2 = {"em_missing": 0.05, "em_mean_impute": 0.8}
        ari = {"em_missing": 0.72, "em_mean_impute": 0.5}
        for m in models:
            l2[m], ari[m] = tgmm_l2, tgmm_ari
        if restarts_l2 is not None and "tgmm_restarts" in models:
            l2["tgmm_restarts"] = restarts_l2
        return _cell(dim, rate, l2, ari, kept=(True,) * 4 if rate == 0 else (True, True, False, True))

    return {
        "settings": {
            "dims": [2, 8],
            "rates": [0.0, 0.3],
            "tasks": 4,
            "num_points": 128,
            "num_components": 3,
            "n_init": 10,
            "eval_seed": 1,
            "checkpoint": "cluster",
            "refine_steps": 100,
            "restarts": 9,
        },
        "cells": [
            cell(2, 0.0, 0.05, 0.9),
            cell(2, 0.3, 0.055, tgmm_ari_d2),
            cell(8, 0.0, 0.03, 0.99),
            cell(8, 0.3, tgmm_l2_d8, 0.98),
        ],
    }


def _check_lines(text, method):
    return [line for line in text.splitlines() if line.startswith(f"- `{method}`")]


def test_checks_met():
    found = report.checks(_saved())
    assert [(c["method"], c["dim"]) for c in found] == [
        ("tgmm", 2),
        ("tgmm", 8),
        ("tgmm_refine", 2),
        ("tgmm_refine", 8),
        ("tgmm_restarts", 2),
        ("tgmm_restarts", 8),
    ]
    assert all(c["ari_met"] and c["l2_met"] for c in found)
    text = "\n".join(report.missing_values_section(_saved()))
    assert (
        "## Missing values" in text
        and "![l2 and ARI against the missing rate](missing_values/missing_values.png)" in text
    )
    lines = _check_lines(text, "tgmm")
    assert len(lines) == 2 and all(line.count("**met**") == 2 for line in lines)
    assert text.count("in 2 of 2 dimensions: **met**") == 3  # one summary per model arm
    assert "`tgmm_restarts` is the network plus classical restarts, not the network alone" in text
    assert "`n_restarts=9`" in text and "10 starts in all (the baselines' `n_init` is 10)" in text
    assert "0.050 ± 0.010" in text  # a table entry: em_missing's l2


def test_checks_not_met_follow_the_numbers():
    # d = 8: l2 1.3x em_missing's (limit 1.2x); d = 2: ARI below mean imputation's
    saved = _saved(tgmm_l2_d8=1.3 * 0.05, tgmm_ari_d2=0.49)
    by_dim = {c["dim"]: c for c in report.checks(saved) if c["method"] == "tgmm"}
    assert by_dim[2]["l2_met"] and not by_dim[2]["ari_met"]
    assert by_dim[8]["ari_met"] and not by_dim[8]["l2_met"]
    assert abs(by_dim[8]["l2_limit"] - 0.06) < 1e-12
    text = "\n".join(report.missing_values_section(saved))
    d2, d8 = _check_lines(text, "tgmm")
    assert (
        "d = 2" in d2
        and "ARI 0.490" in d2
        and "0.500: **not met**" in d2
        and "0.060): **met** (medians" in d2
    )
    assert "d = 8" in d8 and "ratio 1.30" in d8 and "limit 0.060): **not met** (medians" in d8
    assert text.count("in 0 of 2 dimensions: **not met**") == 3


def test_ari_tie_is_met_and_one_dimension_fails():
    saved = _saved(tgmm_ari_d2=0.5, tgmm_l2_d8=0.07)  # ARI equal to mean imputation's: "at least" holds
    text = "\n".join(report.missing_values_section(saved))
    assert text.count("in 1 of 2 dimensions: **not met**") == 3


def test_restarts_meeting_the_target_leaves_the_network_alone_arms_not_met():
    # the network-alone arms at 2x em_missing's l2 everywhere; tgmm_restarts at 1.1x (limit 1.2x)
    saved = _saved(tgmm_l2_d8=0.10, restarts_l2=1.1 * 0.05)
    saved["cells"][1]["methods"]["tgmm"]["l2"] = _stat(0.10)  # d = 2, 30%
    saved["cells"][1]["methods"]["tgmm_refine"]["l2"] = _stat(0.10)
    verdicts = {(c["method"], c["dim"]): c["l2_met"] for c in report.checks(saved)}
    assert verdicts == {
        ("tgmm", 2): False,
        ("tgmm", 8): False,
        ("tgmm_refine", 2): False,
        ("tgmm_refine", 8): False,
        ("tgmm_restarts", 2): True,
        ("tgmm_restarts", 8): True,
    }
    text = "\n".join(report.missing_values_section(saved))
    summaries = [line for line in text.splitlines() if line.startswith("Both checks hold for")]
    assert len(summaries) == 3
    assert summaries[0].startswith("Both checks hold for `tgmm` (the estimator as shipped: the network alone")
    assert summaries[0].endswith("in 0 of 2 dimensions: **not met**.")
    assert "`tgmm_refine` (the network alone, then 100 EM steps)" in summaries[1]
    assert summaries[1].endswith("in 0 of 2 dimensions: **not met**.")
    assert (
        "`tgmm_restarts` (the network plus 9 classical k-means++ restarts: meeting the target" in summaries[2]
    )
    assert "not the network alone meeting it)" in summaries[2]
    assert summaries[2].endswith("in 2 of 2 dimensions: **met**.")
    (line,) = [line for line in _check_lines(text, "tgmm_restarts") if "d = 8" in line]
    assert "ratio 1.10, limit 0.060): **met**" in line


def test_origin_table_counts_the_tasks_that_kept_the_network_start_fit():
    text = "\n".join(report.missing_values_section(_saved(restarts_l2=0.04)))
    assert "is nowhere below `tgmm_refine`'s by more than 1e-4" in text and "kept a fit worse" not in text
    rows = [line for line in text.splitlines() if line.startswith("| 2 | ") and " of 4 |" in line]
    # rate 0: every task kept the network's start (no gain to report); 30%: a restart won on one task
    assert rows[0] == "| 2 | 0% | 4 of 4 | 0 | – | -0.010 ± 0.010 | 0.000 ± 0.010 |"
    assert rows[1] == "| 2 | 30% | 3 of 4 | 1 | 0.250 ± 0.010 | -0.015 ± 0.010 | 0.000 ± 0.010 |"


def test_origin_names_the_cells_where_a_worse_fit_was_kept():
    saved = _saved(restarts_l2=0.04)
    saved["cells"][0]["tgmm_restarts_origin"]["below_refine"] = 7  # d = 2, 0%
    saved["cells"][2]["tgmm_restarts_origin"]["below_refine"] = 9  # d = 8, 0%
    text = "\n".join(report.missing_values_section(saved))
    assert "below `tgmm_refine`'s by more than 1e-4 on 16 tasks (7 at d = 2, 0%, 9 at d = 8, 0%)" in text
    assert "kept a fit worse than its own network start's" in text and "nowhere below" not in text


def test_label_agreement_up_to_the_order_is_shown_where_the_raw_one_falls_short():
    saved = _saved()
    assert "Up to the components' order" not in "\n".join(report.missing_values_section(saved))
    for c in saved["cells"]:
        for m in report.MODELS:
            c["methods"][m]["predict_agreement_matched"] = 1.0
        c["methods"]["tgmm_restarts"].update(predict_agreement=0.4, predict_agreement_matched=0.99)
    text = "\n".join(report.missing_values_section(saved))
    assert "on 40.0% of the checked points at least" in text
    assert "the agreement is at least: `tgmm` 100.0%; `tgmm_refine` 100.0%; `tgmm_restarts` 99.0%." in text


def test_saved_run_without_the_restarts_arm_has_no_origin_table():
    saved = _saved(models=("tgmm", "tgmm_refine"))
    text = "\n".join(report.missing_values_section(saved))
    assert "Where `tgmm_restarts`' kept fit came from" not in text
    assert [c["method"] for c in report.checks(saved)] == ["tgmm", "tgmm", "tgmm_refine", "tgmm_refine"]
    assert text.count("Both checks hold for") == 2


def test_baselines_only_json_renders_without_verdicts(tmp_path):
    saved = _saved(models=())
    (tmp_path / "missing_values").mkdir()
    (tmp_path / "missing_values" / "missing_values.json").write_text(json.dumps(saved))
    part = report.build(str(tmp_path), "cpu")
    text = "\n".join(part.sections)
    assert "| em_missing | em_mean_impute |" in text
    assert "not scored" in text and "**met**" not in text
    assert report.build(str(tmp_path), "paper") is None
    assert report.build(str(tmp_path / "absent"), "cpu") is None


def _observed_loglik(points_BxNxD, params):
    """Mean observed-data log-likelihood per point under unit isotropic noise, NumPy/SciPy: [B]."""
    out = []
    for x_NxD, w_K, mu_KxD in zip(points_BxNxD, np.asarray(params.weights), np.asarray(params.means)):
        obs = ~np.isnan(x_NxD)
        sq_NxK = np.stack([np.nansum((x_NxD - mu) ** 2, axis=1) for mu in mu_KxD], axis=1)
        log_NxK = np.log(w_K) - 0.5 * sq_NxK - 0.5 * obs.sum(axis=1, keepdims=True) * np.log(2 * np.pi)
        out.append(logsumexp(log_NxK, axis=1).mean())
    return np.array(out)


def test_restart_origin_tells_the_network_fit_from_another_optimum():
    from experiments.studies.missing_values.run import _restart_origin

    spec = TaskSpec(dim=2, ks=(3,), n_max=64, n_min=64, variable_n=False)
    task = sample_tasks(jax.random.key(0), spec, 3)
    masked, _ = masking.mask_task(jax.random.key(1), task, 0.3)
    truth = MixtureParams(task.weights, task.means, task.scales, task.component_mask)
    # task 0: the same fit, components in another order; 1: the same fit; 2: means moved by 1.5 (worse)
    perm = jnp.array([2, 0, 1])
    restarts = truth.replace(
        weights=truth.weights.at[0].set(truth.weights[0][perm]),
        means=truth.means.at[0].set(truth.means[0][perm]).at[2].add(1.5),
    )
    origin = _restart_origin(masked, restarts, truth)
    assert origin["network_fit"] == [True, True, False]
    assert origin["network_run"] == [False, True, False]
    np.testing.assert_allclose(origin["gap"], [0.0, 0.0, 1.5], atol=1e-6)
    points = np.asarray(masked.points, np.float64)
    gain = _observed_loglik(points, restarts) - _observed_loglik(points, truth)
    np.testing.assert_allclose(origin["loglik_gain"], gain, atol=1e-4)
    assert gain[2] < -1e-2 and origin["below_refine"] == 1
    assert abs(origin["restart_gain"]["mean"] - gain[2]) < 1e-4 and origin["network_fit_fraction"] == 2 / 3


def _saved_with_arms(reads_l2_d2=0.04):
    """A ``--arms`` run: tgmm and the two arms (tgmm@A / tgmm_refine@A) beside the baselines; the paired
    differences as the study writes them (sem 0.01)."""
    saved = _saved()
    saved["settings"]["arms"] = {"reads_mask": "runs/a", "filled_only": "runs/b"}
    for c in saved["cells"]:
        m = c["methods"]
        l2 = {"reads_mask": reads_l2_d2 if c["dim"] == 2 else 0.05, "filled_only": 0.05}
        for arm, value in l2.items():
            for setting in report.ARM_SETTINGS:
                m[f"{setting}@{arm}"] = {"l2": _stat(value), "ari": _stat(0.75), "ari_observed": _stat(0.75)}
        for setting in report.ARM_SETTINGS:
            names = [f"{setting}@reads_mask", f"{setting}@filled_only", setting]
            for a, b in [(names[0], names[2]), (names[1], names[2]), (names[0], names[1])]:
                c[f"{a}_minus_{b}"] = {
                    "l2": _stat(m[a]["l2"]["mean"] - m[b]["l2"]["mean"]),
                    "ari": _stat(m[a]["ari"]["mean"] - m[b]["ari"]["mean"]),
                }
    return saved


def test_mask_trained_section_renders_the_arms_and_their_verdicts():
    saved = _saved_with_arms(reads_l2_d2=0.04)
    text = "\n".join(report.mask_trained_section(saved, "x"))
    assert "### Networks trained with masks" in text and "`reads_mask` = `runs/a`" in text
    assert "| tgmm@reads_mask − tgmm@filled_only: l2 | ARI |" in text
    # d = 2: reads_mask 0.04 against filled_only 0.05 (-0.01, sem 0.01: z -1.0)
    assert "-0.0100 ± 0.0100 (z -1.0)" in text
    checks = report.arm_checks(saved)
    by = {(c["method"], c["dim"]): c for c in checks}
    assert len(checks) == 2 * 2 * 2  # 2 arms x 2 settings x 2 dims at the 30% rate
    assert by[("tgmm@reads_mask", 2)]["l2_met"] and by[("tgmm@reads_mask", 2)]["ari_met"]
    worse = report.arm_checks(_saved_with_arms(reads_l2_d2=0.07))  # above 1.2 x em_missing's 0.05
    assert not {(c["method"], c["dim"]): c for c in worse}[("tgmm@reads_mask", 2)]["l2_met"]
    # in how many cells a pair's l2 difference is at least 2 sem below / above 0 (here -0.03 at d = 2)
    counts = report.mask_trained_section(_saved_with_arms(reads_l2_d2=0.02), "x")[-2]
    assert (
        "`tgmm@reads_mask` has a lower mean l2 than `tgmm@filled_only` by at least 2 sem in 2 of 4" in counts
    )
    assert "in 2 of 4 cells and a higher one in 0; a higher mean ARI in 0 and a lower one in 0." in counts
    assert (
        "A fine-tuned network has a lower mean l2 than `cluster` by at least 2 sem in 2 of 8 cells" in counts
    )
    assert "No fine-tuned network has a lower mean l2" in text  # reads_mask 0.04: z -1 against tgmm
    configs = [
        {
            "total_steps": 10,
            "optim": {"learning_rate": 3e-4},
            "init_from": "cluster",
            "missing_rate_max": 0.5,
            "seed": 0,
        }
    ]
    rendered = "".join(report.mask_trained_section(saved, "x", configs))
    assert "10 steps at learning rate 0.0003 from `cluster`, masking rate up to 0.5, seed 0" in rendered


def test_arms_flag_parses_and_names_bad_entries():
    from experiments.studies.missing_values import run

    assert run.arm_checkpoints(["a=runs/x", "b=cluster"]) == {"a": "runs/x", "b": "cluster"}
    assert run.arm_methods(["a=runs/x"]) == ["tgmm@a", "tgmm_refine@a"]
    for bad in (["a"], ["=x"], ["a=x", "a=y"], ["a@b=x"]):
        try:
            run.arm_checkpoints(bad)
        except ValueError as err:
            assert "NAME=CHECKPOINT" in str(err)
        else:
            raise AssertionError(f"{bad} accepted")
