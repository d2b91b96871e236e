"""What a study's report builder returns, and the fixed prose it reads from the Markdown beside it."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re

_BLOCK = re.compile(r"^<!-- (\S+) -->$", re.MULTILINE)
_KEEP_LINE = re.compile(r"^(\||- |\* |#|\d+\. |!\[)")  # lines that Markdown does not join to the one before


@dataclasses.dataclass
class Part:
    """A study's share of REPORT.md.

    ``lead``: lines in the report's opening, before the list of runs (the measuring stick and the headline
    studies); ``sections``: lines after the paper's claims; ``claims``: claim -> its verdict text;
    ``runs``: the (workdir, step) of every trained model the part reports.
    """

    lead: list[str] = dataclasses.field(default_factory=list)
    sections: list[str] = dataclasses.field(default_factory=list)
    claims: dict[str, str] = dataclasses.field(default_factory=dict)
    runs: list[tuple[str, int]] = dataclasses.field(default_factory=list)


def load_json(path: str):
    """The saved JSON at ``path``, or None when the study has not written it."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


@functools.cache
def _blocks(path: str) -> dict[str, str]:
    with open(path) as f:
        text = f.read()
    names = _BLOCK.findall(text)
    bodies = _BLOCK.split(text)[2::2]
    return {name: _unwrap(body) for name, body in zip(names, bodies, strict=True)}


def _unwrap(body: str) -> str:
    """Markdown's soft line breaks joined: each paragraph becomes one line, as the report has always had it;
    table rows, list items, headings and figures keep their own lines."""
    paragraphs = []
    for paragraph in body.strip("\n").split("\n\n"):
        lines = []
        for line in paragraph.splitlines():
            if lines and not _KEEP_LINE.match(line):
                lines[-1] += " " + line.strip()
            else:
                lines.append(line.rstrip())
        paragraphs.append("\n".join(lines))
    return "\n\n".join(paragraphs)


def prose(module_file: str, name: str, **fields) -> str:
    """Block ``name`` of the Markdown file beside ``module_file`` with its stem (``report.py``: ``report.md``),
    its ``{placeholders}`` filled from ``fields`` (every block is a ``str.format`` template: a literal brace is
    written twice)."""
    path = os.path.splitext(os.path.abspath(module_file))[0] + ".md"
    blocks = _blocks(path)
    if name not in blocks:
        raise KeyError(f"no block <!-- {name} --> in {path}")
    return blocks[name].format(**fields)
