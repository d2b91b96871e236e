"""The hard-regime study end to end at a tiny size: every method on the same tasks, the learned gains, the gap
cells computed from em_kmeanspp and bayes on the same tasks, the report section."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments.studies.hard_regime.report import hard_regime_section

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.subprocess
@pytest.mark.slow
def test_hard_regime_script(tmp_path):
    results = tmp_path / "results"
    cmd = [
        sys.executable,
        "-m",
        "experiments.studies.hard_regime.run",
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
        over_em = by[("tgmm", k)]["gain_over_classical"]
        assert over_em["reference"] == "em_kmeanspp" and over_em["num_tasks"] == 6
        want = by[("em_kmeanspp", k)]["l2"]["mean"] - by[("tgmm", k)]["l2"]["mean"]
        np.testing.assert_allclose(over_em["mean"], want, rtol=1e-9, atol=1e-12)
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

    # --baseline_cache: the methods without a checkpoint are kept per task; another model (here the same one
    # seeded otherwise, --slot_init) on the same tasks reuses them: the same cells, timings included
    def run(name, *extra):
        args = [a for a in cmd if not a.startswith("--cache")]
        args += [f"--cache={tmp_path / name}", f"--baseline_cache={tmp_path / 'baselines'}", f"--name={name}"]
        out = subprocess.run(
            args + list(extra), check=False, cwd=ROOT, capture_output=True, text=True, timeout=900
        )
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads((results / f"{name}.json").read_text())

    first = run("first")
    assert len(os.listdir(tmp_path / "baselines")) == 3  # em_kmeanspp, bgm and bayes: one file each
    other = run("other", "--slot_init=farthest")
    assert other["checkpoint"].endswith("seeded by 'farthest'") and "seeded by" not in first["checkpoint"]
    baseline = ("em_kmeanspp", "bgm", "bayes")
    kept = [c for c in first["cells"] if c["method"] in baseline]
    assert kept == [c for c in other["cells"] if c["method"] in baseline]
    for c in kept:  # recomputed in the first run: the same numbers as without the cache, other timings
        old = by[(c["method"], c["K"])]
        assert c["l2"] == old["l2"] and c["seconds_per_task"] != old["seconds_per_task"]


@pytest.mark.slow
def test_sklearn_gmm_fit_in_data_units():
    """The unknown-noise reference on tasks multiplied by sigma: means and scales come back in the data's units."""
    import jax
    import jax.numpy as jnp

    from experiments.studies.hard_regime import run as hard_regime
    from tests.baseline_helpers import aligned_l2_means, make_tasks

    # (not below ~0.01: scikit-learn adds reg_covar = 1e-6 to every variance, in the data's units; at sigma = 1e-3
    # the scales come back ~1.4 sigma)
    sigma = np.array([0.05, 1.0, 300.0])
    parts = [make_tasks(50 + i, [3], 2, 200, point_scale=float(c)) for i, c in enumerate(sigma)]
    task = jax.tree.map(lambda *a: jnp.concatenate(a), *parts)
    est = jax.tree.map(np.asarray, hard_regime._sklearn_gmm_fit(task, 0))
    assert np.all(aligned_l2_means(est.means, task) / sigma**2 < 0.1)
    scales = est.scales[:, :3, 0] / sigma[:, None]  # per-component sigma_k / sigma, spherical
    assert np.all(np.abs(scales - 1) < 0.25) and np.all(est.scales[:, :3, 1] == est.scales[:, :3, 0])
    np.testing.assert_allclose(est.weights.sum(-1), 1.0, rtol=1e-5)


