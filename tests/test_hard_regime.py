"""The hard-regime study end to end at a tiny size: every method on the same tasks, the learned gains, the gap
cells computed from em_kmeanspp and bayes on the same tasks, the report section."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments.hard_regime_report import hard_regime_section

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.subprocess
def test_hard_regime_script(tmp_path):
    results = tmp_path / "results"
    cmd = [
        sys.executable,
        "-m",
        "experiments.hard_regime",
        "--dims=2",
        "--ns=16",
        "--pt_settings=",
        "--tasks_per_cell=6",
        "--bayes_tasks=3",
        "--bayes_sweeps=60",
        "--methods=tgmm,em_seeded,em_kmeanspp,bgm,bayes",
        f"--cache={tmp_path / 'cache'}",
        f"--results={results}",
    ]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    saved = json.loads((results / "hard_regime.json").read_text())
    assert (results / "hard_regime.png").stat().st_size > 0
    cells = saved["cells"]
    methods = ("tgmm", "em_seeded", "em_kmeanspp", "bgm", "bayes")
    assert {(c["method"], c["K"]) for c in cells} == {(m, k) for m in methods for k in (2, 3, 4, 5)}
    for c in cells:
        assert c["dim"] == 2 and c["N"] == 16 and c["seconds_per_task"] > 0
        assert c["num_tasks"] == (3 if c["method"] == "bayes" else 6)
        assert np.isfinite(c["l2"]["mean"]) and 0 <= c["cluster_acc"]["mean"] <= 1
    by = {(c["method"], c["K"]): c for c in cells}
    for k in (2, 3, 4, 5):
        gain = by[("tgmm", k)]["learned_gain"]
        assert gain["reference"] == "em_seeded" and gain["num_tasks"] == 6
        want = by[("em_seeded", k)]["l2"]["mean"] - by[("tgmm", k)]["l2"]["mean"]
        np.testing.assert_allclose(gain["mean"], want, rtol=1e-9, atol=1e-12)
        # the gap ratio compares em_kmeanspp with bayes on bayes' tasks, the first 3 of the cell
        gap = next(g for g in saved["gaps"] if g["K"] == k)
        em_sub, bayes = by[("em_kmeanspp", k)]["l2_on_bayes_tasks"]["mean"], by[("bayes", k)]["l2"]["mean"]
        np.testing.assert_allclose(gap["em_over_bayes"], em_sub / bayes)
        assert gap["gap"] == (em_sub / bayes >= saved["gap_ratio"])
    # a second run is served from the cache
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
    assert again.returncode == 0 and json.loads((results / "hard_regime.json").read_text())["cells"] == cells
    text = "\n".join(hard_regime_section(saved, "hard_regime.png"))
    assert "## Learned gain and the Bayes limit" in text and "### d = 2: against the Bayes limit" in text
