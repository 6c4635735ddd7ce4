"""From PyTerrier result frames and qrels to per-query candidate sets and padded tensor batches.

A *candidate set* is one query with the documents a first stage retrieved for it and their relevance
labels; a :class:`CandidateBatch` stacks several of them, padded to the longest, for the trainer and the
models' ``_pgrank_*`` hooks.

Shapes: ``Q`` queries in a batch, ``N`` candidates per query (after padding).

Input checks, and what each one does:

- a missing ``qid``/``query``/``docno`` (or ``text`` where the model reads text) column: ``ValueError``;
  a frame with topics but no ``docno`` gets a hint to put the model behind a first stage.
- non-string ``qid``/``docno`` (in the frame or in the qrels): converted with ``str`` and a warning,
  since ``'1'`` and ``1`` would otherwise never match.
- the same ``docno`` twice for one query: ``ValueError`` (which copy's label or score counts is ambiguous).
- rows without a ``docno``: dropped, with a warning giving the count.
- missing ``text``: replaced by ``''``, with a warning giving the count.
- ``NaN`` in ``score``: a warning (the trainer does not read first-stage scores, but NaN points to a
  broken stage); ``NaN`` in the qrels' ``label``: ``ValueError``.
- qrels that match no candidate at all: ``ValueError`` showing ids from both sides.
- queries that have no relevant candidate: dropped from training with a warning giving the count (every
  ranking of them has the same utility, so they give no gradient); kept for validation, where they
  count as zeros as they would in ``pt.Experiment``.
- queries in the qrels without any candidate: left out, with a logged warning giving the count.
- judged-relevant documents the first stage missed are still counted in ``n_relevant``.
- an empty result after all this: ``ValueError``.
"""
from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch

logger = logging.getLogger(__name__)

__all__ = ["CandidateSet", "CandidateBatch", "build_candidate_sets", "collate"]


@dataclass
class CandidateSet:
    """One query and its candidate documents.

    Attributes:
        qid: The query id.
        query: The query text.
        docnos: The candidates' ids, ``N`` of them, in the order of the input frame.
        texts: The candidates' texts, or ``None`` when the frame had no ``text`` column.
        labels: Relevance grades of the candidates, ``[N]`` float32 (unjudged = 0, negative grades = 0).
        n_relevant: How many documents the qrels judge relevant for this query, including those
            that are not among the candidates.
    """

    qid: str
    query: str
    docnos: list[str]
    texts: list[str] | None
    labels: torch.Tensor
    n_relevant: float

    def __len__(self) -> int:
        return len(self.docnos)


@dataclass
class CandidateBatch:
    """Candidate sets padded to a common length.

    Attributes:
        qids: ``Q`` query ids.
        queries: ``Q`` query texts.
        docnos: ``Q`` lists of candidate ids (unpadded: list ``i`` has ``mask[i].sum()`` entries).
        texts: ``Q`` lists of candidate texts (unpadded), or ``None``.
        labels: ``[Q, N]`` float32 relevance grades, 0 on padding.
        mask: ``[Q, N]`` bool, true for real candidates; real candidates come first in each row.
        n_relevant: ``[Q]`` float32 count of all judged-relevant documents per query.
    """

    qids: list[str]
    queries: list[str]
    docnos: list[list[str]]
    texts: list[list[str]] | None
    labels: torch.Tensor
    mask: torch.Tensor
    n_relevant: torch.Tensor

    def __len__(self) -> int:
        return len(self.qids)

    def to(self, device: torch.device | str) -> CandidateBatch:
        """Returns a copy whose tensors live on ``device`` (the lists are shared)."""
        return CandidateBatch(
            self.qids, self.queries, self.docnos, self.texts, self.labels.to(device, non_blocking=True),
            self.mask.to(device, non_blocking=True), self.n_relevant.to(device, non_blocking=True),
        )

    def select(self, rows: Sequence[int]) -> CandidateBatch:
        """Returns the batch of the given rows, with padding trimmed to the longest of them."""
        rows = list(rows)
        width = max((len(self.docnos[i]) for i in rows), default=0)
        index = torch.tensor(rows, dtype=torch.long, device=self.labels.device)
        return CandidateBatch(
            qids=[self.qids[i] for i in rows],
            queries=[self.queries[i] for i in rows],
            docnos=[self.docnos[i] for i in rows],
            texts=None if self.texts is None else [self.texts[i] for i in rows],
            labels=self.labels[index, :width],
            mask=self.mask[index, :width],
            n_relevant=self.n_relevant[index],
        )


