"""A cross-encoder re-ranker trained with policy gradient.

A cross-encoder reads each (query, document) pair jointly and outputs one relevance score, so scoring a
query's ``N`` candidates costs ``N`` encoder passes. Training keeps memory flat in ``N`` by splitting each
step in two passes (see :meth:`PGRankCrossEncoder._pgrank_backward`): all candidates are scored without an
autograd graph, the policy-gradient estimator turns the scores into per-document weights, and the pairs are
then re-encoded chunk by chunk with a graph, each chunk back-propagated and freed before the next.

Shape legend: ``Q`` queries, ``N`` candidates per query (padded), ``P`` (query, document) pairs in a chunk.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyterrier as pt
import pyterrier_alpha as pta
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

from pyterrier_pgrank.settings import TrainingSettings
from pyterrier_pgrank.training import PGRankEstimator, eval_mode

logger = logging.getLogger(__name__)

# sentence-transformers applies a sigmoid to single-logit cross-encoders unless the config says otherwise;
# the identity keeps its scores equal to ours (sigmoid would not change the ranking, only the values).
_ST_SETTINGS = {"activation_fn": "torch.nn.modules.linear.Identity"}


def _load_hf(name_or_path: str | os.PathLike, trust_remote_code: bool) -> tuple[PreTrainedModel, Any]:
    """Loads a single-output sequence classifier, adding a fresh head to a plain encoder body."""
    config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    has_head = any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))
    if has_head and config.num_labels != 1:
        raise ValueError(
            f"Expected a sequence-classification checkpoint with one output (a relevance score), "
            f"got num_labels={config.num_labels} at {name_or_path!s}."
        )
    model = AutoModelForSequenceClassification.from_pretrained(
        name_or_path, num_labels=1, trust_remote_code=trust_remote_code
    )
    if not has_head:
        logger.info(
            "%s has no sequence-classification head: added a fresh, randomly initialised scoring head "
            "on top of its %s body.", name_or_path, config.model_type
        )
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    return model, tokenizer


class PGRankCrossEncoder(PGRankEstimator):
    """Re-ranks candidate documents with a cross-encoder, trainable for an IR metric by policy gradient.

    Reads ``qid, query, docno, text`` and writes ``score`` (the classifier's single logit) and ``rank``.
    ``fit(train, train_qrels, valid, valid_qrels)`` (from :class:`~pyterrier_pgrank.training.PGRankEstimator`)
    optimises the expected utility of the Plackett-Luce policy ``softmax(score)`` over each query's
    candidate set (Neural PG-Rank; Gao, Wang, Joachims, 2023), so the stage placed in front of the
    re-ranker decides the candidates it is trained on, e.g. ``(bm25 % 30 >> text >> reranker).fit(...)``.

    Constructed from a path so that ``pt.Artifact.load`` can build it; :meth:`from_pretrained` is the same
    with a name that reads better.

    Args:
        model_name_or_path: a sequence-classification checkpoint with one output (such as a folder written
            by :meth:`save`), or a plain encoder body (a BERT or sentence-transformers folder, a Hugging Face
            id), to which a fresh scoring head is added (logged at INFO level).
        device: where the model runs; defaults to CUDA when available, else CPU.
        batch_size: (query, document) pairs per encoder pass, at inference and in both training passes; the
            chunk size that bounds training memory.
        max_length: tokens per pair (query and document truncated longest-first); defaults to the smallest
            of the tokenizer's maximum, the model's position limit and 512.
        verbose: show progress bars.
        trust_remote_code: allow model code from the hub; off by default.
        training_settings: defaults of :meth:`fit` (a :class:`~pyterrier_pgrank.settings.TrainingSettings`
            or a dict of its fields); ``fit`` keyword arguments override them for one call.

    Raises:
        ValueError: the checkpoint is a classifier with more than one output, ``batch_size < 1``, or
            ``max_length`` beyond the model's position limit.

    .. seealso::
        :func:`pyterrier_pgrank.pointwise.fit_pointwise` trains the same model with binary cross-entropy
        per pair instead, through the same trainer, for comparisons.

    .. note::
        Dropout is switched off in both training passes, so that the chunked re-encoding computes exactly
        the function the rankings were sampled from; the model is thus fine-tuned without dropout.
    """

    ARTIFACT_TYPE = "ranker"
    ARTIFACT_FORMAT = "pgrank_cross_encoder"

    def __init__(
        self,
        model_name_or_path: str | os.PathLike,
        *,
        device: str | torch.device | None = None,
        batch_size: int = 32,
        max_length: int | None = None,
        verbose: bool = False,
        trust_remote_code: bool = False,
        training_settings: TrainingSettings | dict | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"Expected batch_size >= 1, got {batch_size}.")
        if isinstance(training_settings, dict):
            training_settings = TrainingSettings(**training_settings)
        self.training_settings = training_settings or TrainingSettings()
        self.model_name = str(model_name_or_path)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model, self.tokenizer = _load_hf(model_name_or_path, trust_remote_code)
        self.model = model.to(self.device).eval()
        self.batch_size = batch_size
        limit = getattr(model.config, "max_position_embeddings", None) or 512
        if max_length is not None and not 0 < max_length <= limit:
            raise ValueError(f"Expected max_length in [1, {limit}] (the model's position limit), got {max_length}.")
        self.max_length = max_length or min(limit, self.tokenizer.model_max_length, 512)
        self.verbose = verbose

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **kwargs: Any) -> PGRankCrossEncoder:
        """Loads a cross-encoder; keyword arguments as for the constructor."""
        return cls(name_or_path, **kwargs)

    def __repr__(self) -> str:
        return f"PGRankCrossEncoder({self.model_name!r})"

    # ---------------------------------------------------------------- inference

    def _pair_scores(self, queries: list[str], texts: list[str]) -> torch.Tensor:
        """Scores one chunk of pairs with whatever autograd state is active: returns ``[P]`` float32."""
        inputs = self.tokenizer(queries, texts, padding=True, truncation=True, max_length=self.max_length,
                                return_tensors="pt").to(self.device)
        return self.model(**inputs).logits[:, 0].float()  # [P]

    def _chunks(self, n_pairs: int, desc: str | None = None) -> Iterator[slice]:
        """Slices of at most ``batch_size`` pairs; a progress bar when verbose and ``desc`` is given."""
        starts = range(0, n_pairs, self.batch_size)
        if self.verbose and desc is not None:
            starts = pt.tqdm(starts, desc=desc, unit="batch")
        for start in starts:
            yield slice(start, start + self.batch_size)

    @torch.no_grad()
    def score_pairs(self, queries: list[str], texts: list[str]) -> torch.Tensor:
        """Scores (query, text) pairs in batches, in eval mode and without a graph.

        Returns:
            ``[P]`` float32 scores on the CPU.
        """
        scores = torch.empty(len(queries))
        with eval_mode(self.model):
            for chunk in self._chunks(len(queries), desc=repr(self)):
                scores[chunk] = self._pair_scores(queries[chunk], texts[chunk]).cpu()
        return scores

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        """Scores each row's (``query``, ``text``) pair and ranks the rows of each ``qid`` by score."""
        pta.validate.columns(inp, includes=["qid", "query", "docno", "text"])
        res = inp.drop(columns=["score", "rank"], errors="ignore")
        if len(res) == 0:
            return res.assign(score=pd.Series(dtype="float64"), rank=pd.Series(dtype="int64"))
        scores = self.score_pairs(res["query"].astype(str).tolist(), res["text"].astype(str).tolist())
        res = res.assign(score=scores.double().numpy())
        return pt.model.add_ranks(res)

    # ---------------------------------------------------------------- training hooks

    def _pgrank_module(self) -> torch.nn.Module:
        return self.model

    def _pgrank_prepare(self, train_sets: Any, valid_sets: Any, settings: Any) -> None:
        """Nothing to precompute: every candidate is re-encoded with its query at each step."""
        self.model.to(self.device)

    @staticmethod
    def _batch_pairs(batch: Any) -> tuple[torch.Tensor, list[str], list[str]]:
        """Flattens the real candidates of a batch: indices ``[P, 2]`` (query, candidate), queries, texts."""
        if batch.texts is None:
            raise ValueError("A cross-encoder needs document texts: expected a 'text' column in the candidates, "
                             "e.g. add pt.text.get_text(dataset, 'text') before the re-ranker.")
        index = batch.mask.nonzero().cpu()  # [P, 2]
        queries = [batch.queries[q] for q in index[:, 0].tolist()]
        texts = [batch.texts[q][n] for q, n in index.tolist()]
        return index, queries, texts

    @torch.no_grad()
    def _pgrank_scores(self, batch: Any) -> torch.Tensor:
        """Scores every real candidate of ``batch`` without a graph: returns ``[Q, N]``, 0 at padding."""
        index, queries, texts = self._batch_pairs(batch)
        scores = torch.zeros(batch.mask.shape, device=self.device)  # [Q, N]
        with eval_mode(self.model):
            for chunk in self._chunks(len(queries)):
                rows = index[chunk].to(self.device)
                scores[rows[:, 0], rows[:, 1]] = self._pair_scores(queries[chunk], texts[chunk])
        return scores

    def _pgrank_backward(self, batch: Any, doc_weights: torch.Tensor) -> None:
        """Accumulates into ``.grad`` the gradient of ``(doc_weights * scores).sum()``, chunk by chunk.

        Pairs with a zero weight (padding, and documents the estimator gives no gradient) are skipped; each
        chunk of at most ``batch_size`` pairs is re-encoded with a graph and back-propagated at once, so
        the peak memory is that of one chunk, whatever ``N``.

        .. math::
            \\nabla_\\theta \\sum_{q,n} w_{qn}\\, s_\\theta(q, d_n)
            = \\sum_{\\text{chunks } C} \\nabla_\\theta \\sum_{(q,n) \\in C} w_{qn}\\, s_\\theta(q, d_n)

        Args:
            batch: the candidate batch that produced ``doc_weights``.
            doc_weights: ``[Q, N]`` weights, the gradient of the loss w.r.t. the scores.
        """
        index, queries, texts = self._batch_pairs(batch)
        weights = doc_weights.detach().to(self.device)[index[:, 0], index[:, 1]]  # [P]
        keep = (weights != 0).nonzero().squeeze(1).tolist()
        with eval_mode(self.model):
            for chunk in self._chunks(len(keep)):
                pairs = keep[chunk]
                scores = self._pair_scores([queries[i] for i in pairs], [texts[i] for i in pairs])  # [P]
                (weights[pairs] * scores).sum().backward()

    # ---------------------------------------------------------------- persistence

    def save(self, path: str | os.PathLike) -> None:
        """Writes a folder that :meth:`from_pretrained`, ``pt.Artifact.load``, ``transformers``'
        ``AutoModelForSequenceClassification`` and sentence-transformers' ``CrossEncoder`` all load.

        Weights are stored as safetensors and the tokenizer as JSON (nothing is pickled); ``pt_meta.json``
        names the artifact type and format, and the tokenizer's ``model_max_length`` records ``max_length``.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.config.sentence_transformers = dict(_ST_SETTINGS)
        self.model.save_pretrained(path, safe_serialization=True)
        self.tokenizer.model_max_length = self.max_length
        self.tokenizer.save_pretrained(path)
        meta = {"type": self.ARTIFACT_TYPE, "format": self.ARTIFACT_FORMAT, "package_hint": "pyterrier-pgrank"}
        (path / "pt_meta.json").write_text(json.dumps(meta))
