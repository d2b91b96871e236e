"""The benchmark scripts run end to end on a minimal setting, with torch blocked, so they cannot rot.

Checks the JSON's fields and the cost model's consistency, never speeds.
"""

import json
import math
import os
import subprocess
import sys

import pytest

import benchmarks
from benchmarks import evaluate, train_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def no_torch(monkeypatch):
    for name in ("torch", "transformers", "benchmarks.torch_reference"):
        monkeypatch.setitem(sys.modules, name, None)  # importing any of them raises ImportError
    monkeypatch.delattr(benchmarks, "torch_reference", raising=False)  # an earlier import left on the package


@pytest.mark.slow
def test_train_step_runs_without_torch(tmp_path, no_torch, capsys):
    out = tmp_path / "train_step.json"
    train_step.main(
        ["--json", str(out), "--sizes", "tiny", "--tasks-per-k", "1", "--n", "8", "--repeats", "2"]
        + ["--budget-s", "0", "--peak-size", "64"]
    )
    printed = capsys.readouterr().out
    assert "PyTorch side skipped" in printed and "pip install -e '.[bench]'" in printed
    report = json.loads(out.read_text())
    assert report["torch"] is None and "PyTorch side skipped" in report["torch_skipped"]
    assert report["peak"]["jax"]["best_gflops_per_s"] > 0
    assert set(report["machine"]) >= {"cpu_model", "cpus", "jax", "backend", "load_at_end"}
    (row,) = report["sizes"]
    assert row["size"] == "tiny" and "torch" not in row and "speedup_vs_torch" not in row
    ours = row["ours"]
    assert ours["timed_steps"] == 2 and len(ours["ms_per_step_all"]) == 2
    for field in ("ms_per_step_median", "first_call_s", "sampling_ms_median", "achieved_gflops_per_s"):
        assert ours[field] > 0, field
    assert len(ours["load_before"]) == 3 and len(ours["load_after"]) == 3
    # the cost model: the analytic parts add up to the step's count (3 x forward), which is the count of
    # record, and XLA's count is of the same order (it also counts the elementwise work the analytic count
    # leaves out; this tiny batch has one attention chunk, so no loop hides work from it)
    parts = ours["analytic_forward_parts"]
    assert math.isclose(3 * sum(parts.values()), ours["flops_per_step_analytic"], rel_tol=1e-9)
    assert ours["flops_per_step"] == ours["flops_per_step_analytic"]
    assert 0.2 < ours["analytic_over_xla"] < 1.5
    assert math.isclose(
        ours["fraction_of_peak"], ours["achieved_gflops_per_s"] / report["peak"]["used_gflops_per_s"]
    )


def test_analytic_flops_of_the_backbone_by_hand():
    config = train_step.size_config("small", d=8, n=16, tasks_per_k=2)
    spec, model_config = train_step.config_lib.validate_config(config)
    parts = train_step.analytic_step_flops(model_config, spec, 2, readin_inputs=72)["forward_parts"]
    b, n, e, layers = 8, 16, 64, 4
    matmuls = 2 * b * n * (e * 3 * e + e * e + e * 4 * e + 4 * e * e)  # qkv, out, fc, proj
    attention = 2 * 2 * b * n * n * e  # q k^T and p v over all heads
    assert parts["backbone"] == layers * (matmuls + attention)
    assert parts["read_in"] == 2 * b * n * 72 * e


@pytest.mark.slow
def test_evaluate_runs(tmp_path, no_torch):
    out = tmp_path / "evaluate.json"
    evaluate.main(
        [
            "--json",
            str(out),
            "--tasks-per-cell",
            "2",
            "--n",
            "8",
            "--repeats",
            "1",
            "--methods",
            "tgmm,spectral",
        ]
    )
    report = json.loads(out.read_text())
    assert report["settings"]["tasks_per_cell"] == 2 and report["settings"]["ks"] == [2, 3, 4, 5]
    assert list(report["methods"]) == ["tgmm", "spectral"]
    for row in report["methods"].values():
        assert row["first_call_s"] > 0 and row["compile_s_estimate"] >= 0
        assert list(row["cells"]) == ["K=2", "K=3", "K=4", "K=5"]
        for cell in row["cells"].values():
            assert cell["seconds_median"] > 0 and math.isfinite(cell["l2_mean"])


