"""Training logs: ``metrics.jsonl`` (one JSON line per log step), optional TensorBoard, a progress line."""

from __future__ import annotations

import json
import math
import sys

from etils import epath


class MetricWriter:
    """Writes on process 0 only. ``truncate_after(step)`` drops lines a killed run wrote past its checkpoint.

    The file is rewritten whole at each write (object stores such as GCS cannot append; it stays small), into a
    temporary file renamed over it: a run killed mid-write leaves the previous lines, never a truncated file
    (which a resume would read as the whole history).
    """

    def __init__(self, workdir: str, *, enabled: bool = True, tensorboard: bool = True, stream=None):
        self.enabled = enabled
        self.path = epath.Path(workdir) / "metrics.jsonl"
        self._lines: list[str] = (
            self.path.read_text().splitlines(keepends=True) if enabled and self.path.exists() else []
        )
        self.stream = stream or sys.stdout
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._tb = None
        if enabled and tensorboard:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:  # optional dependency
                SummaryWriter = None
            if SummaryWriter is not None:
                self._tb = SummaryWriter(str(epath.Path(workdir) / "tensorboard"))

    def truncate_after(self, step: int) -> None:
        if not self.enabled:
            return
        self._lines = [line for line in self._lines if line.strip() and json.loads(line)["step"] <= step]
        self._save()

    def write(self, step: int, record: dict) -> None:
        if not self.enabled:
            return
        self._lines.append(json.dumps({"step": step, **record}, sort_keys=True) + "\n")
        self._save()
        if self._tb is not None:
            for name, value in _flatten(record).items():
                # NaN marks "not applicable" (e.g. spectral at K > d): kept in metrics.jsonl, not plotted
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(name, value, step)
            self._tb.flush()

    def _save(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(self._lines))
        tmp.replace(self.path)

    def progress(self, step: int, total: int, loss: float, steps_per_sec: float) -> None:
        if not self.enabled:
            return
        width = 30
        done = int(width * step / total)
        text = f"step {step}/{total} loss {loss:.4f} {steps_per_sec:.1f} steps/s"
        if self.tty:
            self.stream.write(f"\r[{'#' * done}{'.' * (width - done)}] {text}")
            if step >= total:
                self.stream.write("\n")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        if self.enabled:
            self.stream.write(("\n" if self.tty else "") + text + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _flatten(record: dict, prefix: str = "") -> dict:
    out = {}
    for name, value in record.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict):
            out.update(_flatten(value, key + "/"))
        else:
            out[key] = value
    return out
