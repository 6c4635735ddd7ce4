"""Tests of the cross-encoder re-ranker and its pointwise twin, on a tiny random BERT."""
from __future__ import annotations

import random
import weakref

import ir_measures
import pandas as pd
import pyterrier as pt
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertForSequenceClassification

from pyterrier_pgrank.crossencoder import PGRankCrossEncoder
from pyterrier_pgrank.data import build_candidate_sets, collate
from pyterrier_pgrank.pointwise import fit_pointwise, pointwise_bce_loss

WORDS = "apple river stone cloud maple tiger ocean pepper violin candle orbit meadow".split()


def _frame(n_queries: int = 2, n_docs: int = 4, seed: int = 0) -> pd.DataFrame:
    rng = random.Random(seed)
    rows = [(f"q{q}", " ".join(rng.sample(WORDS, 2)), f"q{q}d{d}", " ".join(rng.choices(WORDS, k=rng.randint(2, 9))))
            for q in range(n_queries) for d in range(n_docs)]
    return pd.DataFrame(rows, columns=["qid", "query", "docno", "text"])


def _model(path, seed: int = 0, **kwargs) -> PGRankCrossEncoder:
    torch.manual_seed(seed)  # the fresh scoring head
    return PGRankCrossEncoder.from_pretrained(path, device="cpu", **kwargs)


def _hf_scores(model, tokenizer, frame: pd.DataFrame) -> torch.Tensor:
    """Reference scores: each pair on its own through the Hugging Face model, in eval mode."""
    model.eval()
    with torch.no_grad():
        return torch.stack([model(**tokenizer(q, t, return_tensors="pt")).logits[0, 0]
                            for q, t in zip(frame["query"], frame["text"])])


def _batch(frame: pd.DataFrame):
    qrels = frame[["qid", "docno"]].assign(label=1)
    return collate(build_candidate_sets(frame, qrels, require_text=True))


def test_transform_scores_and_ranks(tiny_bert_dir):
    ranker = _model(tiny_bert_dir, batch_size=3)
    frame = _frame(n_queries=3, n_docs=5)
    res = ranker(frame)
    assert len(res) == len(frame) and {"qid", "query", "docno", "text", "score", "rank"} <= set(res.columns)
    res = res.set_index("docno").loc[frame["docno"]]
    torch.testing.assert_close(torch.tensor(res["score"].to_numpy(), dtype=torch.float32),
                               _hf_scores(ranker.model, ranker.tokenizer, frame), atol=1e-5, rtol=1e-4)
    for _, group in res.groupby("qid"):
        assert group.sort_values("rank")["score"].is_monotonic_decreasing
        assert sorted(group["rank"]) == list(range(len(group)))


def test_transform_empty_and_missing_text(tiny_bert_dir):
    ranker = _model(tiny_bert_dir)
    empty = ranker(_frame().iloc[:0])
    assert len(empty) == 0 and {"score", "rank"} <= set(empty.columns)
    with pytest.raises(KeyError, match="text"):
        ranker(_frame().drop(columns=["text"]))


def test_from_pretrained_keeps_head_and_rejects_many_outputs(tiny_bert_dir, tmp_path):
    torch.manual_seed(1)
    classifier = BertForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=1)
    classifier.save_pretrained(tmp_path / "one")
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    tokenizer.save_pretrained(tmp_path / "one")
    frame = _frame()
    torch.testing.assert_close(torch.tensor(_model(tmp_path / "one")(frame)["score"].to_numpy(), dtype=torch.float32),
                               _hf_scores(classifier, tokenizer, frame), atol=1e-5, rtol=1e-4)
    BertForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=3).save_pretrained(tmp_path / "three")
    with pytest.raises(ValueError, match="num_labels=3"):
        PGRankCrossEncoder.from_pretrained(tmp_path / "three")
    with pytest.raises(ValueError, match="max_length"):
        PGRankCrossEncoder.from_pretrained(tiny_bert_dir, max_length=4096)


