"""The study packages: importing one defines no flags (they are defined when it runs as a command), so tests
and make_report can import any of them beside the command-line tools."""

import importlib
import pkgutil

import pytest
from absl import flags

from experiments import studies
from experiments.studies.rq import run as rq_run

# every module of every study (run, report, curves, depth, ...); theory_em and curves take argparse instead
_MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(studies.__path__, prefix=f"{studies.__name__}.")
    if not info.ispkg
)


def test_rq_run_defines_no_flags_at_import():
    assert "part" not in flags.FLAGS and "sigma_p" not in flags.FLAGS
    assert set(rq_run.PARTS) == {"effectiveness", "sample_size", "shift"}
    assert (
        rq_run.PARTS["shift"][0] == rq_run.PARTS["effectiveness"][0]
    )  # the shift part reuses RQ1's d = 8 model


@pytest.mark.parametrize("name", _MODULES)
def test_importing_a_study_module_defines_no_flags(name):
    """A study's flags are defined by its ``define_flags()``, called only under ``__main__``: two commands that
    share flag names (--results, --dims, --steps) can then be imported side by side."""
    importlib.import_module(name)
    assert name not in flags.FLAGS.flags_by_module_dict()
