"""The training studies (depth x N, objectives, seeds) on minimal settings: each script trains,
evaluates, writes its JSON fields and its figure, and its REPORT section renders from that JSON."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments.studies.training import common as ts
from experiments.studies.training import report
from tgmm_jax.scoring import MODEL_METHOD
from tgmm_jax.train.config import validate_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--dim=2", "--n=16", "--tasks_per_cell=4", "--baselines=em"]


def _run(module, tmp_path, *args):
    cmd = [
        sys.executable,
        "-m",
        module,
        f"--root={tmp_path}/runs",
        f"--results={tmp_path}/results",
        *TINY,
        *args,
    ]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    results = tmp_path / "results"
    sections, runs = report.training_studies_sections(str(results))
    return results, "\n".join(sections), runs


def _load(path):
    with open(path) as f:
        return json.load(f)


@pytest.mark.subprocess
@pytest.mark.slow
def test_depth_study(tmp_path):
    results, text, runs = _run(
        "experiments.studies.training.depth", tmp_path, "--layers=1", "--steps=2", "--test_n=16,32"
    )
    saved = _load(results / "depth_sample_size.json")
    assert saved["n_train"] == [8, 16] and saved["test_n"] == [16, 32] and list(saved["by_layers"]) == ["1"]
    res = saved["by_layers"]["1"]
    assert _load(os.path.join(res["workdir"], "config.json"))["model"]["num_layers"] == 1
    # the baselines beside the deepest model, and the model's reference for its learned gain
    assert {c["method"] for c in res["cells"]} == {MODEL_METHOD, "em", "em_kmeanspp"}
    assert all("learned_gain" in c for c in res["cells"] if c["method"] == MODEL_METHOD)
    assert {(c["K"], c["N"]) for c in res["cells"] if c["method"] == MODEL_METHOD} == {
        (k, n) for k in (2, 3, 4, 5) for n in (16, 32)
    }
    for k, ratio in res["trend"]["by_k"].items():  # l2 at the largest test N / l2 at the training N
        big, small = (ts.cell(res["cells"], MODEL_METHOD, K=int(k), N=n)["l2"]["mean"] for n in (32, 16))
        assert ratio == pytest.approx(big / small)
    assert len(res["curve"]) == 2 and set(res["curve"][-1]["l2"]) == {"2", "3", "4", "5"}
    assert os.path.getsize(results / "depth_sample_size.png") > 0
    assert (
        "## Depth x sample size" in text
        and "**Verdict**" in text
        and "| TGMM L=1 |" in text
        and "| em |" in text
    )
    assert len(runs) == 1


@pytest.mark.subprocess
@pytest.mark.slow
def test_objectives_study(tmp_path):
    results, text, _ = _run(
        "experiments.studies.training.objectives", tmp_path, "--objectives=est,lik", "--steps=2"
    )
    saved = _load(results / "objectives_study.json")
    assert list(saved["by_objective"]) == ["est", "lik"] and saved["ks"] == [2, 3, 4, 5]
    l2 = {}
    for objective, res in saved["by_objective"].items():
        assert _load(os.path.join(res["workdir"], "config.json"))["objective"] == objective
        assert {c["method"] for c in res["cells"]} == {MODEL_METHOD}
        for c in res["cells"]:
            assert all(np.isfinite(c[m]["mean"]) for m in ("l2", "loglik", "cluster_acc"))
        assert [p["step"] for p in res["curve"]] == [1, 2]
        l2[objective] = [c["l2"]["mean"] for c in res["cells"]]
    assert (
        l2["est"] != l2["lik"]
    )  # the objective switch reached the trainer: same seed and data, other weights
    assert {c["method"] for c in saved["baselines"]} == {"em", "em_kmeanspp"}  # + the model's reference
    level = np.mean(list(saved["by_objective"]["est"]["curve"][-1]["l2"].values()))
    assert (
        saved["reach_est_final"]["level"] == pytest.approx(level)
        and saved["reach_est_final"]["steps"]["est"] <= 2
    )
    assert os.path.getsize(results / "objectives_study.png") > 0
    assert "## Objectives" in text and "| TGMM(lik) |" in text and "log-likelihood" in text


@pytest.mark.subprocess
@pytest.mark.slow
def test_seeds_study(tmp_path):
    results, text, runs = _run(
        "experiments.studies.training.seeds", tmp_path, "--seeds=0,1", "--parts=paper", "--paper_steps=2"
    )
    saved = _load(results / "seeds_study.json")
    part = saved["parts"]["paper"]
    assert [r["seed"] for r in part["runs"]] == [0, 1] and part["ks"] == [2, 3, 4, 5] and part["N"] == 16
    assert [_load(os.path.join(r["workdir"], "config.json"))["seed"] for r in part["runs"]] == [0, 1]
    for k in part["ks"]:
        values = [ts.cell(r["cells"], MODEL_METHOD, K=k)["l2"]["mean"] for r in part["runs"]]
        stats = part["spread"][str(k)]["l2"]
        assert stats["mean"] == pytest.approx(np.mean(values)) and stats["std"] == pytest.approx(
            np.std(values, ddof=1)
        )
        assert (stats["min"], stats["max"]) == (min(values), max(values)) and values[0] != values[1]
    assert {c["method"] for c in part["baselines"]} == {"em", "em_kmeanspp"}  # + the model's reference
    assert os.path.getsize(results / "seeds_study.png") > 0
    assert "## Seeds and machines" in text and "std across seeds" in text and len(runs) == 2
    # the cluster part trains the README's job with only the seed and the step budget changed
    config = ts.cluster_seed_config(seed=2, steps=7)
    validate_config(config)
    assert (config.seed, config.total_steps, config.model.readout) == (2, 7, "cluster")


def test_across_seeds_and_bad_names():
    stats = ts.across_seeds([1.0, 2.0, 4.0])
    assert stats == pytest.approx(dict(mean=7 / 3, std=np.std([1, 2, 4], ddof=1), min=1.0, max=4.0, n=3))
    ts.check_names("--parts", ["paper"], ("paper", "cluster"))
    with pytest.raises(ValueError, match=r"unknown --parts \['gpu'\]; choose from \('paper', 'cluster'\)"):
        ts.check_names("--parts", ["paper", "gpu"], ("paper", "cluster"))