def test_save_round_trip_identical_scores_across_loaders(tiny_bert_dir, tmp_path):
    from sentence_transformers import CrossEncoder

    ranker, frame = _model(tiny_bert_dir, seed=3), _frame(n_queries=2, n_docs=3)
    expected = torch.tensor(ranker(frame)["score"].to_numpy(), dtype=torch.float32)
    ranker.save(tmp_path / "saved")
    assert not list((tmp_path / "saved").glob("*.bin")) and (tmp_path / "saved" / "model.safetensors").is_file()

    loaded = {
        "from_pretrained": PGRankCrossEncoder.from_pretrained(tmp_path / "saved")(frame)["score"],
        "artifact": pt.Artifact.load(str(tmp_path / "saved"))(frame)["score"],
    }
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "saved")
    loaded["transformers"] = _hf_scores(hf, AutoTokenizer.from_pretrained(tmp_path / "saved"), frame)
    st = CrossEncoder(str(tmp_path / "saved"), device="cpu")
    loaded["sentence_transformers"] = st.predict(list(zip(frame["query"], frame["text"])), convert_to_tensor=True)
    for name, scores in loaded.items():
        scores = torch.as_tensor(scores.to_numpy() if hasattr(scores, "to_numpy") else scores, dtype=torch.float32)
        torch.testing.assert_close(scores, expected, atol=1e-6, rtol=1e-5, msg=name)


def test_pgrank_backward_matches_full_autograd(tiny_bert_dir):
    ranker = _model(tiny_bert_dir, batch_size=3)
    frame = _frame(n_queries=3, n_docs=6).iloc[:-2]  # the last query has 4 candidates: padding
    batch = _batch(frame)
    doc_weights = torch.randn(batch.mask.shape, generator=torch.Generator().manual_seed(0))

    # reference: every real pair in one forward pass with graph
    index = batch.mask.nonzero()
    inputs = ranker.tokenizer([batch.queries[q] for q, _ in index.tolist()],
                              [batch.texts[q][n] for q, n in index.tolist()], padding=True, return_tensors="pt")
    ranker.model.eval()
    scores = ranker.model(**inputs).logits[:, 0]
    (doc_weights[index[:, 0], index[:, 1]] * scores).sum().backward()
    expected = {name: p.grad.clone() for name, p in ranker.model.named_parameters()}

    ranker.model.zero_grad(set_to_none=True)
    ranker.model.train()  # the hooks switch dropout off themselves
    ranker._pgrank_backward(batch, doc_weights)
    for name, p in ranker.model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], atol=1e-6, rtol=1e-4, msg=name)

    hook_scores = ranker._pgrank_scores(batch)
    assert (hook_scores[~batch.mask] == 0).all()
    torch.testing.assert_close(hook_scores[batch.mask], scores.detach(), atol=1e-5, rtol=1e-4)


class _Saved:
    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor


class _SavedTensorMeter:
    """Peak bytes of tensor storage held by autograd graphs for backward, counting shared storage once."""

    def __init__(self) -> None:
        self.live = self.peak = 0
        self.counts: dict[int, list[int]] = {}

    def pack(self, tensor: torch.Tensor):
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        entry = self.counts.setdefault(key, [0, storage.nbytes()])
        if entry[0] == 0:
            self.live += entry[1]
            self.peak = max(self.peak, self.live)
        entry[0] += 1
        saved = _Saved(tensor)
        weakref.finalize(saved, self._release, key)
        return saved

    def _release(self, key: int) -> None:
        entry = self.counts[key]
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self.counts[key]

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda saved: saved.tensor)


def test_training_step_memory_does_not_grow_with_candidates(tiny_bert_dir):
    def peak_bytes(n_candidates: int, batch_size: int) -> int:
        ranker = _model(tiny_bert_dir, batch_size=batch_size)
        frame = _frame(n_queries=1, n_docs=n_candidates)
        qrels = frame[["qid", "docno"]].head(3).assign(label=1)
        meter = _SavedTensorMeter()
        with meter.hooks():
            ranker.fit(frame, qrels, max_steps=1, queries_per_step=1, n_samples=4)
        return meter.peak

    small, large = peak_bytes(40, batch_size=20), peak_bytes(400, batch_size=20)
    assert large < 1.25 * small, (small, large)
    # the meter sees growth when the whole candidate set is one chunk
    assert peak_bytes(400, batch_size=400) > 5 * small