def collate(sets: Sequence[CandidateSet], *, width: int | None = None) -> CandidateBatch:
    """Stacks candidate sets into a padded batch.

    Args:
        sets: ``Q`` candidate sets.
        width: Pad to this many columns instead of the longest set (must be at least that long).

    Returns:
        A :class:`CandidateBatch` with ``[Q, N]`` labels and mask, ``N = width or max(len(s))``.
    """
    longest = max((len(s) for s in sets), default=0)
    width = longest if width is None else width
    if width < longest:
        raise ValueError(f"width must be at least the longest candidate set ({longest}), got {width}")
    labels = torch.zeros(len(sets), width, dtype=torch.float32)  # [Q, N]
    mask = torch.zeros(len(sets), width, dtype=torch.bool)  # [Q, N]
    for i, s in enumerate(sets):
        labels[i, : len(s)] = s.labels
        mask[i, : len(s)] = True
    with_text = bool(sets) and all(s.texts is not None for s in sets)
    return CandidateBatch(
        qids=[s.qid for s in sets],
        queries=[s.query for s in sets],
        docnos=[s.docnos for s in sets],
        texts=[s.texts for s in sets] if with_text else None,
        labels=labels,
        mask=mask,
        n_relevant=torch.tensor([s.n_relevant for s in sets], dtype=torch.float32),
    )


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} must have columns {list(columns)}; missing {missing} (got {list(frame.columns)})")


def _ids_as_str(frame: pd.DataFrame, columns: Sequence[str], what: str) -> pd.DataFrame:
    """Converts non-string id columns to ``str``, warning once per column."""
    for column in columns:
        values = frame[column]
        convert = values.map(lambda v: not isinstance(v, str) and not pd.isna(v)).astype(bool)
        if convert.any():
            warnings.warn(
                f"{what}: {int(convert.sum())} non-string values in column '{column}' (e.g. "
                f"{values[convert].iloc[0]!r}) were converted with str(); PyTerrier ids are strings", stacklevel=3,
            )
            frame = frame.assign(**{column: values.map(lambda v: v if isinstance(v, str) or pd.isna(v) else str(v))})
    return frame


def _check_qrels(qrels: pd.DataFrame) -> pd.DataFrame:
    _require_columns(qrels, ["qid", "docno", "label"], "qrels")
    qrels = _ids_as_str(qrels[["qid", "docno", "label"]], ["qid", "docno"], "qrels")
    if qrels["label"].isna().any():
        raise ValueError(f"qrels: {int(qrels['label'].isna().sum())} rows have a NaN label; expected numeric grades")
    qrels = qrels.assign(label=pd.to_numeric(qrels["label"]).astype("float32"))
    duplicated = qrels.duplicated(["qid", "docno"])
    if duplicated.any():
        warnings.warn(f"qrels: {int(duplicated.sum())} duplicate (qid, docno) pairs; keeping the highest label",
                      stacklevel=3)
        qrels = qrels.groupby(["qid", "docno"], as_index=False, sort=False)["label"].max()
    return qrels


