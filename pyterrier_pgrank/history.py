"""The record of a training run: training losses, sampled utilities, validation scores, and their plot."""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["TrainingHistory"]


@dataclass
class TrainingHistory:
    """What happened during :meth:`Trainer.fit`, as plain JSON-able values.

    Attributes:
        measure: Name of the utility, which validation measures too (e.g. ``'nDCG@10'``).
        train: One record per log line: ``step``, ``epoch``, ``lr``, ``loss`` (mean since the previous
            line) and ``utility`` (mean utility of the sampled rankings since the previous line).
        valid: One record per validation: ``step`` and ``score`` (on the process of rank 0 only).
        best_step: Step whose weights were kept (``None`` without validation: the last step).
        best_score: Validation score at ``best_step``.
        stopped_early: Whether training stopped because validation stopped improving.
    """

    measure: str | None = None
    train: list[dict[str, float]] = field(default_factory=list)
    valid: list[dict[str, float]] = field(default_factory=list)
    best_step: int | None = None
    best_score: float | None = None
    stopped_early: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Returns the history as a dictionary of plain values."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingHistory:
        """Rebuilds a history from :meth:`to_dict`'s output."""
        return cls(**data)

    def save(self, directory: str | os.PathLike, *, plot: bool = True) -> None:
        """Writes ``history.json`` and, when matplotlib is installed, ``learning_curve.png`` to ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / "history.json.tmp"
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        os.replace(tmp, directory / "history.json")
        if plot:
            self.plot(directory / "learning_curve.png")

    def plot(self, path: str | os.PathLike) -> bool:
        """Draws the learning curve (training loss and utility, validation score) into an image file.

        Returns:
            Whether the plot was written (``False`` when matplotlib is missing or nothing was logged).
        """
        try:
            import matplotlib

            matplotlib.use("Agg", force=False)
            import matplotlib.pyplot as plt
        except ImportError:
            logger.info("matplotlib is not installed (pip install matplotlib); skipping the learning-curve plot")
            return False
        if not self.train and not self.valid:
            return False
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
        steps = [r["step"] for r in self.train]
        left.plot(steps, [r["loss"] for r in self.train], label="loss")
        left.set_xlabel("step")
        left.set_title("training loss")
        right.plot(steps, [r["utility"] for r in self.train], label="sampled utility (train)")
        if self.valid:
            right.plot([r["step"] for r in self.valid], [r["score"] for r in self.valid], marker="o",
                       label=f"{self.measure} (validation)")
        right.set_xlabel("step")
        right.set_title(self.measure or "utility")
        right.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return True