def test_noise_summary_ratios():
    from experiments.studies.hard_regime.run import noise_summary

    def cell(method, l2, sigma_units, on_bayes=None):
        c = dict(kind="grid_noise", dim=2, N=16, K=3, method=method, l2={"mean": l2})
        c["l2_sigma_units"] = {"mean": sigma_units}
        if on_bayes is not None:
            c["l2_on_bayes_tasks"] = {"mean": on_bayes}
        return c

    cells = [cell("sklearn_gmm", 10.0, 0.5, on_bayes=8.0), cell("bayes", 4.0, 0.2), cell("bgm", 5.0, 1.0)]
    cells.append(dict(cells[0], kind="grid"))  # a known-noise cell: not summarised
    (entry,) = noise_summary(cells)
    assert entry["bayes_over_sklearn_gmm"] == 0.5  # on bayes' tasks
    assert entry["bgm_over_sklearn_gmm"] == 0.5 and entry["bgm_over_sklearn_gmm_sigma_units"] == 2.0


@pytest.mark.subprocess
def test_hard_regime_unknown_noise_cells(tmp_path):
    """--noise_scale_range: the grid's tasks times sigma, scored in data units by sklearn_gmm and bayes (unknown
    sigma), alone (--methods= runs no known-noise block and loads no checkpoint)."""
    results = tmp_path / "results"
    cmd = [
        sys.executable, "-m", "experiments.studies.hard_regime.run", "--dims=2", "--ns=16", "--pt_settings=", "--methods=",
        "--noise_scale_range=0.01,100", "--noise_methods=sklearn_gmm,bayes", "--tasks_per_cell=3",
        "--bayes_tasks=2", "--bayes_sweeps=30", f"--cache={tmp_path / 'cache'}", f"--results={results}",
    ]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    saved = json.loads((results / "hard_regime.json").read_text())
    cells = saved["cells"]
    assert {(c["kind"], c["method"], c["K"]) for c in cells} == {
        ("grid_noise", m, k) for m in ("sklearn_gmm", "bayes") for k in (2, 3, 4, 5)
    }
    for c in cells:
        assert c["num_tasks"] == (2 if c["method"] == "bayes" else 3)
        assert np.isfinite(c["l2"]["mean"]) and np.isfinite(c["l2_sigma_units"]["mean"])
    assert len(saved["noise"]) == 4 and all("bayes_over_sklearn_gmm" in e for e in saved["noise"])
    assert saved["noise_settings"]["noise_scale_range"] == [0.01, 100.0]
    assert "noise_scale=None" in saved["noise_settings"]["bayes_config"]


def test_unknown_noise_section_pools_cells_equally():
    """The unknown-noise REPORT section: the pooled learned gain weights every cell alike (mean of the means,
    sem = root of the summed squared sems / cells) and the data-unit ratio is the model's mean l2 over sklearn's."""
    from experiments.studies.hard_regime.report import pooled_gain, unknown_noise_section

    def cell(method, k, l2, sigma_units, gain=None):
        c = dict(kind="grid_noise", dim=2, N=16, K=k, method=method, noise_scale_range=[0.01, 100.0])
        c.update(l2={"mean": l2}, l2_sigma_units={"mean": sigma_units})
        if gain:
            c["learned_gain"] = dict(zip(("mean", "sem", "z"), gain), reference="em_seeded", num_tasks=8)
        return c

    cells = [
        cell("sklearn_gmm", 2, 10.0, 1.0),
        cell("tgmm", 2, 7.0, 0.5, (0.3, 0.1, 3.0)),
        cell("sklearn_gmm", 3, 4.0, 2.0),
        cell("tgmm", 3, 5.0, 2.5, (-0.1, 0.2, -0.5)),
    ]
    pooled = pooled_gain([c for c in cells if c["method"] == "tgmm"])
    assert pooled["mean"] == pytest.approx(0.1) and pooled["sem"] == pytest.approx(np.sqrt(0.05) / 2)
    assert pooled["z"] == pytest.approx(0.1 / (np.sqrt(0.05) / 2)) and pooled["cells"] == 2
    saved = {"cells": cells, "settings": {"bayes_tasks": 4}, "checkpoint": "a test"}
    text = "\n".join(unknown_noise_section(saved, "test"))
    assert "| 2 | 16 | 2 | 1.000 | n/a | 0.500 | n/a | 0.70 |" in text
    assert "| 2 | 16 | 3 | 2.000 | n/a | 2.500 | n/a | 1.25 |" in text
    assert "0.70-1.25 over the 2 cells, at most 0.8 in 1. Learned gain pooled over the 2 cells" in text
    assert unknown_noise_section({"cells": [], "settings": {}, "checkpoint": ""}, "test") == []


