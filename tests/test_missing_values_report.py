"""The missing-values REPORT section (experiments/studies/missing_values/report.py) from small synthetic JSON:
it renders, and its done-when verdicts follow the numbers."""

import json

from experiments.studies.missing_values import report


def _stat(mean):
    return {"mean": mean, "sem": 0.01, "median": mean}


def _cell(dim, rate, l2, ari, agreement=1.0):
    """``l2`` / ``ari``: method -> mean."""
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
    return cell


def _saved(tgmm_l2_d8=0.05, tgmm_ari_d2=0.70, models=report.MODELS):
    def cell(dim, rate, tgmm_l2, tgmm_ari):
        l2 = {"em_missing": 0.05, "em_mean_impute": 0.8}
        ari = {"em_missing": 0.72, "em_mean_impute": 0.5}
        for m in models:
            l2[m], ari[m] = tgmm_l2, tgmm_ari
        return _cell(dim, rate, l2, ari)

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
    ]
    assert all(c["ari_met"] and c["l2_met"] for c in found)
    text = "\n".join(report.missing_values_section(_saved()))
    assert (
        "## Missing values" in text
        and "![l2 and ARI against the missing rate](missing_values/missing_values.png)" in text
    )
    lines = _check_lines(text, "tgmm")
    assert len(lines) == 2 and all(line.count("**met**") == 2 for line in lines)
    assert "in 2 of 2 dimensions: **met**" in text
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
    assert "in 0 of 2 dimensions: **not met**" in text


def test_ari_tie_is_met_and_one_dimension_fails():
    saved = _saved(tgmm_ari_d2=0.5, tgmm_l2_d8=0.07)  # ARI equal to mean imputation's: "at least" holds
    text = "\n".join(report.missing_values_section(saved))
    assert "in 1 of 2 dimensions: **not met**" in text


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
