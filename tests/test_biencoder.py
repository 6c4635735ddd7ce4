"""Tests of PGRankBiEncoder on a tiny random BERT: pyterrier-dr integration, training hooks, fit, save/load."""
from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pyterrier as pt
import pytest
import torch
from ir_measures import nDCG

from pyterrier_pgrank.biencoder import PGRankBiEncoder
from pyterrier_pgrank.data import CandidateSet, collate
from pyterrier_pgrank.text_encoder import TextEncoder

WORDS = ("apple river stone cloud tiger piano garden silver rocket candle "
         "forest violin mirror desert planet ocean bridge engine castle window").split()


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest single-threaded on shared CPUs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def word_task(n_queries: int, prefix: str, seed: int, n_candidates: int = 10) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Queries are single words; of each query's candidates (three random words each) one contains the word."""
    rng = random.Random(seed)
    rows, qrels = [], []
    for i in range(n_queries):
        qid, word = f"{prefix}{i}", rng.choice(WORDS)
        others = [w for w in WORDS if w != word]
        for j in range(n_candidates):
            words = rng.sample(others, 3)
            if j == 0:
                words[rng.randrange(3)] = word
            rows.append({"qid": qid, "query": word, "docno": f"{qid}-{j}", "text": " ".join(words), "score": 0.0})
            qrels.append({"qid": qid, "docno": f"{qid}-{j}", "label": int(j == 0)})
    return pd.DataFrame(rows), pd.DataFrame(qrels)


def ndcg10(model: PGRankBiEncoder, res: pd.DataFrame, qrels: pd.DataFrame) -> float:
    return pt.Evaluate(model.text_scorer()(res), qrels, metrics=["ndcg_cut_10"])["ndcg_cut_10"]


def candidate_sets(res: pd.DataFrame, qrels: pd.DataFrame, widths: list[int]) -> list[CandidateSet]:
    """One candidate set per query, the i-th keeping its first ``widths[i]`` candidates."""
    labels = qrels.set_index("docno")["label"]
    sets = []
    for (qid, group), width in zip(res.groupby("qid", sort=False), widths):
        group = group.head(width)
        sets.append(CandidateSet(qid, group["query"].iloc[0], list(group["docno"]), list(group["text"]),
                                 torch.tensor(labels[group["docno"]].to_numpy(), dtype=torch.float32), 1.0))
    return sets


def candidate_batch(res: pd.DataFrame, qrels: pd.DataFrame, widths: list[int]) -> object:
    """A padded batch whose i-th query keeps its first ``widths[i]`` candidates."""
    return collate(candidate_sets(res, qrels, widths))


def full_graph_scores(model: PGRankBiEncoder, batch, docs: torch.Tensor | None = None) -> torch.Tensor:
    """Scores ``[Q, N]`` computed in one pass with a full autograd graph (the reference for the chunked backward)."""
    model.query_tower.eval()
    queries = model.query_tower.encode(batch.queries)  # [Q, D]
    if docs is None:
        flat = [t for texts in batch.texts for t in texts]
        encoded = model.document_tower.encode(flat)  # [M, D]
        docs = torch.zeros(*batch.mask.shape, encoded.shape[1])
        docs[batch.mask] = encoded
    return torch.einsum("qd,qnd->qn", queries, docs) / model.temperature


def grads(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in module.parameters() if p.grad is not None]


def test_encoders_agree_with_text_scorer_and_flex_index(tiny_bert, tmp_path, monkeypatch):
    from pyterrier_dr import FlexIndex

    model = PGRankBiEncoder.from_pretrained(tiny_bert, batch_size=4)
    res, _ = word_task(3, "q", seed=1, n_candidates=5)
    docs = res[["docno", "text"]]
    index = FlexIndex(str(tmp_path / "index"))
    (model >> index).index(docs.to_dict("records"))

    scored = model.text_scorer()(res).sort_values(["qid", "docno"])
    retrieved = (model >> index.retriever(num_results=len(docs)))(res[["qid", "query"]].drop_duplicates())
    merged = scored.merge(retrieved, on=["qid", "docno"], suffixes=("", "_dense"))
    assert len(merged) == len(res)
    np.testing.assert_allclose(merged["score"], merged["score_dense"], rtol=1e-5, atol=1e-5)

    reranked = (model.query_encoder() >> index.scorer())(res).sort_values(["qid", "docno"])
    np.testing.assert_allclose(reranked["score"], scored["score"], rtol=1e-5, atol=1e-5)

    # query-tower training reads the indexed vectors instead of encoding the documents again
    model.cache_doc_vectors(index)
    encoded = []
    forward = TextEncoder.forward
    monkeypatch.setattr(TextEncoder, "forward", lambda self, inputs: encoded.append(1) or forward(self, inputs))
    model._pgrank_prepare(candidate_sets(res, res.assign(label=1), [5, 5, 5]), None, None)
    assert not encoded
    cached = model._doc_vectors[[model._doc_rows[d] for d in docs["docno"]]].numpy()
    np.testing.assert_allclose(cached, model.encode_docs(docs["text"]), rtol=1e-5, atol=1e-6)