def test_learning_targets_section_closes_the_gap_on_bayes_tasks():
    """The targets section: share closed = (em - tgmm) / (em - bayes) on bayes' tasks, per gap cell; pooled gains
    weight gap cells alike; the unknown-noise ratio is the model's mean l2 over GaussianMixture's."""
    from experiments.studies.hard_regime.report import learning_targets_section

    def cell(kind, method, k, l2, on_bayes=None, gain=None, over=None):
        c = dict(kind=kind, dim=2, N=16, K=k, method=method, l2={"mean": l2})
        if on_bayes is not None:
            c["l2_on_bayes_tasks"] = {"mean": on_bayes}
        if gain:
            c["learned_gain"] = dict(zip(("mean", "sem", "z"), gain), reference="em_seeded", num_tasks=8)
        if over:
            c["gain_over_classical"] = dict(
                zip(("mean", "sem", "z"), over), reference="em_kmeanspp", num_tasks=8
            )
        return c

    cells = [
        cell("grid", "bayes", 3, 1.0),
        cell("grid", "em_kmeanspp", 3, 2.1, on_bayes=2.0),
        cell("grid", "tgmm", 3, 1.5, on_bayes=1.3, gain=(0.2, 0.1, 2.0), over=(0.6, 0.2, 3.0)),
        cell("grid", "bayes", 4, 1.0),
        cell("grid", "em_kmeanspp", 4, 1.1, on_bayes=1.1),  # not a gap cell: left out
        cell("grid", "tgmm", 4, 1.0, on_bayes=1.0, gain=(9.0, 1.0, 9.0)),
        cell("grid_noise", "sklearn_gmm", 3, 10.0),
        cell("grid_noise", "tgmm", 3, 7.0, gain=(0.3, 0.1, 3.0)),
    ]
    gaps = [
        dict(kind="grid", dim=2, N=16, K=3, gap=True),
        dict(kind="grid", dim=2, N=16, K=4, gap=False),
        dict(kind="grid_noise", dim=2, N=16, K=3, gap=True),
    ]
    saved = {"cells": cells, "gaps": gaps, "gap_ratio": 1.2, "checkpoint": "a test"}
    text = "\n".join(learning_targets_section(saved, "test"))
    assert "| 2 | 16 | 3 | 2.00 | 1.30 | 70% | +0.2 ± 0.1 (z +2.0) | +0.6 ± 0.2 (z +3.0) |" in text
    assert "| 2 | 16 | 4 |" not in text
    assert "At least 60% closed in 1 of 1 gap cells" in text
    assert (
        "gain over the skeleton +0.200 ± 0.100 (z +2.0, 1 cells); over em_kmeanspp +0.600 ± 0.200 (z +3.0"
        in text
    )
    assert "d=2 N=16 K=3 0.70. At most 0.8 in 1 of 1." in text
    easy = {
        "checkpoint": "a test",
        "cells": [
            dict(kind="grid", dim=8, N=128, K=2, method="em_kmeanspp", l2={"mean": 0.1}),
            dict(kind="grid", dim=8, N=128, K=2, method="tgmm", l2={"mean": 0.102}),
            dict(kind="grid", dim=8, N=128, K=3, method="em_kmeanspp", l2={"mean": 0.1}),
            dict(kind="grid", dim=8, N=128, K=3, method="tgmm", l2={"mean": 0.11}),
        ],
    }
    text = "\n".join(learning_targets_section(saved, "test", easy=easy))
    assert "d=8 N=128 K=2 1.02, d=8 N=128 K=3 1.10. At most 1.03 in 1 of 2." in text
