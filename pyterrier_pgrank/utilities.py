"""IR metrics computed on batches of sampled rankings, named as in ``pt.Experiment``.

Shape legend: ``Q`` queries, ``N`` candidates per query (padded), ``S`` rankings per query, ``K`` places in
each ranking.

:func:`parse_utility` turns ``"nDCG@10"``, ``"RR(rel=2)@10"`` or a ``pyterrier.measures`` / ``ir_measures``
object into a :class:`Utility`, whose :meth:`Utility.evaluate` scores every ranking of a batch at once. The
definitions follow ``ir_measures`` (and so ``pt.Experiment``): linear gains for (n)DCG unless
``dcg='exp-log2'`` asks for :math:`2^{label} - 1`, a relevance threshold ``rel`` (default 1) for the binary
metrics, P@k divided by ``k`` whatever the number of candidates, and AP@k, R@k divided by the number of
relevant documents.
"""
from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any

import torch

from pyterrier_pgrank.sampling import ranking_mask

logger = logging.getLogger(__name__)

__all__ = ["Utility", "parse_utility", "SUPPORTED"]

#: Metric names understood by :func:`parse_utility`.
SUPPORTED = ("nDCG", "DCG", "P", "R", "RR", "AP")
#: Metrics that are a sum of per-place weights times per-document gains (see :attr:`Utility.additive`).
ADDITIVE = ("nDCG", "DCG", "P", "R")