def _check_frame(res: pd.DataFrame, require_text: bool, what: str) -> pd.DataFrame:
    if not isinstance(res, pd.DataFrame):
        raise ValueError(f"{what} must be a pandas DataFrame, got {type(res).__name__}")
    if "docno" not in res.columns and {"qid", "query"} <= set(res.columns):
        raise ValueError(
            f"{what} has topics but no candidate documents (columns {list(res.columns)}, no 'docno'). Pass a "
            "result frame, or train the model behind a first stage, e.g. "
            "(bm25 % 100 >> pt.text.get_text(dataset, 'text') >> model).fit(topics, qrels)"
        )
    _require_columns(res, ["qid", "query", "docno"] + (["text"] if require_text else []), what)
    if len(res) == 0:
        raise ValueError(f"{what} is empty: expected at least one (qid, docno) candidate row")
    res = _ids_as_str(res, ["qid", "docno"], what)
    if res["docno"].isna().any():
        warnings.warn(f"{what}: dropped {int(res['docno'].isna().sum())} rows without a docno", stacklevel=3)
        res = res[res["docno"].notna()]
    if "score" in res.columns and res["score"].isna().any():
        warnings.warn(f"{what}: {int(res['score'].isna().sum())} rows have a NaN score; is a stage broken?",
                      stacklevel=3)
    if "text" in res.columns and res["text"].isna().any():
        warnings.warn(f"{what}: {int(res['text'].isna().sum())} rows have no text; using ''", stacklevel=3)
        res = res.assign(text=res["text"].fillna(""))
    duplicated = res.duplicated(["qid", "docno"])
    if duplicated.any():
        first = res[duplicated].iloc[0]
        raise ValueError(
            f"{what}: {int(duplicated.sum())} duplicate (qid, docno) rows, e.g. qid={first['qid']!r} "
            f"docno={first['docno']!r}; each candidate must appear once per query"
        )
    return res


def build_candidate_sets(
    res: pd.DataFrame,
    qrels: pd.DataFrame,
    *,
    relevance_level: float = 1,
    require_text: bool = False,
    drop_unlearnable: bool = True,
    what: str = "training frame",
) -> list[CandidateSet]:
    """Merges qrels onto a result frame and groups it into candidate sets.

    Args:
        res: Result frame with columns ``qid, query, docno`` and, optionally, ``text``.
        qrels: Qrels frame with columns ``qid, docno, label``.
        relevance_level: Smallest label that counts as relevant (for ``n_relevant`` and for dropping).
        require_text: Raise when ``res`` has no ``text`` column.
        drop_unlearnable: Drop queries without a relevant candidate (for training; keep for validation).
        what: How error messages name ``res``.

    Returns:
        One :class:`CandidateSet` per remaining query, in order of first appearance in ``res``.

    Raises:
        ValueError: On bad input, as listed in the module docstring.
    """
    res = _check_frame(res, require_text, what)
    qrels = _check_qrels(qrels)

    # merge labels; unjudged candidates get 0
    merged = res.merge(qrels, on=["qid", "docno"], how="left", suffixes=("_res", ""))
    judged = merged["label"].notna()
    if not judged.any():
        raise ValueError(
            f"qrels match no candidate in the {what}: none of its {len(res)} (qid, docno) pairs is judged. "
            f"Candidate ids look like {_examples(res)}, qrels ids like {_examples(qrels)}"
        )
    merged["label"] = merged["label"].fillna(0.0).clip(lower=0.0)

    # count all judged-relevant documents per query, found by the first stage or not
    relevant = qrels[qrels["label"] >= relevance_level]
    n_relevant = relevant.groupby("qid").size()
    missing = set(qrels["qid"]) - set(res["qid"])
    if missing:
        logger.warning("%d of the %d queries in the qrels have no candidates in the %s; they are left out",
                       len(missing), qrels["qid"].nunique(), what)

    # group into candidate sets
    has_text = "text" in merged.columns
    sets = []
    for qid, group in merged.groupby("qid", sort=False):
        sets.append(CandidateSet(
            qid=qid, query=str(group["query"].iloc[0]), docnos=group["docno"].tolist(),
            texts=group["text"].astype(str).tolist() if has_text else None,
            labels=torch.tensor(group["label"].to_numpy(dtype="float32")),
            n_relevant=float(n_relevant.get(qid, 0)),
        ))

    # queries without a relevant candidate give no gradient
    if drop_unlearnable:
        kept = [s for s in sets if bool((s.labels >= relevance_level).any())]
        if len(kept) < len(sets):
            warnings.warn(f"{what}: dropped {len(sets) - len(kept)} of {len(sets)} queries that have no relevant "
                          f"candidate (label >= {relevance_level}); they give no gradient", stacklevel=2)
        sets = kept
    if not sets:
        raise ValueError(f"{what}: no query is left to train on (every query lacks a relevant candidate)")
    return sets


def _examples(frame: pd.DataFrame, n: int = 3) -> str:
    pairs = frame[["qid", "docno"]].head(n).itertuples(index=False)
    return ", ".join(f"({q!r}, {d!r})" for q, d in pairs)