def test_evaluate_refuses_an_unknown_method(tmp_path):
    with pytest.raises(ValueError, match="unknown method.*'emm'"):
        evaluate.main(["--json", str(tmp_path / "e.json"), "--methods", "tgmm,emm"])


@pytest.mark.slow
@pytest.mark.subprocess
def test_speed_vs_bayes_runs_with_other_seedings(tmp_path):
    """The speed benchmark on a shipped checkpoint seeded otherwise (--slot_init): every method timed per N, the
    ratios those times give, and the seeding recorded."""
    out = tmp_path / "speed.json"
    cmd = [
        sys.executable, "-m", "benchmarks.speed_vs_bayes", "--checkpoint=cluster_noise", "--ns=8",
        "--tasks_per_k=1", "--repeats=1", "--slot_init=farthest", f"--json={out}",
    ]  # fmt: skip
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["slot_init"] == "farthest" and report["checkpoint_arg"] == "cluster_noise"
    (row,) = report["rows"]
    per = {m: row[m]["seconds_per_task"] for m in ("tgmm", "em_seeded", "em_kmeanspp", "bayes")}
    assert all(v > 0 for v in per.values())
    assert row["tgmm_over_bayes"] == per["tgmm"] / per["bayes"]


@pytest.mark.slow
def test_estimator_bayes_subset_and_ratios():
    """``--bayes_tasks``: bayes runs on the first M tasks of each K under the tasks' prior (their cosine
    threshold, not BayesConfig's 0.8), and every method's ratio is its mean l2 on those tasks over bayes'."""
    import jax
    import numpy as np

    from baselines import get_baseline
    from benchmarks import estimator
    from tgmm_jax.tasks import TaskSpec, sample_tasks

    spec = TaskSpec(dim=2, ks=(3, 7), n_max=32, n_min=32, variable_n=False, cos_threshold=0.99)
    task = sample_tasks(jax.random.key(0), spec, 3)
    k_B = np.asarray(task.num_components)
    index_B = np.arange(len(k_B), dtype=float)
    per_task = {"index": {"l2": index_B}}  # a method whose l2 is the task's index: names the tasks used
    key = jax.random.key(1)
    out = estimator._bayes_block(task, k_B, per_task, spec, 2, key, estimator.bayes_overrides(sweeps=60))
    assert out["config"]["mean_range"] == spec.mean_range and out["config"]["sweeps"] == 60
    for k in spec.ks:
        cell = out[f"K={k}"]
        first = np.flatnonzero(k_B == k)[:2]
        assert cell["tasks"] == 2 and cell["cos_threshold"] == 0.99
        assert cell["methods"]["index"]["mean"] == index_B[first].mean()
        assert np.isfinite(cell["bayes"]["l2"]["mean"]) and cell["bayes"]["l2"]["mean"] > 0
        ratio = cell["methods"]["index"]["mean"] / cell["bayes"]["l2"]["mean"]
        assert cell["methods"]["index"]["over_bayes"] == pytest.approx(ratio, rel=1e-12)
        assert np.isfinite(cell["methods"]["index"]["over_bayes_sem"])
    # the K = 7 cell (labels aligned by the Hungarian algorithm) is bayes' own answer on those tasks (same key
    # and config: no new compilation)
    sub = jax.tree.map(lambda a: a[np.flatnonzero(k_B == 7)[:2]], task)
    fit = get_baseline("bayes", cos_threshold=0.99, sweeps=60, burn_in=20)
    l2 = estimator._metrics(fit(jax.random.fold_in(key, 7), sub)[0], sub)["l2"]
    assert out["K=7"]["bayes"]["l2"]["mean"] == pytest.approx(float(l2.mean()), rel=1e-6)
    assert out["all"]["tasks"] == 4
    assert "| 2 | 7 | 2 |" in estimator.bayes_markdown([{"d": 2, "ks": [3, 7], "bayes": out}])


def test_estimator_refuses_a_bayes_subset_outside_the_tasks():
    from benchmarks import estimator

    for bad in (-1, 5):
        with pytest.raises(ValueError, match="bayes_tasks must be between 0 .off. and tasks_per_k=4"):
            estimator.run_dim("cluster", 2, 32, 4, 0, bayes_tasks=bad)
