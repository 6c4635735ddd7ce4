"""Policy-gradient (Neural PG-Rank) training of neural rankers for PyTerrier.

The math core (:func:`pg_loss` and its building blocks) is pure torch and imports eagerly; the PyTerrier
transformers are loaded on first use, so ``import pyterrier_pgrank`` stays cheap.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it; resolved lazily by __getattr__ below.
_LAZY = {
    "pg_loss": "pyterrier_pgrank.estimators",
    "reinforce_loss": "pyterrier_pgrank.estimators",
    "plrank_doc_weights": "pyterrier_pgrank.estimators",
    "sample_rankings": "pyterrier_pgrank.sampling",
    "sort_rankings": "pyterrier_pgrank.sampling",
    "log_probs": "pyterrier_pgrank.sampling",
    "parse_utility": "pyterrier_pgrank.utilities",
    "Utility": "pyterrier_pgrank.utilities",
    "TrainingSettings": "pyterrier_pgrank.settings",
    "PGRankEstimator": "pyterrier_pgrank.training",
    "PGRankBiEncoder": "pyterrier_pgrank.biencoder",
    "PGRankCrossEncoder": "pyterrier_pgrank.crossencoder",
    "fit_pointwise": "pyterrier_pgrank.pointwise",
    "pointwise_bce_loss": "pyterrier_pgrank.pointwise",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'pyterrier_pgrank' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