def test_empty_frames_give_empty_results(tiny_bert):
    model = PGRankBiEncoder.from_pretrained(tiny_bert)
    empty_res = pd.DataFrame(columns=["qid", "query", "docno", "text"])
    assert len(model.text_scorer()(empty_res)) == 0
    assert len(model.query_encoder()(pd.DataFrame(columns=["qid", "query"]))) == 0
    assert len(model.doc_encoder()(pd.DataFrame(columns=["docno", "text"]))) == 0
    assert model.encode_docs([]).shape == (0, model.query_tower.dim)


def test_experiment_runs_with_the_text_scorer(tiny_bert):
    model = PGRankBiEncoder.from_pretrained(tiny_bert)
    res, qrels = word_task(4, "q", seed=2, n_candidates=5)
    source = pt.Transformer.from_df(res)
    table = pt.Experiment([source, source >> model.text_scorer()], res[["qid", "query"]].drop_duplicates(),
                          qrels, [nDCG @ 10], names=["source", "dense"], baseline=0)
    assert list(table["name"]) == ["source", "dense"]
    assert table["nDCG@10"].between(0, 1).all() and "nDCG@10 p-value" in table.columns
    assert repr(model.text_scorer()).startswith("PGRankBiEncoder(")


@pytest.mark.parametrize("towers", ["query", "both"])
def test_backward_matches_one_full_autograd_pass(tiny_bert, towers):
    model = PGRankBiEncoder.from_pretrained(tiny_bert, train_towers=towers, doc_chunk_size=3)
    res, qrels = word_task(2, "q", seed=3, n_candidates=7)
    batch = candidate_batch(res, qrels, widths=[7, 4])  # the second row is padded
    model._pgrank_prepare([], None, None)
    doc_weights = torch.randn(batch.mask.shape) * batch.mask

    # the hooks: a gradient-free scoring pass, then the chunked backward
    module = model._pgrank_module()
    scores = model._pgrank_scores(batch)
    module.zero_grad()
    model._pgrank_backward(batch, doc_weights)
    chunked = grads(module)

    # the reference: one pass with the whole graph
    docs = model._cached_doc_vectors(batch) if towers == "query" else None
    reference = full_graph_scores(model, batch, docs)
    torch.testing.assert_close(scores, reference.detach() * batch.mask, rtol=1e-5, atol=1e-5)
    module.zero_grad()
    (doc_weights * reference).sum().backward()
    full = grads(module)
    assert len(chunked) == len(full) > 0
    for a, b in zip(chunked, full):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_thousand_candidates_train_in_chunks(tiny_bert):
    model = PGRankBiEncoder.from_pretrained(tiny_bert, train_towers="both", doc_chunk_size=100, max_length=16)
    res, qrels = word_task(1, "q", seed=4, n_candidates=1000)
    qrels["label"] = np.arange(len(qrels)) % 2  # many relevant documents: most weights are non-zero
    widest = []
    hook = model.query_tower.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: widest.append(kwargs["input_ids"].shape[0]) if torch.is_grad_enabled() else None,
        with_kwargs=True)
    before = [p.detach().clone() for p in model.query_tower.parameters()]
    model.fit(res, qrels, max_steps=1, queries_per_step=1, n_samples=8, lr=1e-3, warmup=0)
    hook.remove()
    assert max(widest) <= 100 and len(widest) >= 10  # every encoder pass with a graph holds one chunk
    changed = [not torch.equal(a, b) for a, b in zip(before, model.query_tower.parameters())]
    assert any(changed)


