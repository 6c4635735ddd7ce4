"""Tests for the experiment utilities: dataset loading, Cranfield grades, cached BM25 and dev splits."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from pyterrier_pgrank.experiments import CRANFIELD_GRADES, TextLoader, load_dataset, split_topics

DOCS = {
    "d1": ("Photosynthesis", "Plants convert light into chemical energy."),
    "d2": ("", "Mitochondria are the powerhouse of the cell."),
    "d3": ("Black holes", "Black holes bend light strongly."),
    "d4": ("Volcanoes", "Magma erupts from volcanoes as lava."),
}
QUERIES = {"q1": "how do plants use light", "q2": "what erupts from a volcano", "q3": "an unjudged query"}


@pytest.fixture
def beir_folder(tmp_path) -> Path:
    """A four-document BEIR-format folder with a test split (graded) and a train split."""
    folder = tmp_path / "tiny-beir"
    (folder / "qrels").mkdir(parents=True)
    with open(folder / "corpus.jsonl", "w") as fout:
        for docno, (title, text) in DOCS.items():
            fout.write(json.dumps({"_id": docno, "title": title, "text": text}) + "\n")
    with open(folder / "queries.jsonl", "w") as fout:
        for qid, query in QUERIES.items():
            fout.write(json.dumps({"_id": qid, "text": query}) + "\n")
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t2\nq2\td4\t1\nq2\td3\t0\n")
    (folder / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq2\td4\t1\n")
    return folder


def test_load_dataset_beir_folder_reads_topics_qrels_and_texts(beir_folder):
    dataset = load_dataset(str(beir_folder))

    assert dataset.topics.to_dict("records") == [
        {"qid": "q1", "query": QUERIES["q1"]}, {"qid": "q2", "query": QUERIES["q2"]},
    ]  # q3 has no qrels in the test split
    assert dataset.qrels.to_dict("records") == [
        {"qid": "q1", "docno": "d1", "label": 2}, {"qid": "q2", "docno": "d4", "label": 1},
        {"qid": "q2", "docno": "d3", "label": 0},
    ]
    texts = {doc["docno"]: doc["text"] for doc in dataset.corpus_iter()}
    assert texts["d1"] == "Photosynthesis Plants convert light into chemical energy."
    assert texts["d2"] == DOCS["d2"][1]  # an empty title adds nothing


def test_load_dataset_split_by_argument_or_suffix(beir_folder):
    by_argument = load_dataset(str(beir_folder), split="train")
    by_suffix = load_dataset(f"{beir_folder}:train")
    assert by_argument.topics["qid"].tolist() == by_suffix.topics["qid"].tolist() == ["q2"]
    assert by_argument.corpus_id == by_suffix.corpus_id == load_dataset(str(beir_folder)).corpus_id


def test_load_dataset_grade_map_replaces_labels(beir_folder):
    dataset = load_dataset(str(beir_folder), grade_map={2: 5, 0: -3})
    assert dataset.qrels["label"].tolist() == [5, 1, -3]


def test_load_dataset_bad_names_raise(beir_folder, tmp_path):
    with pytest.raises(ValueError, match="corpus.jsonl"):
        load_dataset(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="split 'dev'"):
        load_dataset(str(beir_folder), split="dev")


def test_cranfield_grades_reverse_cleverdon_codes():
    # Cleverdon's codes: 1 complete answer, 2 high relevance, 3 useful, 4 minimum interest; -1 no interest.
    codes_best_first = [1, 2, 3, 4, -1]
    gains = [CRANFIELD_GRADES[code] for code in codes_best_first]
    assert gains == sorted(gains, reverse=True) and len(set(gains)) == len(gains)
    assert CRANFIELD_GRADES[-1] == 0 and all(CRANFIELD_GRADES[code] > 0 for code in (1, 2, 3, 4))


def test_bm25_ranks_matching_document_first_and_reuses_index(beir_folder, tmp_path):
    dataset = load_dataset(str(beir_folder))
    res = (dataset.bm25(10, cache_dir=tmp_path / "cache") >> dataset.text_loader())(dataset.topics)

    top = res.sort_values(["qid", "rank"]).groupby("qid").head(1).set_index("qid")
    assert top.loc["q1", "docno"] == "d1" and top.loc["q2", "docno"] == "d4"
    assert res.set_index("docno")["text"].to_dict()["d4"] == "Volcanoes Magma erupts from volcanoes as lava."

    index_dirs = list((tmp_path / "cache" / "pisa").iterdir())
    stamp = (index_dirs[0] / "pt_meta.json").stat().st_mtime_ns
    dataset.bm25(10, cache_dir=tmp_path / "cache")
    assert len(index_dirs) == 1 and (index_dirs[0] / "pt_meta.json").stat().st_mtime_ns == stamp


def test_dense_index_encodes_corpus_once_and_replaces_incomplete_folder(beir_folder, tmp_path, tiny_bert_dir):
    from pyterrier_pgrank import PGRankBiEncoder

    dataset = load_dataset(str(beir_folder))
    encoder = PGRankBiEncoder.from_pretrained(str(tiny_bert_dir), max_length=32)
    path = tmp_path / "dense"
    path.mkdir()  # a folder left by an interrupted run: not a complete index
    index = dataset.dense_index(encoder, path, verbose=False)
    assert len(index) == sum(1 for _ in dataset.corpus_iter())
    stamp = (path / "pt_meta.json").stat().st_mtime_ns
    dataset.dense_index(encoder, path, verbose=False)  # complete now: reused, not rewritten
    assert (path / "pt_meta.json").stat().st_mtime_ns == stamp
    res = (encoder.query_encoder() >> index.retriever(num_results=3))(dataset.topics)
    assert set(res["docno"]) <= {d["docno"] for d in dataset.corpus_iter()} and len(res) > 0


def test_text_loader_warns_on_unknown_docno():
    res = pd.DataFrame({"qid": ["q1", "q1"], "docno": ["a", "zz"], "score": [2.0, 1.0]})
    with pytest.warns(UserWarning, match="1 of 2 docnos"):
        out = TextLoader({"a": "alpha"})(res)
    assert out["text"].tolist() == ["alpha", ""]


def test_split_topics_disjoint_complete_and_order_independent():
    topics = pd.DataFrame({"qid": [str(i) for i in range(50)], "query": [f"query {i}" for i in range(50)]})
    train, dev = split_topics(topics, 0.2, seed=3)
    assert len(dev) == 10 and len(train) == 40
    assert set(train["qid"]).isdisjoint(dev["qid"]) and set(train["qid"]) | set(dev["qid"]) == set(topics["qid"])

    shuffled = topics.sample(frac=1.0, random_state=7)
    assert set(split_topics(shuffled, 0.2, seed=3)[1]["qid"]) == set(dev["qid"])
    assert set(split_topics(topics, 0.2, seed=4)[1]["qid"]) != set(dev["qid"])


def test_split_topics_rejects_bad_input():
    topics = pd.DataFrame({"qid": ["1", "2"], "query": ["a", "b"]})
    with pytest.raises(ValueError, match="dev_fraction"):
        split_topics(topics, 1.0)
    with pytest.raises(ValueError, match="at least 2"):
        split_topics(topics.head(1), 0.5)
    train, dev = split_topics(topics, 0.01)  # rounds up to one dev topic, never to an empty side
    assert len(train) == len(dev) == 1


@pytest.fixture
def datasets_home(ir_datasets_home) -> Path:
    """``ir_datasets_home``, skipping when ir_datasets was imported before it (its paths are then elsewhere)."""
    import ir_datasets

    if Path(ir_datasets_home) not in Path(ir_datasets.load("cranfield").docs_path(force=False)).parents:
        pytest.skip("ir_datasets was imported before IR_DATASETS_HOME was set; export it before running pytest")
    return ir_datasets_home


@pytest.mark.data
def test_cranfield_labels_mapped_from_raw_codes(datasets_home):
    import ir_datasets

    raw = pd.DataFrame([(q.query_id, q.doc_id, q.relevance) for q in ir_datasets.load("cranfield").qrels_iter()],
                       columns=["qid", "docno", "code"])
    dataset = load_dataset("irds:cranfield")
    merged = raw.merge(dataset.qrels, on=["qid", "docno"])
    assert len(merged) == len(raw) == len(dataset.qrels)
    assert (merged["label"] == merged["code"].map(CRANFIELD_GRADES)).all()
    assert set(dataset.qrels["label"]) <= {0, 1, 2, 3, 4}


@pytest.mark.data
def test_scifact_test_topics_and_corpus(datasets_home):
    dataset = load_dataset("irds:beir/scifact/test")
    assert len(dataset.topics) == 300 and set(dataset.topics["qid"]) == set(dataset.qrels["qid"])
    assert dataset.corpus_id == "irds:beir/scifact"
    assert sum(1 for _ in dataset.corpus_iter()) == 5183
