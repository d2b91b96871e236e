"""The console scripts of pyproject.toml: each names a callable of experiments.cli that runs its tool as
``python -m experiments.<module>`` does."""

import subprocess
import sys
import tomllib
from importlib import import_module
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[1]
_TOOLS = {
    "tgmm-train": "experiments.train",
    "tgmm-evaluate": "experiments.evaluate",
    "tgmm-fit": "experiments.fit",
    "tgmm-export": "experiments.export_pretrained",
}


def _scripts():
    with open(_ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["scripts"]


def test_every_tool_has_a_console_script_naming_a_function():
    scripts = _scripts()
    assert set(_TOOLS) <= set(scripts)
    for target in scripts.values():
        module, name = target.split(":")
        assert callable(getattr(import_module(module), name)), target


@pytest.mark.subprocess
def test_console_script_answers_as_python_dash_m():
    """A bad flag gets the same one-line error and exit code both ways."""
    module, name = _scripts()["tgmm-fit"].split(":")
    script = f"import sys; sys.argv = ['tgmm-fit', '--bogus=1']; from {module} import {name}; {name}()"
    run = dict(capture_output=True, text=True, cwd=_ROOT)
    ours = subprocess.run([sys.executable, "-c", script], check=False, **run)
    reference = subprocess.run([sys.executable, "-m", _TOOLS["tgmm-fit"], "--bogus=1"], check=False, **run)
    assert ours.returncode == reference.returncode == 2
    assert ours.stderr == reference.stderr
