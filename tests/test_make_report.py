"""The report: the registry it walks, its baseline-speed verdicts, its run descriptions on a checkout without
runs/, the prose blocks, and the committed REPORT.md regenerating byte for byte."""

import os
from pathlib import Path

import pytest

from experiments import make_report
from experiments.studies import base, registry
from experiments.studies.baseline_speed.report import speed_section
from experiments.studies.rq.report import fmt

_ROOT = Path(__file__).resolve().parents[1]


def _bench(ratio_em, ratio_spectral):
    def row(ratio):
        return {
            "ours_s": 0.1,
            "reference_s": 0.1 * ratio,
            "ratio": ratio,
            "ours_l2_means": 0.5,
            "reference_l2_means": 0.6,
        }

    return {
        "machine": {"cpus": 2, "device": "cpu:0", "jax": "0.0"},
        "settings": {"max_iter": 100, "tol": 1e-5, "repeats": 3},
        "shapes": [
            {"N": 128, "D": 8, "K": 4, "results": {"em": row(ratio_em), "spectral": row(ratio_spectral)}}
        ],
    }


def test_speed_section_marks_each_cell_against_its_target():
    text = "\n".join(speed_section(_bench(99.0, 250.0), "cpu"))
    assert "| N=128 D=8 K=4 | em | 0.100 | 9.90 | 99x | 100x (NOT met) |" in text
    assert "| N=128 D=8 K=4 | spectral | 0.100 | 25.00 | 250x | 200x (met) |" in text
    assert "Targets met in 1 of 2 cells." in text


def test_missing_workdir_keeps_its_previous_description(tmp_path):
    report = tmp_path / "REPORT.md"
    report.write_text("# r\n\n- `runs/a`: d=2, trained on 1x cpu\n- `runs/b`: not found\n")
    previous = make_report._previous_descriptions(str(report))
    assert make_report._run_description(str(tmp_path / "runs/a"), 10, {str(tmp_path / "runs/a"): "x"}) == "x"
    assert make_report._run_description("runs/a", 10, previous) == "`runs/a`: d=2, trained on 1x cpu"
    assert make_report._run_description("runs/b", 10, previous) == "`runs/b`: not found"
    assert make_report._run_description("runs/c", 10, previous) == "`runs/c`: not found"


def test_cells_show_the_median_only_where_saved():
    cell = {"not_applicable": 0.0, "l2": {"mean": 0.5, "sem": 0.01}}  # JSON saved before medians
    assert fmt(cell) == "0.500 ± 0.010"
    cell["l2"]["median"] = 0.25
    assert fmt(cell) == "0.500 ± 0.010 (median 0.250)"


def test_registry_names_are_unique_and_every_report_builder_is_callable():
    names = [study.name for study in registry.STUDIES]
    assert len(names) == len(set(names))
    assert all(study.commands and study.results for study in registry.STUDIES)
    assert all(callable(study.report) for study in registry.STUDIES if study.report is not None)
    assert registry.get("rq").name == "rq"
    with pytest.raises(KeyError, match="no study 'nope'"):
        registry.get("nope")


def test_prose_joins_soft_line_breaks_but_keeps_tables_and_headings(tmp_path):
    (tmp_path / "report.md").write_text(
        "# title, not a block\n\n<!-- a -->\n## Head\n![fig]({figure})\n\none\ntwo {n}\n\n"
        "| x |\n|---|\n- item\n  continued\n\n<!-- b -->\n{{literal}}\n"
    )
    module = str(tmp_path / "report.py")
    assert base.prose(module, "a", figure="f.png", n=3) == (
        "## Head\n![fig](f.png)\n\none two 3\n\n| x |\n|---|\n- item continued"
    )
    assert base.prose(module, "b") == "{literal}"
    with pytest.raises(KeyError, match="no block <!-- c -->"):
        base.prose(module, "c")


@pytest.mark.slow
def test_committed_report_regenerates_byte_for_byte(monkeypatch):
    """Without runs/ the run list comes from the committed report itself, so this holds on a fresh clone."""
    monkeypatch.chdir(_ROOT)  # as python -m experiments.make_report runs: --results=results
    with open(os.path.join("results", "REPORT.md")) as f:
        committed = f.read()
    assert make_report.build_report("results", "cpu") == committed


def test_benchmark_paths_render_the_same_from_any_checkout():
    """A benchmark JSON records its checkpoint's absolute path; the report shows it relative to the
    repository, and another checkout's runs/ as runs/..., so the committed REPORT regenerates anywhere."""
    from experiments.studies.hard_regime.report import _repo_relative

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert _repo_relative(os.path.join(root, "runs", "noise_cond3")) == os.path.join("runs", "noise_cond3")
    assert _repo_relative("/elsewhere/clone/runs/noise_cond3") == os.path.join("runs", "noise_cond3")
    assert _repo_relative("runs/noise_cond4") == "runs/noise_cond4"
    assert _repo_relative("/opt/models/cluster") == "/opt/models/cluster"
