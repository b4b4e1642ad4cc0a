"""Scalars to TensorBoard and to ``metrics.csv``, and atomic file writes.

``metrics.csv`` is in long ("tidy") form, one scalar a row: ``step,metric,member,value``. ``member`` is the population
index, or ``-1`` for a population aggregate. Rows are appended and flushed as they come, so a killed run's log stays
readable; on resume the rows past the checkpoint are dropped so the file ends exactly as an uninterrupted run's would.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import torch

from emphatic_rl.checkpoints import atomic_write_bytes, save_checkpoint

__all__ = ["Logger", "atomic_torch_save", "atomic_write_bytes", "read_metrics"]
CSV_HEADER = ["step", "metric", "member", "value"]
#: populations up to this size get one TensorBoard curve per member; larger ones get mean/min/max.
PER_MEMBER_TENSORBOARD_LIMIT = 8


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``emphatic_rl.checkpoints.save_checkpoint``: atomic, with a stored checksum."""
    save_checkpoint(obj, path)


class Logger:
    """Writes scalars for a population of ``P`` members.

    Args:
        out_dir: run folder; writes ``metrics.csv`` and TensorBoard events under ``tensorboard/``.
        population_size: ``P``.
        resume_step: when resuming, drop CSV rows with ``step > resume_step`` and purge TensorBoard events after it.
        tensorboard: write TensorBoard events (needs the ``tensorboard`` package).
    """

    def __init__(
        self, out_dir: str | Path, population_size: int, resume_step: int | None = None, tensorboard: bool = True
    ) -> None:
        self.out_dir = Path(out_dir)
        self.population_size = population_size
        self.csv_path = self.out_dir / "metrics.csv"
        if resume_step is not None and self.csv_path.exists():
            self._truncate_csv(resume_step)
        new_file = not self.csv_path.exists()
        self._csv_file = self.csv_path.open("a", newline="")
        self._csv = csv.writer(self._csv_file)
        if new_file:
            self._csv.writerow(CSV_HEADER)
            self._csv_file.flush()
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = None if resume_step is None else resume_step + 1
            self._tb = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=purge)

    def _truncate_csv(self, resume_step: int) -> None:
        kept: list[list[str]] = []
        with self.csv_path.open(newline="") as f:
            for row in csv.reader(f):
                if row == CSV_HEADER:
                    kept.append(row)
                    continue
                if len(row) != 4:
                    continue  # a partial last line from a killed run
                try:
                    if int(row[0]) <= resume_step:
                        kept.append(row)
                except ValueError:
                    continue
        text = "".join(",".join(row) + "\r\n" for row in kept)
        atomic_write_bytes(self.csv_path, text.encode())

    def log(self, step: int, metrics: dict[str, torch.Tensor | float]) -> None:
        """Log ``metrics``: each value a tensor ``[P]`` (one per member) or a scalar (a population aggregate)."""
        for name, value in metrics.items():
            values = torch.as_tensor(value).detach().double().cpu().flatten()
            if values.numel() == 1 and self.population_size != 1:
                self._write(step, name, -1, float(values[0]))
                continue
            for member, v in enumerate(values.tolist()):
                self._write(step, name, member, v, tensorboard=self.population_size <= PER_MEMBER_TENSORBOARD_LIMIT)
            if self._tb is not None and self.population_size > PER_MEMBER_TENSORBOARD_LIMIT:
                finite = values[torch.isfinite(values)]
                if finite.numel():
                    self._tb.add_scalar(f"{name}/mean", float(finite.mean()), step)
                    self._tb.add_scalar(f"{name}/min", float(finite.min()), step)
                    self._tb.add_scalar(f"{name}/max", float(finite.max()), step)
        self._csv_file.flush()

    def _write(self, step: int, name: str, member: int, value: float, tensorboard: bool = True) -> None:
        self._csv.writerow([step, name, member, repr(value)])
        if self._tb is not None and tensorboard:
            tag = name if self.population_size == 1 or member < 0 else f"{name}/member_{member}"
            self._tb.add_scalar(tag, value, step)

    def text(self, step: int, tag: str, message: str) -> None:
        if self._tb is not None:
            self._tb.add_text(tag, message, step)

    def close(self) -> None:
        self._csv_file.close()
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()


def read_metrics(path: str | Path) -> list[tuple[int, str, int, float]]:
    """Rows of a ``metrics.csv`` as ``(step, metric, member, value)``."""
    rows = []
    with Path(path).open(newline="") as f:
        reader = csv.reader(f)
        next(reader, None)
        for row in reader:
            if len(row) == 4:
                rows.append((int(row[0]), row[1], int(row[2]), float(row[3])))
    return rows
