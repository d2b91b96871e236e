"""The phase-transition and real-data study scripts run end to end on a minimal setting (so they cannot rot)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAT = {"mean", "sem", "median"}


def _run(module, *args):
    cmd = [sys.executable, "-m", module, *args]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
    assert out.returncode == 0, out.stderr[-3000:]


@pytest.mark.subprocess
@pytest.mark.slow
def test_phase_transition_script(tmp_path):
    results = tmp_path / "results"
    _run(
        "experiments.studies.phase_transition.run",
        "--settings=d2",
        "--rhos=1,3",
        "--tasks_per_cell=4",
        "--methods=em,tgmm,em_seeded,oracle",
        f"--cache={tmp_path / 'cache'}",
        f"--results={results}",
    )
    saved = json.loads((results / "phase_transition.json").read_text())
    assert (results / "phase_transition.png").stat().st_size > 0
    assert saved["settings"] == {
        "d2": {"n": 32, "b": 0.0185, "dim": 2, "paper_checkpoint": "paper_d2", "tasks_per_cell": 4}
    }
    assert saved["rhos"] == [1.0, 3.0] and saved["tasks_per_cell"] == 4
    cells = saved["cells"]
    assert {(c["method"], c["rho"]) for c in cells} == {
        (m, r) for m in ("oracle", "em", "tgmm", "em_seeded") for r in (1.0, 3.0)
    }
    for c in cells:  # the model's learned gain over its skeleton, paired on the same tasks
        assert ("learned_gain" in c) == (c["method"] == "tgmm")
        if c["method"] == "tgmm":
            skeleton = next(s for s in cells if s["method"] == "em_seeded" and s["rho"] == c["rho"])
            want = skeleton["l2"]["mean"] - c["l2"]["mean"]
            assert c["learned_gain"]["reference"] == "em_seeded"
            np.testing.assert_allclose(c["learned_gain"]["mean"], want, rtol=1e-6, atol=1e-9)
    for c in cells:
        assert c["num_tasks"] == 4 and c["dim"] == 2 and c["n"] == 32
        assert STAT <= set(c["cluster_acc"]) and STAT <= set(c["l2"]) and STAT <= set(c["l2_means"])
        assert 0.5 <= c["cluster_acc"]["mean"] <= 1.0 and 0.0 <= c["exact_recovery"] <= 1.0
        assert c["delta"] == np.float64(c["rho"]) * np.sqrt((1 + np.sqrt(1 + 2 * 0.0185)) * np.log(32))
    oracle = {c["rho"]: c for c in cells if c["method"] == "oracle"}
    assert oracle[3.0]["l2"]["mean"] == 0.0  # the true parameters, aligned to themselves
    # the Bayes classifier errs with probability Phi(-Delta / 2); 4 x 32 points leave a wide margin
    assert oracle[3.0]["cluster_acc"]["mean"] > oracle[1.0]["cluster_acc"]["mean"] - 0.05
    assert oracle[3.0]["cluster_acc"]["mean"] > 0.97


@pytest.mark.subprocess
@pytest.mark.slow
def test_real_data_script(tmp_path):
    results = tmp_path / "results"
    _run(
        "experiments.studies.real_data.run",
        "--datasets=iris",
        "--views=std",
        "--splits=2",
        "--methods=em_kmeanspp,tgmm,em_seeded,tgmm_sub128,sklearn_spherical",
        f"--results={results}",
    )
    saved = json.loads((results / "real_data.json").read_text())
    assert (results / "real_data.png").stat().st_size > 0
    assert saved["datasets"] == {"iris": {"n": 150, "dim": 4, "K": 3, "class_counts": [50, 50, 50]}}
    assert saved["splits"] == 2 and saved["padded_n"] == 128 and saved["subset"] == 128
    cells = saved["cells"]
    assert [c["method"] for c in cells] == [
        "em_kmeanspp",
        "tgmm",
        "em_seeded",
        "tgmm_sub128",
        "sklearn_spherical",
    ]
    for c in cells:
        assert c["dataset"] == "iris" and c["view"] == "std" and c["K"] == 3 and c["dim"] == 4
        assert c["not_applicable"] == 0.0
        for metric in ("acc_fit", "acc_test", "ll_fit", "ll_test"):
            assert STAT | {"std", "values"} <= set(c[metric]) and len(c[metric]["values"]) == 2
            assert np.isfinite(c[metric]["values"]).all()
        # chance is 1/3 for three equal classes; every method clusters iris far better than that
        assert 0.6 <= c["acc_fit"]["mean"] <= 1.0 and 0.6 <= c["acc_test"]["mean"] <= 1.0
    by = {c["method"]: c for c in cells}
    # the learned gain: held-out accuracy of the model minus its skeleton's, split by split
    diff = np.subtract(by["tgmm"]["acc_test"]["values"], by["em_seeded"]["acc_test"]["values"])
    assert by["tgmm"]["learned_gain"]["reference"] == "em_seeded"
    np.testing.assert_allclose(by["tgmm"]["learned_gain"]["mean"], diff.mean())
    # 75 points <= 128: the subset is the whole fitting half, so the two TGMM rows must agree
    assert by["tgmm"]["acc_fit"]["values"] == by["tgmm_sub128"]["acc_fit"]["values"]
