"""The bi-encoder's training hooks: scores without a graph, and a backward pass bounded in the candidate count.

The policy-gradient estimators reduce to per-document weights ``w`` on the scores ``s = q . d / tau``
(``tau`` the model's temperature), so the encoders only ever need the gradient of ``sum(w * s)``:

.. math::
    \\tau\\, \\nabla_\\theta \\sum_{i,j} w_{ij}\\, s_{ij}
    = \\sum_i \\Big(\\sum_j w_{ij} d_{ij}\\Big)^\\top \\nabla_\\theta q_i
    + \\sum_{i,j} w_{ij}\\, q_i^\\top \\nabla_\\theta d_{ij}

Query-tower regime: the ``d`` are computed once by a frozen document tower and cached, and only the first
term remains. Both-towers regime: the second term is accumulated over chunks of candidates, each
re-encoded with a graph and back-propagated at once against the detached query embedding (a gradient
cache, Gao et al., "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup", 2021), and
the first term is back-propagated through the query tower once at the end, so memory depends on the
chunk size, not on ``N``.

Shape legend: ``Q`` queries, ``N`` candidates per query, ``C`` candidates in a chunk, ``D`` embedding size.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import numpy as np
import pyterrier as pt
import torch

logger = logging.getLogger(__name__)


class BiEncoderTrainingHooks:
    """Mixin for :class:`~pyterrier_pgrank.biencoder.PGRankBiEncoder` implementing the trainer's ``_pgrank_*`` hooks.

    .. note::
        Dropout is switched off during policy-gradient training (the towers run in ``eval`` mode in every
        hook): the policy being differentiated is the deterministic scorer that is deployed, and the
        gradient pass computes exactly the scores that were sampled from.
    """

    def _init_training_state(self) -> None:
        self._doc_rows: dict[str, int] = {}
        self._doc_vectors = torch.empty((0, self.query_tower.dim), device=self.device)  # [n_docs, D]
        self._both_module: torch.nn.Module | None = None

    # ---- the document cache (query-tower regime) ------------------------------------------------

    def cache_doc_vectors(self, docnos: Sequence[str] | object, doc_vecs: np.ndarray | None = None) -> None:
        """Seeds the document cache with embeddings computed elsewhere (e.g. a ``FlexIndex`` built before training).

        The vectors must come from this model's current document tower; query-tower training then never
        encodes those documents again.

        Args:
            docnos: ``n`` document ids, or a :class:`pyterrier_dr.FlexIndex` (its docnos and vectors are read).
            doc_vecs: ``[n, D]`` embeddings; omitted when ``docnos`` is an index.
        """
        if doc_vecs is None:
            lookup, vectors, _ = docnos.payload()
            docnos, doc_vecs = lookup.fwd[np.arange(len(vectors))], np.asarray(vectors)
        docnos = [str(d) for d in docnos]
        if len(docnos) != len(doc_vecs) or np.ndim(doc_vecs) != 2 or np.shape(doc_vecs)[1] != self.query_tower.dim:
            raise ValueError(f"expected {len(docnos)} vectors of size {self.query_tower.dim}, got an array of "
                             f"shape {np.shape(doc_vecs)}.")
        self._add_to_cache(docnos, torch.from_numpy(np.array(doc_vecs, dtype=np.float32)).to(self.device))

    def _add_to_cache(self, docnos: list[str], vectors: torch.Tensor) -> None:
        new = {}  # docno -> its first position in docnos, for documents not cached yet
        for i, docno in enumerate(docnos):
            if docno not in self._doc_rows:
                new.setdefault(docno, i)
        start = len(self._doc_rows)
        self._doc_rows.update({docno: start + offset for offset, docno in enumerate(new)})
        self._doc_vectors = torch.cat([self._doc_vectors, vectors[list(new.values())].to(self.device)])

    def _encode_uncached(self, docnos: Iterable[str], texts: Iterable[str]) -> None:
        """Encodes, with the frozen document tower, each distinct document not cached yet."""
        missing = {}
        for docno, text in zip(docnos, texts):
            if docno not in self._doc_rows:
                missing.setdefault(docno, text)
        if not missing:
            return
        logger.info("encoding %d distinct documents for the training cache", len(missing))
        ids, texts = list(missing), list(missing.values())
        vectors = []
        batches = range(0, len(ids), self.batch_size)
        if self.verbose:
            batches = pt.tqdm(batches, desc="Caching documents", unit="batch")
        with torch.no_grad():
            for start in batches:
                vectors.append(self.document_tower.encode(texts[start:start + self.batch_size], self.batch_size))
        self._add_to_cache(ids, torch.cat(vectors).float())

    def _cached_doc_vectors(self, batch) -> torch.Tensor:
        """The cached embeddings of a batch's candidates, ``[Q, N, D]`` (zeros where padded)."""
        for docnos, texts in zip(batch.docnos, _texts_of(batch)):
            self._encode_uncached(docnos, texts)
        rows = torch.zeros(batch.mask.shape, dtype=torch.long)  # [Q, N]
        for i, docnos in enumerate(batch.docnos):
            rows[i, :len(docnos)] = torch.tensor([self._doc_rows[d] for d in docnos], dtype=torch.long)
        vectors = self._doc_vectors[rows.to(self.device)]  # [Q, N, D]
        return vectors * batch.mask.to(self.device).unsqueeze(-1)

    # ---- trainer hooks --------------------------------------------------------------------------

    def _pgrank_module(self) -> torch.nn.Module:
        """The parameters that train: the query tower, or the encoder(s) of both sides."""
        if self.train_towers == "query" or self.doc_tower is None:
            return self.query_tower
        self.doc_tower.requires_grad_(True)
        if self._both_module is None:
            self._both_module = torch.nn.ModuleDict({"query": self.query_tower, "document": self.doc_tower})
        return self._both_module

    def _pgrank_prepare(self, train_sets: Sequence, valid_sets: Sequence | None, settings: object) -> None:
        """Freezes a document tower and caches every distinct candidate once (query regime only).

        Args:
            train_sets: Candidate sets (objects with ``docnos`` and ``texts``) that training will visit.
            valid_sets: Candidate sets for validation, or ``None``.
            settings: The trainer's :class:`~pyterrier_pgrank.settings.TrainingSettings` (not read).
        """
        if self.train_towers == "both":
            self._doc_rows, self._doc_vectors = {}, self._doc_vectors[:0]  # the document tower will change
            return
        self._split_towers()
        self.doc_tower.requires_grad_(False)
        sets = [*train_sets, *(valid_sets or [])]
        docnos = (docno for candidates in sets for docno in candidates.docnos)
        texts = (text for candidates in sets for text in _texts_of_set(candidates))
        self._encode_uncached(docnos, texts)  # one pass over every distinct document

    def _pgrank_scores(self, batch) -> torch.Tensor:
        """Scores ``[Q, N]`` of a batch's candidates, without an autograd graph (padding scores 0)."""
        self._eval_mode()
        with torch.no_grad():
            queries = self.query_tower.encode(batch.queries, self.batch_size).float()  # [Q, D]
            if self.train_towers == "query":
                docs = self._cached_doc_vectors(batch)  # [Q, N, D]
                return torch.einsum("qd,qnd->qn", queries, docs) / self.temperature
            scores = torch.zeros(batch.mask.shape, device=self.device)  # [Q, N]
            for rows, cols, texts in self._chunks(batch):
                docs = self.document_tower.encode(texts, self.doc_chunk_size).float()  # [C, D]
                scores[rows, cols] = (queries[rows] * docs).sum(-1)
            return scores / self.temperature

    def _pgrank_backward(self, batch, doc_weights: torch.Tensor) -> None:
        """Accumulates into ``.grad`` the gradient of ``(doc_weights * scores).sum()``.

        Args:
            batch: The :class:`~pyterrier_pgrank.data.CandidateBatch` that was scored.
            doc_weights: ``[Q, N]`` weights on the scores (zero where padded).
        """
        self._eval_mode()
        mask = batch.mask.to(self.device)
        doc_weights = (doc_weights.detach().to(self.device) * mask).float() / self.temperature  # [Q, N]
        with torch.enable_grad():
            queries = self.query_tower.encode(batch.queries, self.batch_size).float()  # [Q, D] with graph
        if self.train_towers == "query":
            docs = self._cached_doc_vectors(batch)  # [Q, N, D]
            queries.backward(torch.einsum("qn,qnd->qd", doc_weights, docs))
            return
        query_grads = torch.zeros_like(queries)  # [Q, D]
        detached = queries.detach()
        for rows, cols, texts in self._chunks(batch, doc_weights):
            with torch.enable_grad():
                docs = self.document_tower.encode(texts, self.doc_chunk_size).float()  # [C, D]
            weights = doc_weights[rows, cols].unsqueeze(-1)  # [C, 1]
            query_grads.index_add_(0, rows, weights * docs.detach())
            docs.backward(weights * detached[rows])
        queries.backward(query_grads)

    # ---- helpers --------------------------------------------------------------------------------

    def _chunks(self, batch, doc_weights: torch.Tensor | None = None):
        """Yields ``(rows [C], cols [C], texts)`` over real candidates (with a non-zero weight, if given)."""
        keep = batch.mask.to(self.device)
        if doc_weights is not None:
            keep = keep & (doc_weights != 0)
        rows, cols = keep.nonzero(as_tuple=True)  # [M], [M]
        texts = _texts_of(batch)
        pairs = list(zip(rows.tolist(), cols.tolist()))
        for start in range(0, len(pairs), self.doc_chunk_size):
            chunk = slice(start, start + self.doc_chunk_size)
            yield rows[chunk], cols[chunk], [texts[i][j] for i, j in pairs[chunk]]

    def _eval_mode(self) -> None:
        self.query_tower.eval()
        if self.doc_tower is not None:
            self.doc_tower.eval()


def _texts_of(batch) -> list[list[str]]:
    if batch.texts is None:
        raise ValueError("the bi-encoder needs document texts: put a text loader (e.g. pt.text.get_text) in "
                         "front of it, or give a frame with a 'text' column.")
    return batch.texts


def _texts_of_set(candidates) -> list[str]:
    if candidates.texts is None:
        raise ValueError(f"query {candidates.qid!r} has no document texts: the bi-encoder needs a 'text' column.")
    return candidates.texts
