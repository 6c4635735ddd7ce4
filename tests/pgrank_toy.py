"""A tiny pure-torch ranker implementing the ``_pgrank_*`` hooks, and a learnable synthetic ranking task.

The ranker embeds the words of a query and of a document with two linear towers and scores by
their dot product. In the task, each query is one word, and a document is relevant when it contains that
word's partner (a fixed random pairing), which the towers can learn but a random model cannot guess.
"""
from __future__ import annotations

import random

import pandas as pd
import pyterrier as pt
import torch

from pyterrier_pgrank.training import PGRankEstimator


class BagOfWordsRanker(PGRankEstimator):
    """Dot product of mean word embeddings; the backward pass runs over chunks of ``chunk_size`` candidates."""

    def __init__(self, vocabulary: list[str], *, dim: int = 8, seed: int = 0, chunk_size: int = 3, **settings):
        from pyterrier_pgrank.settings import TrainingSettings

        torch.manual_seed(seed)
        self.index = {word: i for i, word in enumerate(vocabulary)}
        self.net = torch.nn.ModuleDict({
            "query": torch.nn.Linear(len(vocabulary), dim, bias=False),
            "doc": torch.nn.Linear(len(vocabulary), dim, bias=False),
        })
        self.chunk_size = chunk_size
        self.training_settings = TrainingSettings(**settings)
        self.prepared = 0
        self.verbose = False

    def _bag(self, tower: str, texts: list[str]) -> torch.Tensor:
        counts = torch.zeros(len(texts), len(self.index))  # [B, V]
        for row, text in enumerate(texts):
            for word in text.split():
                counts[row, self.index[word]] += 1.0
        return self.net[tower](counts / counts.sum(1, keepdim=True))  # [B, D]

    def _score(self, queries: list[str], texts: list[list[str]], columns: slice) -> torch.Tensor:
        """Scores of the candidates in ``columns`` (padding scored 0), ``[Q, len(columns)]``, with graph."""
        width = columns.stop - columns.start
        queries_emb = self._bag("query", queries)  # [Q, D]
        scores = queries_emb.new_zeros(len(queries), width)
        for row, docs in enumerate(texts):
            chunk = docs[columns]
            if chunk:
                scores[row, : len(chunk)] = self._bag("doc", chunk) @ queries_emb[row]
        return scores

    def _pgrank_module(self) -> torch.nn.Module:
        return self.net

    def _pgrank_prepare(self, train_sets, valid_sets, settings) -> None:
        self.prepared += 1

    def _pgrank_scores(self, batch) -> torch.Tensor:
        with torch.no_grad():
            return self._score(batch.queries, batch.texts, slice(0, batch.mask.shape[1]))

    def _pgrank_backward(self, batch, doc_weights: torch.Tensor) -> None:
        for start in range(0, batch.mask.shape[1], self.chunk_size):
            columns = slice(start, min(start + self.chunk_size, batch.mask.shape[1]))
            (doc_weights[:, columns] * self._score(batch.queries, batch.texts, columns)).sum().backward()

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        with torch.no_grad():
            queries = self._bag("query", inp["query"].tolist())
            docs = self._bag("doc", inp["text"].tolist())
        return pt.model.add_ranks(inp.assign(score=(queries * docs).sum(1).numpy()))


def toy_task(n_train: int = 40, n_valid: int = 12, n_candidates: int = 12, n_words: int = 24, seed: int = 0):
    """Returns ``vocabulary, (train_res, train_qrels), (valid_res, valid_qrels)`` of the synthetic task."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(n_words)]
    partners = dict(zip(words, rng.sample(words, n_words)))

    def split(prefix: str, n: int) -> tuple[pd.DataFrame, pd.DataFrame]:
        rows, qrels = [], []
        for q in range(n):
            word = rng.choice(words)
            for d in range(n_candidates):
                relevant = d < 2
                others = [w for w in words if w != partners[word]]
                text = rng.sample(others, 3) + ([partners[word]] if relevant else [])
                rng.shuffle(text)
                rows.append({"qid": f"{prefix}{q}", "query": word, "docno": f"{prefix}{q}-d{d}",
                             "text": " ".join(text)})
                if relevant:
                    qrels.append({"qid": f"{prefix}{q}", "docno": f"{prefix}{q}-d{d}", "label": 1})
        res = pd.DataFrame(rows).sample(frac=1.0, random_state=seed).reset_index(drop=True)
        return res, pd.DataFrame(qrels)

    return words, split("t", n_train), split("v", n_valid)
