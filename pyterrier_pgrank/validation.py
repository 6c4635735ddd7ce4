"""Validation during training: the target metric of the model's rankings of held-out candidate sets.

The metric is computed by ``ir_measures`` (as ``pt.Experiment`` does) on the scores the model's
``_pgrank_scores`` hook gives the validation candidates, so the number that selects the best weights is
the number a user would later report for re-ranking these candidates.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd
import torch

from pyterrier_pgrank.data import CandidateSet, collate

logger = logging.getLogger(__name__)

__all__ = ["Validator"]


class Validator:
    """Scores validation candidate sets with a model and evaluates the ranking with ``ir_measures``.

    Args:
        model: A model with the ``_pgrank_scores`` hook.
        sets: The validation candidate sets.
        qrels: Qrels frame with ``qid, docno, label`` (only the queries in ``sets`` are used).
        utility: The training utility; validation uses the ``ir_measures`` measure of the same name.
        autocast: A callable returning the context manager to score under (e.g. bf16 autocast).
        queries_per_batch: How many queries to score per call of the hook.
    """

    def __init__(self, model: Any, sets: Sequence[CandidateSet], qrels: pd.DataFrame, utility: Any,
                 autocast: Callable[[], Any], *, queries_per_batch: int = 32):
        import ir_measures

        from pyterrier_pgrank.utilities import parse_utility

        self.name = parse_utility(utility).name
        try:
            self.measure = ir_measures.parse_measure(self.name)
        except Exception as error:  # ir_measures raises several types for names it lacks
            raise ValueError(f"cannot validate with {self.name!r}: ir_measures has no such measure") from error
        self.model = model
        self.sets = list(sets)
        self.autocast = autocast
        self.queries_per_batch = queries_per_batch
        qids = {s.qid for s in self.sets}
        qrels = qrels[qrels["qid"].astype(str).isin(qids)]
        self.qrels = pd.DataFrame({
            "query_id": qrels["qid"].astype(str), "doc_id": qrels["docno"].astype(str),
            "relevance": qrels["label"].astype(int),
        })

    @torch.no_grad()
    def scores(self) -> pd.DataFrame:
        """Scores every validation candidate; returns a run frame ``query_id, doc_id, score``."""
        frames = []
        for start in range(0, len(self.sets), self.queries_per_batch):
            batch = collate(self.sets[start: start + self.queries_per_batch])
            device = next(self.model._pgrank_module().parameters()).device
            with self.autocast():
                scores = self.model._pgrank_scores(batch.to(device)).float().cpu()  # [Q, N]
            for row, (qid, docnos) in enumerate(zip(batch.qids, batch.docnos)):
                frames.append(pd.DataFrame({"query_id": qid, "doc_id": docnos,
                                            "score": scores[row, : len(docnos)].numpy()}))
        return pd.concat(frames, ignore_index=True)

    def evaluate(self) -> float:
        """The mean of the measure over the validation queries."""
        import ir_measures

        run = self.scores()
        if run["score"].isna().any():
            raise FloatingPointError(f"the model gave NaN scores to {int(run['score'].isna().sum())} validation "
                                     "candidates")
        return float(ir_measures.calc_aggregate([self.measure], self.qrels, run)[self.measure])
