"""The study packages: importing one defines no flags (they are defined when it runs as a command), so tests
and make_report can import any of them beside the command-line tools."""

from absl import flags

from experiments.studies.rq import run as rq_run


def test_rq_run_defines_no_flags_at_import():
    assert "part" not in flags.FLAGS and "sigma_p" not in flags.FLAGS
    assert set(rq_run.PARTS) == {"effectiveness", "sample_size", "shift"}
    assert (
        rq_run.PARTS["shift"][0] == rq_run.PARTS["effectiveness"][0]
    )  # the shift part reuses RQ1's d = 8 model