@dataclasses.dataclass(frozen=True)
class Utility:
    """An IR metric evaluated on sampled rankings.

    Attributes:
        measure: one of ``nDCG``, ``DCG``, ``P``, ``R``, ``RR``, ``AP``.
        cutoff: the rank cutoff ``k``, or ``None`` for the whole ranking.
        rel: minimum label counted as relevant by ``P``, ``R``, ``RR`` and ``AP``.
        dcg: ``'log2'`` (gain = label) or ``'exp-log2'`` (gain = 2^label - 1), for ``nDCG`` and ``DCG``.

    .. note::
        When a per-query count of relevant documents ``n_relevant`` is given, relevant documents missing from
        the candidates are assumed to have label 1 in nDCG's ideal ranking (exact for binary labels).
    """

    measure: str
    cutoff: int | None = None
    rel: int = 1
    dcg: str = "log2"

    def __post_init__(self) -> None:
        if self.measure not in SUPPORTED:
            raise ValueError(f"measure must be one of {SUPPORTED}; got {self.measure!r}.")
        if self.cutoff is not None and self.cutoff < 1:
            raise ValueError(f"cutoff must be a positive integer or None; got {self.cutoff}.")
        if self.measure in ("P", "R") and self.cutoff is None:
            raise ValueError(f"{self.measure} needs a cutoff, as in ir_measures (e.g. '{self.measure}@10').")
        if self.dcg not in ("log2", "exp-log2"):
            raise ValueError(f"dcg must be 'log2' or 'exp-log2'; got {self.dcg!r}.")

    @property
    def name(self) -> str:
        """The name as ``ir_measures`` writes it, e.g. ``nDCG@10`` or ``RR(rel=2)@10``."""
        params = []
        if self.measure in ("nDCG", "DCG") and self.dcg != "log2":
            params.append(f"dcg='{self.dcg}'")
        if self.measure not in ("nDCG", "DCG") and self.rel != 1:
            params.append(f"rel={self.rel}")
        text = self.measure + (f"({','.join(params)})" if params else "")
        return text + (f"@{self.cutoff}" if self.cutoff is not None else "")

    @property
    def additive(self) -> bool:
        """True when the metric is a sum over places of ``rank_weights[k] * doc_gains[doc at k]``."""
        return self.measure in ADDITIVE

    def depth(self, n_candidates: int) -> int:
        """``K``: how many places of a ranking of ``n_candidates`` the metric reads."""
        return n_candidates if self.cutoff is None else min(self.cutoff, n_candidates)

    def rank_weights(
        self, depth: int, *, dtype: torch.dtype = torch.float32, device: Any = None
    ) -> torch.Tensor:
        """Per-place weights of an additive metric.

        Args:
            depth: ``K``, the number of places.

        Returns:
            ``[K]``: ``1 / log2(k + 1)`` for (n)DCG, ``1 / cutoff`` for P, ones for R (``k`` counted from 1).
        """
        places = torch.arange(1, depth + 1, dtype=dtype, device=device)  # [K]
        if self.measure in ("nDCG", "DCG"):
            return 1.0 / torch.log2(places + 1.0)
        if self.measure == "P":
            return torch.full_like(places, 1.0 / self.cutoff)
        if self.measure == "R":
            return torch.ones_like(places)
        raise ValueError(f"{self.name} is not a sum of per-place gains, so it has no rank weights.")

    def doc_gains(
        self, labels: torch.Tensor, mask: torch.Tensor | None = None, n_relevant: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per-document gains of an additive metric, normalised per query (zero for padding).

        Args:
            labels: ``[Q, N]`` relevance grades.
            mask: ``[Q, N]`` bool, true for real candidates.
            n_relevant: ``[Q]`` count of all relevant documents of each query, candidates or not; by default
                the relevant candidates.

        Returns:
            ``[Q, N]`` gains: label (or 2^label - 1) over the ideal DCG@k for nDCG, the relevance indicator
            for P, and the indicator over the number of relevant documents for R.
        """
        if not self.additive:
            raise ValueError(f"{self.name} is not a sum of per-place gains, so it has no document gains.")
        labels = labels if mask is None else labels.masked_fill(~mask, 0)
        if self.measure in ("nDCG", "DCG"):
            gains = self._graded_gains(labels)
            if self.measure == "DCG":
                return gains
            return gains / self._ideal_dcg(gains, n_relevant).unsqueeze(-1)
        relevant = (labels >= self.rel).to(labels.dtype)
        if self.measure == "P":
            return relevant
        return relevant / self._n_relevant(relevant, n_relevant).unsqueeze(-1)

    def evaluate(
        self,
        rankings: torch.Tensor,
        labels: torch.Tensor,
        mask: torch.Tensor | None = None,
        n_relevant: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The metric of every ranking.

        Args:
            rankings: ``[Q, S, K']`` candidate indices, best first; places after ``K`` are ignored.
            labels: ``[Q, N]`` relevance grades.
            mask: ``[Q, N]`` bool, true for real candidates; empty places and padding count for nothing.
            n_relevant: ``[Q]`` count of all relevant documents of each query (see :meth:`doc_gains`).

        Returns:
            ``[Q, S]`` metric values.
        """
        rankings = rankings[..., : self.depth(labels.shape[-1])]  # [Q, S, K]
        filled = ranking_mask(rankings, mask)  # [Q, S, K]
        labels = labels.to(torch.promote_types(labels.dtype, torch.float32))
        n_samples = rankings.shape[1]
        if self.additive:
            gains = self.doc_gains(labels, mask, n_relevant).unsqueeze(1).expand(-1, n_samples, -1)
            weights = self.rank_weights(rankings.shape[-1], dtype=labels.dtype, device=labels.device)
            return (gains.gather(-1, rankings) * filled * weights).sum(dim=-1)  # [Q, S]

        # Reciprocal rank and average precision read the relevance of each place.
        placed = labels.unsqueeze(1).expand(-1, n_samples, -1).gather(-1, rankings)  # [Q, S, K]
        relevant = ((placed >= self.rel) & filled).to(labels.dtype)  # [Q, S, K]
        places = torch.arange(1, rankings.shape[-1] + 1, dtype=labels.dtype, device=labels.device)  # [K]
        if self.measure == "RR":
            return (relevant / places).amax(dim=-1)  # [Q, S]
        candidates_relevant = (labels >= self.rel).to(labels.dtype)
        if mask is not None:
            candidates_relevant = candidates_relevant * mask
        precisions = relevant.cumsum(dim=-1) / places  # [Q, S, K]
        total = self._n_relevant(candidates_relevant, n_relevant).unsqueeze(-1)  # [Q, 1]
        return (precisions * relevant).sum(dim=-1) / total  # [Q, S]

    def _graded_gains(self, labels: torch.Tensor) -> torch.Tensor:
        labels = labels.clamp(min=0)
        return torch.exp2(labels) - 1.0 if self.dcg == "exp-log2" else labels

    def _n_relevant(self, relevant: torch.Tensor, n_relevant: torch.Tensor | None) -> torch.Tensor:
        """``[Q]`` relevant-document counts, never below the relevant candidates and never zero."""
        count = relevant.sum(dim=-1)
        if n_relevant is not None:
            count = torch.maximum(count, n_relevant.to(count))
        return count.clamp(min=1.0)

    def _ideal_dcg(self, gains: torch.Tensor, n_relevant: torch.Tensor | None) -> torch.Tensor:
        """``[Q]`` DCG@k of the best ordering of the candidates (plus missing relevant ones); never zero."""
        if n_relevant is not None:
            # Relevant documents the candidates miss join the ideal ranking with the gain of label 1.
            missing = (n_relevant.to(gains) - (gains > 0).sum(dim=-1)).clamp(min=0)  # [Q]
            n_slots = self.cutoff
            if n_slots is None:  # every missing document joins; the one sync point, for uncut nDCG only
                n_slots = int(missing.max().item()) if missing.numel() else 0
            slots = torch.arange(n_slots, dtype=gains.dtype, device=gains.device)  # [K]
            label_one = self._graded_gains(torch.ones((), dtype=gains.dtype, device=gains.device))
            extra = (slots < missing.unsqueeze(-1)).to(gains.dtype) * label_one  # [Q, K]
            gains = torch.cat([gains, extra], dim=-1)
        n_top = gains.shape[-1] if self.cutoff is None else min(self.cutoff, gains.shape[-1])
        top = gains.topk(n_top, dim=-1).values  # [Q, K]
        places = torch.arange(1, top.shape[-1] + 1, dtype=gains.dtype, device=gains.device)  # [K]
        discounts = 1.0 / torch.log2(places + 1.0)
        ideal = (top * discounts).sum(dim=-1)
        return torch.where(ideal > 0, ideal, torch.ones_like(ideal))


_DCG = re.compile(r"^\s*DCG\b")


def parse_utility(utility: str | Any | Utility) -> Utility:
    """Reads a metric name or measure object into a :class:`Utility`.

    Args:
        utility: ``"nDCG@10"``, ``"RR(rel=2)@10"``, ``"DCG@5"``, ``"AP"``, a ``pyterrier.measures`` /
            ``ir_measures`` measure such as ``nDCG@10``, or a :class:`Utility`.

    Returns:
        The :class:`Utility`.

    Raises:
        ValueError: for metrics other than nDCG, DCG, P, R, RR and AP, or unsupported parameters.
    """
    if isinstance(utility, Utility):
        return utility
    import ir_measures

    unnormalised = False
    if isinstance(utility, str):
        # ir_measures has no plain DCG: parse it as nDCG and drop the normalisation.
        unnormalised = bool(_DCG.match(utility))
        text = _DCG.sub("nDCG", utility) if unnormalised else utility
        try:
            measure = ir_measures.parse_measure(text)
        except Exception as error:  # ir_measures raises several types for a bad name
            message = f"Cannot read utility {utility!r}; expected a name such as 'nDCG@10'."
            raise ValueError(message) from error
    elif hasattr(utility, "NAME") and hasattr(utility, "params"):
        measure = utility
    else:
        raise ValueError(f"utility must be a name or an ir_measures measure; got {type(utility).__name__}.")

    name = "DCG" if unnormalised else measure.NAME
    if name not in SUPPORTED:
        raise ValueError(f"utility must be one of {SUPPORTED}; got {name!r} (from {utility!r}).")
    params = dict(measure.params)
    if params.pop("judged_only", False):
        raise ValueError(f"judged_only=True is not supported (in {utility!r}).")
    if params.pop("gains", None) is not None:
        raise ValueError(f"custom gains are not supported (in {utility!r}); map the labels instead.")
    return Utility(
        measure=name, cutoff=params.get("cutoff"), rel=params.get("rel", 1), dcg=params.get("dcg", "log2")
    )