def _learnable_task(n_queries: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each query is a word; its relevant documents contain the marker word 'gold', the others do not."""
    rng = random.Random(seed)
    rows, qrels = [], []
    for q in range(n_queries):
        qid, query = f"{seed}-{q}", rng.choice(WORDS)
        for d in range(12):
            words = rng.choices(WORDS, k=rng.randint(3, 7))
            if d < 2:
                words.insert(rng.randint(0, len(words)), "gold")
                qrels.append((qid, f"{qid}-{d}", 1))
            rows.append((qid, query, f"{qid}-{d}", " ".join(words)))
    frame = pd.DataFrame(rows, columns=["qid", "query", "docno", "text"]).sample(frac=1.0, random_state=seed)
    return frame, pd.DataFrame(qrels, columns=["qid", "docno", "label"])


def _ndcg10(ranker, frame: pd.DataFrame, qrels: pd.DataFrame) -> float:
    names = {"qid": "query_id", "docno": "doc_id", "label": "relevance"}
    run = ranker(frame)[["qid", "docno", "score"]].rename(columns=names)
    return ir_measures.calc_aggregate([ir_measures.nDCG @ 10], qrels.rename(columns=names), run)[ir_measures.nDCG @ 10]


def test_pipeline_fit_learns_task(tiny_bert_dir):
    train, train_qrels = _learnable_task(16, seed=1)
    test, test_qrels = _learnable_task(8, seed=2)
    ranker = _model(tiny_bert_dir, batch_size=48, training_settings={"lr": 3e-3, "max_steps": 30,
                                                                      "queries_per_step": 4, "warmup": 0})
    before = _ndcg10(ranker, test, test_qrels)
    first_stage = pt.Transformer.from_df(train)
    (first_stage >> ranker).fit(train[["qid", "query"]].drop_duplicates(), train_qrels)
    after = _ndcg10(ranker, test, test_qrels)
    assert after > before + 0.2, (before, after)
    assert len(ranker.training_history.train) > 0


def test_validated_fit_leaves_the_model_in_eval_mode(tiny_bert_dir):
    train, train_qrels = _learnable_task(4, seed=3)
    ranker = _model(tiny_bert_dir)
    ranker.fit(train, train_qrels, train, train_qrels, max_steps=1, eval_every=1, queries_per_step=4)
    assert not ranker.model.training


def test_fit_pointwise_step_matches_manual_bce_step(tiny_bert_dir):
    frame, qrels = _learnable_task(2, seed=3)
    settings = {"lr": 1e-3, "max_steps": 1, "queries_per_step": 2, "warmup": 0, "max_grad_norm": None}
    ranker = fit_pointwise(_model(tiny_bert_dir, batch_size=5), frame, qrels, **settings)

    # reference: the gradient of the mean BCE of every pair, then one AdamW step
    reference = _model(tiny_bert_dir)
    labels = frame.merge(qrels, how="left")["label"].fillna(0).to_numpy()
    inputs = reference.tokenizer(frame["query"].tolist(), frame["text"].tolist(), padding=True, return_tensors="pt")
    reference.model.eval()
    logits = reference.model(**inputs).logits[:, 0]
    torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor(labels, dtype=torch.float32)).backward()
    torch.optim.AdamW(reference.model.parameters(), lr=1e-3, weight_decay=0.01).step()
    for (name, p), q in zip(ranker.model.named_parameters(), reference.model.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-7, rtol=1e-4, msg=name)  # left by the trainer
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5, msg=name)


def test_pointwise_bce_loss_matches_reference():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 5, generator=generator, requires_grad=True)
    labels = torch.tensor([[2.0, 0, 1, 0, 0], [0, 0, 1, 0, 0]])
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    loss, utility = pointwise_bce_loss(scores, labels, mask, utility="nDCG@10", return_utility=True,
                                       estimator="plrank", n_samples=4)
    p, y = torch.sigmoid(scores[mask]), (labels[mask] > 0).float()
    torch.testing.assert_close(loss, -(y * p.log() + (1 - y) * (1 - p).log()).mean())
    run = pd.DataFrame([(str(q), str(n), float(scores[q, n])) for q, n in mask.nonzero().tolist()],
                       columns=["query_id", "doc_id", "score"])
    qrels = pd.DataFrame([(str(q), str(n), int(labels[q, n])) for q, n in mask.nonzero().tolist()],
                         columns=["query_id", "doc_id", "relevance"])
    expected = {m.query_id: m.value for m in ir_measures.iter_calc([ir_measures.nDCG @ 10], qrels, run)}
    torch.testing.assert_close(utility, torch.tensor([expected["0"], expected["1"]], dtype=torch.float32))


def test_fit_surfaces_bad_inputs(tiny_bert_dir):
    ranker = _model(tiny_bert_dir)
    frame = _frame()
    qrels = frame[["qid", "docno"]].head(2).assign(label=1)
    with pytest.raises(ValueError, match="text"):
        ranker.fit(frame.drop(columns=["text"]), qrels, max_steps=1)
    with pytest.raises(ValueError, match="duplicate"):
        ranker.fit(pd.concat([frame, frame.head(1)]), qrels, max_steps=1)
