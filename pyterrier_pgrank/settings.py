"""Training settings shared by every PG-Rank model."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from pyterrier_pgrank.estimators import ESTIMATORS

__all__ = ["TrainingSettings"]

# settings that change the trajectory of a run; resuming with different values warns
TRAJECTORY_FIELDS = ("utility", "estimator", "n_samples", "queries_per_step", "lr", "weight_decay", "warmup",
                     "epochs", "max_steps", "seed", "max_grad_norm", "eval_every", "relevance_level")


@dataclass
class TrainingSettings:
    """How :meth:`PGRankEstimator.fit` trains; every field can also be passed to ``fit`` as a keyword.

    Attributes:
        utility: The metric to maximise (an ``ir_measures`` name such as ``'nDCG@10'``, ``'RR@10'``,
            ``'R@100'``, ``'AP'``); validation uses the same measure.
        estimator: ``'plrank'`` (PL-Rank-3 per-document weights) or ``'reinforce'`` (leave-one-out baseline).
        n_samples: Rankings sampled per query and step.
        queries_per_step: Queries in the global batch of one optimizer update (over all processes).
        lr: Peak learning rate of AdamW.
        weight_decay: AdamW's decoupled weight decay.
        warmup: Linear warm-up length: a fraction of the total steps when below 1, else a number of steps;
            afterwards the rate decays linearly to 0 at the last step.
        epochs: Passes over the training queries (ignored when ``max_steps`` is set).
        max_steps: Total optimizer updates, overriding ``epochs``.
        seed: Seeds the data order and the sampled rankings (derived per epoch and per step).
        precision: ``'auto'`` (bf16 autocast on CUDA, fp32 elsewhere), ``'bf16'`` or ``'fp32'``.
        max_grad_norm: Clip the global gradient norm to this value (``None``: no clipping).
        eval_every: Validate every this many steps (``None``: at the end of each epoch); also before the
            first step and after the last one.
        patience: Stop after this many validations without improvement (``None``: never stop early).
        checkpoint_dir: Where checkpoints, ``history.json`` and ``learning_curve.png`` go (``None``: none).
        checkpoint_every: Checkpoint every this many steps (``None``: whenever validating).
        resume: Continue from the newest checkpoint in ``checkpoint_dir`` when there is one.
        log_every: Log loss and utility (and check they are finite) every this many steps.
        relevance_level: Smallest label that counts as relevant.
        distributed: ``'auto'``, ``'on'`` or ``'off'``: whether to join the process group ``torchrun`` sets up.
        verbose: Show a progress bar; ``None`` follows the model's ``verbose`` attribute.
    """

    utility: Any = "nDCG@10"
    estimator: str = "plrank"
    n_samples: int = 32
    queries_per_step: int = 8
    lr: float = 2e-5
    weight_decay: float = 0.01
    warmup: float = 0.1
    epochs: int = 1
    max_steps: int | None = None
    seed: int = 42
    precision: str = "auto"
    max_grad_norm: float | None = 1.0
    eval_every: int | None = None
    patience: int | None = None
    checkpoint_dir: str | None = None
    checkpoint_every: int | None = None
    resume: bool = False
    log_every: int = 10
    relevance_level: float = 1
    distributed: str = "auto"
    verbose: bool | None = None

    def __post_init__(self) -> None:
        positive = {"n_samples": self.n_samples, "queries_per_step": self.queries_per_step, "epochs": self.epochs,
                    "log_every": self.log_every}
        for name in ("max_steps", "eval_every", "checkpoint_every", "patience"):
            if getattr(self, name) is not None:
                positive[name] = getattr(self, name)
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be 'auto', 'bf16' or 'fp32', got {self.precision!r}")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        if not (self.lr > 0 and self.warmup >= 0 and self.weight_decay >= 0):
            raise ValueError(f"expected lr > 0, warmup >= 0, weight_decay >= 0; got {self.lr}, {self.warmup}, "
                             f"{self.weight_decay}")
        if self.resume and self.checkpoint_dir is None:
            raise ValueError("resume=True needs a checkpoint_dir to resume from")

    def replace(self, **changes: Any) -> TrainingSettings:
        """Returns a copy with some fields changed; unknown names raise ``ValueError`` listing the valid ones."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            valid = ", ".join(f.name for f in dataclasses.fields(self))
            raise ValueError(f"unknown training settings {unknown}; expected some of: {valid}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-able values (a measure object becomes its name)."""
        return {k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v))
                for k, v in dataclasses.asdict(self).items()}

    def total_steps(self, n_queries: int) -> int:
        """Optimizer updates for ``n_queries`` training queries: ``max_steps`` or ``epochs`` full passes."""
        if self.max_steps is not None:
            return self.max_steps
        return self.epochs * self.steps_per_epoch(n_queries)

    def steps_per_epoch(self, n_queries: int) -> int:
        """Updates per pass over the queries; the last batch of a pass may be smaller."""
        return math.ceil(n_queries / self.queries_per_step)

    def lr_at(self, step: int, total: int) -> float:
        """Learning rate of update ``step`` (0-based): linear warm-up, then linear decay to 0."""
        warmup = self.warmup * total if self.warmup < 1 else self.warmup
        if step < warmup:
            return self.lr * (step + 1) / (warmup + 1)
        return self.lr * max(0.0, (total - step) / max(1.0, total - warmup))
