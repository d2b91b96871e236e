"""The architecture study end to end on a minimal setting (2 variants x 5 steps, 4 tasks per K), and its report."""

import json
import os
import subprocess
import sys

import pytest

from experiments.studies import registry
from experiments.studies.architecture.report import architecture_section

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("arch")
    cmd = [
        sys.executable,
        "-m",
        "experiments.studies.architecture.run",
        "--variants=set-2x64,aniso-set-2x64",
        "--dim=2",
        "--n=16",
        "--steps=5",
        "--tasks_per_k=2",
        "--tasks_per_cell=4",
        "--baselines=em",
        f"--root={tmp / 'runs'}",
        f"--results={tmp / 'results'}",
    ]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    with open(tmp / "results" / "architecture_study.json") as f:
        return tmp, json.load(f)


@pytest.mark.subprocess
@pytest.mark.slow
def test_json_fields_and_figure(study):
    tmp, payload = study
    assert payload["budget"] == dict(
        dim=2, n=16, steps=5, tasks_per_k=2, tasks_per_cell=4, eval_seed=20261215, n_eval=16
    )
    (iso,), (aniso,) = payload["isotropic"]["variants"], payload["anisotropic"]["variants"]
    assert (iso["name"], aniso["name"]) == ("set-2x64", "aniso-set-2x64")
    for v in (iso, aniso):
        assert v["step"] == 5 and v["num_params"] > 0 and v["model"]["backbone"] == "set"
        assert sorted(c["K"] for c in v["cells"]) == [2, 3, 4, 5]
        assert all(c["method"] == "tgmm" and c["num_tasks"] == 4 for c in v["cells"])
    assert "l2_scales" in aniso["cells"][0] and "l2_scales" not in iso["cells"][0]
    assert set(payload["isotropic"]["baselines"]) == set(payload["anisotropic"]["baselines"]) == {"em"}
    assert "l2_scales" in payload["anisotropic"]["baselines"]["em"][0]
    assert payload["variants_defined"]["mamba2-2x64"] == ["isotropic", "backbone: mamba2 (8 heads, state 16)"]
    assert os.path.getsize(tmp / "results" / "architecture_study.png") > 1000


@pytest.mark.subprocess
@pytest.mark.slow
def test_report_section_reads_the_json(study):
    _, payload = study
    lines, claims = architecture_section(payload, "architecture_study.png")
    text = "\n".join(lines)
    assert (
        "planned budget 5 training steps" in text
        and "x 2 tasks per K" in text
        and "| set-2x64 | reference (tiny recipe) |" in text
    )
    assert "spectral: not applicable" in text and "**Defined but not run**" in text and "`gpt2-2x64`" in text
    assert any(title.startswith("RQ3: on anisotropic mixtures") for title in claims)
    assert registry.get("architecture").report is not None  # the report includes the section


def _fake_run(path, backbone, losses, total=400):
    path.mkdir(parents=True)
    model = dict(backbone=backbone, readout="attentive", readin="raw", num_layers=2, width=64)
    config = dict(
        total_steps=total,
        objective="est_matched",
        resp_weight=0.0,
        task=dict(variant="isotropic"),
        model=model,
    )
    (path / "config.json").write_text(json.dumps(config))
    rows = [dict(step=50 * (i + 1), steps_per_sec=10.0, train=dict(loss=x)) for i, x in enumerate(losses)]
    (path / "metrics.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")


def test_curves_read_the_logs_and_compare_at_equal_steps(tmp_path):
    from experiments.studies.architecture import curves as architecture_curves
    from experiments.studies.architecture.report import curves_section

    set_losses = [6.0] * 8 + [3.0, 3.1, 2.9, 3.0] * 10
    _fake_run(tmp_path / "set-2x64", "set", set_losses, total=2000)
    _fake_run(tmp_path / "gpt2-2x64", "gpt2", [6.0] * 8 + [4.0, 4.1, 3.9, 4.0] * 10, total=2000)
    payload = architecture_curves.collect(str(tmp_path))
    assert (
        sorted(payload["runs"]) == ["gpt2-2x64", "set-2x64"] and payload["runs"]["set-2x64"]["step"] == 2400
    )
    stat = architecture_curves.window_stat(payload["runs"]["set-2x64"]["loss_curve"], 2000, 500)
    assert (
        stat["windows"] == 10 and abs(stat["mean"] - sum(set_losses[30:40]) / 10) < 1e-9
    )  # steps 1550..2000
    lines, claims = curves_section(payload, "c.png")
    text = claims[
        "Ablation (our hypothesis): the set backbone beats the causal gpt2 backbone (training loss)"
    ]
    assert "set against gpt2: **lower**; the hypothesis holds" in text
    assert "| set-2x64 | set | attentive | 2 x 64 | 2400 |" in "\n".join(lines)
