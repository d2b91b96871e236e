"""One direction of dependency: every tgmm_jax module imports with baselines, experiments and benchmarks blocked."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_IMPORT_ALL = r"""
import importlib, pkgutil, sys
for blocked in ("baselines", "experiments", "benchmarks"):
    sys.modules[blocked] = None  # any import of it, lazy ones included, raises ImportError
import tgmm_jax
names = [m.name for m in pkgutil.walk_packages(tgmm_jax.__path__, "tgmm_jax.")]
for name in names:
    importlib.import_module(name)
print(len(names))
"""


@pytest.mark.subprocess
def test_library_imports_nothing_from_baselines_experiments_benchmarks():
    cmd = [sys.executable, "-c", _IMPORT_ALL]
    out = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert int(out.stdout.split()[-1]) >= 10  # the walk found the package's modules