def test_fit_raises_heldout_ndcg_and_keeps_the_index_valid(tiny_bert):
    model = PGRankBiEncoder.from_pretrained(tiny_bert)
    train, train_qrels = word_task(60, "t", seed=5)
    test, test_qrels = word_task(40, "e", seed=6)
    doc_vecs = model.encode_docs(test["text"].tolist())
    before = ndcg10(model, test, test_qrels)
    model.fit(train, train_qrels, lr=1e-3, epochs=5, queries_per_step=8, n_samples=16, warmup=0, seed=0)
    after = ndcg10(model, test, test_qrels)
    assert after > before + 0.05, (before, after)
    np.testing.assert_array_equal(model.encode_docs(test["text"].tolist()), doc_vecs)


def test_pipeline_fit_trains_on_the_candidates_in_front(tiny_bert):
    model = PGRankBiEncoder.from_pretrained(tiny_bert, training_settings={"max_steps": 2, "queries_per_step": 4})
    res, qrels = word_task(8, "t", seed=7, n_candidates=6)
    topics = res[["qid", "query"]].drop_duplicates()
    (pt.Transformer.from_df(res) >> model).fit(topics, qrels, topics, qrels)
    history = model.training_history
    assert [row["step"] for row in history.valid] == [0, 2] and history.best_step is not None
    assert set(model._doc_rows) == set(res["docno"])  # each candidate cached once, nothing else


@pytest.mark.parametrize("towers", ["query", "both"])
def test_model_after_validated_fit_scores_in_eval_mode(tiny_bert, tmp_path, towers):
    """Dropout is off after fit (the towers go back to eval mode) and at inference whatever the mode."""
    model = PGRankBiEncoder.from_pretrained(tiny_bert, train_towers=towers)
    assert model.query_tower.transformer.config.hidden_dropout_prob > 0  # else the test could not fail
    res, qrels = word_task(8, "t", seed=9, n_candidates=5)
    model.fit(res, qrels, res, qrels, max_steps=2, eval_every=1, queries_per_step=4, lr=1e-2, warmup=0)
    assert not model.query_tower.training and not model.document_tower.training
    queries, texts = res["query"].unique().tolist(), res["text"].tolist()
    expected = model.encode_queries(queries) @ model.encode_docs(texts).T
    reloaded = PGRankBiEncoder.from_pretrained(model.save(tmp_path / "saved"))
    np.testing.assert_allclose(reloaded.encode_queries(queries) @ reloaded.encode_docs(texts).T, expected,
                               rtol=1e-5, atol=1e-5)
    model.query_tower.train()
    model.document_tower.train()
    np.testing.assert_allclose(model.encode_queries(queries) @ model.encode_docs(texts).T, expected,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("trained", [False, True])
def test_save_round_trip_gives_identical_scores(tiny_bert, tmp_path, trained):
    from sentence_transformers import SentenceTransformer

    model = PGRankBiEncoder.from_pretrained(tiny_bert)
    res, qrels = word_task(4, "t", seed=8, n_candidates=5)
    if trained:  # query-tower training separates the towers: saved as a routed model
        model.fit(res, qrels, max_steps=2, queries_per_step=4, lr=1e-2, warmup=0)
        assert model.doc_tower is not None
    path = model.save(tmp_path / "saved")
    assert not list(path.rglob("*.bin")) and not list(path.rglob("*.pt"))
    queries, texts = res["query"].unique().tolist(), res["text"].tolist()
    expected = model.encode_queries(queries) @ model.encode_docs(texts).T

    reloaded = PGRankBiEncoder.from_pretrained(path)
    artifact = pt.Artifact.load(str(path))
    assert isinstance(artifact, PGRankBiEncoder)
    sbert = SentenceTransformer(str(path), device="cpu")
    for loaded in (reloaded, artifact):
        np.testing.assert_allclose(loaded.encode_queries(queries) @ loaded.encode_docs(texts).T, expected,
                                   rtol=1e-5, atol=1e-5)
    sbert_scores = sbert.encode_query(queries) @ sbert.encode_document(texts).T
    np.testing.assert_allclose(sbert_scores, expected, rtol=1e-5, atol=1e-5)
