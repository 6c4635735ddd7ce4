"""Experiment utilities: test collections, cached BM25 first stages and reproducible dev splits.

The benchmarks and examples share these helpers so that every model is trained and evaluated on the same
topics, qrels, documents and BM25 candidates:

- :func:`load_dataset` reads a collection by ``irds:`` id (through :func:`pyterrier.get_dataset`) or from a
  local BEIR-format folder into a :class:`RetrievalDataset` with ``topics`` (``qid, query``), ``qrels``
  (``qid, docno, label``) and a corpus iterator of ``{'docno', 'text'}`` dicts;
- :meth:`RetrievalDataset.bm25` builds (once) and reuses a PISA index in a cache folder;
- :meth:`RetrievalDataset.text_loader` adds the ``text`` column, so ``bm25 % 100 >> text`` works offline;
- :func:`split_topics` carves a dev split out of training topics, identically on every run.

Cranfield's relevance codes run the opposite way to ir_measures' gains. Cleverdon's scale, kept in the
qrels, is 1 = a complete answer, 2 = a high degree of relevance, 3 = useful background, 4 = minimum
interest, and the collection adds -1 for judged documents of no interest. ir_measures treats larger labels
as better (and ``label > 0`` as relevant), so :data:`CRANFIELD_GRADES` maps 1->4, 2->3, 3->2, 4->1 and
-1->0; without it graded measures such as nDCG reward the least useful references most.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pyterrier as pt
import pyterrier_alpha as pta

logger = logging.getLogger(__name__)

#: Cranfield's codes (1 best .. 4 least, -1 none) as ir_measures gains (larger is better, 0 not relevant).
CRANFIELD_GRADES: dict[int, int] = {1: 4, 2: 3, 3: 2, 4: 1, -1: 0}

#: Label maps applied by :func:`load_dataset`, keyed by the ``irds:`` id of a collection's documents.
GRADE_MAPS: dict[str, dict[int, int]] = {"cranfield": CRANFIELD_GRADES}


def default_cache_dir() -> Path:
    """The folder for indexes and other derived files: ``$PGRANK_CACHE`` or ``~/.cache/pyterrier-pgrank``."""
    return Path(os.environ.get("PGRANK_CACHE", Path.home() / ".cache" / "pyterrier-pgrank"))


@dataclass
class RetrievalDataset:
    """A test collection: topics, qrels and a corpus, with a cached BM25 first stage.

    Attributes:
        name: The name it was loaded by (``irds:beir/scifact/test`` or a folder path with its split).
        corpus_id: Identifies the document collection; datasets sharing documents share a BM25 index.
        topics: ``qid, query`` (strings), one row per topic that has qrels.
        qrels: ``qid, docno, label`` with integer labels, larger is more relevant, ``<= 0`` not relevant.
    """

    name: str
    corpus_id: str
    topics: pd.DataFrame = field(repr=False)
    qrels: pd.DataFrame = field(repr=False)
    _docs: Callable[[], Iterator[dict]] = field(repr=False)
    _texts: dict[str, str] | None = field(default=None, repr=False)

    def corpus_iter(self) -> Iterator[dict[str, str]]:
        """Yields each document once as ``{'docno': ..., 'text': ...}``."""
        return self._docs()

    def texts(self) -> dict[str, str]:
        """All document texts by docno, read once and kept in memory."""
        if self._texts is None:
            self._texts = {doc["docno"]: doc["text"] for doc in self.corpus_iter()}
        return self._texts

    def text_loader(self) -> pt.Transformer:
        """A transformer that adds each result's document ``text`` (see :class:`TextLoader`)."""
        return TextLoader(self.texts())

    def bm25_index(self, cache_dir: str | Path | None = None, *, threads: int = 1):
        """The PISA index of the corpus, built on first use in ``cache_dir/pisa`` and reused afterwards.

        The index is written to a temporary folder and moved into place when complete, so an interrupted
        build never leaves a half-written index behind to be reused.
        """
        from pyterrier_pisa import PisaIndex

        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.corpus_id)
        path = Path(cache_dir or default_cache_dir()) / "pisa" / safe
        if not PisaIndex(str(path)).built():
            tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.parent.mkdir(parents=True, exist_ok=True)
            logger.info("building the PISA index of %s in %s", self.corpus_id, path)
            PisaIndex(str(tmp), text_field="text", threads=threads).index(self.corpus_iter())
            shutil.rmtree(path, ignore_errors=True)
            os.replace(tmp, path)
        return PisaIndex(str(path), threads=threads)

    def bm25(
        self, num_results: int = 100, *, k1: float = 0.9, b: float = 0.4, cache_dir: str | Path | None = None,
        threads: int = 1, verbose: bool = False,
    ) -> pt.Transformer:
        """A BM25 retriever (pyterrier-pisa, Porter2 stemming, Terrier stopwords) over the cached index."""
        index = self.bm25_index(cache_dir, threads=threads)
        return index.bm25(k1=k1, b=b, num_results=num_results, threads=threads, verbose=verbose)

    def dense_index(self, encoder: pt.Transformer, path: str | Path, *, reuse: bool = True, verbose: bool = True):
        """A pyterrier-dr ``FlexIndex`` at ``path`` of the corpus encoded by ``encoder``'s document tower.

        The corpus is encoded into a temporary folder that replaces ``path`` once complete, so an interrupted
        run never leaves a truncated index behind to be reused.

        Args:
            encoder: A pyterrier-dr ``BiEncoder``; its ``doc_encoder()`` fills the index.
            path: The index folder.
            reuse: Keep an index already complete at ``path`` (``False``: encode again, e.g. after training).
            verbose: Progress bar while encoding.
        """
        from pyterrier_dr import FlexIndex

        path = Path(path)
        if not (reuse and dense_index_complete(path)):
            logger.info("encoding %s with %r into %s", self.corpus_id, encoder, path)
            tmp = path.with_name(path.name + ".tmp")
            indexer = FlexIndex(str(tmp), verbose=verbose).indexer(mode="overwrite")
            (encoder.doc_encoder() >> indexer).index(self.corpus_iter())
            shutil.rmtree(path, ignore_errors=True)
            os.replace(tmp, path)
        return FlexIndex(str(path), verbose=verbose)


def dense_index_complete(path: str | Path) -> bool:
    """Whether a ``FlexIndex`` folder was completely written (``FlexIndex.built`` only checks that it exists)."""
    return (Path(path) / "pt_meta.json").is_file()


class TextLoader(pt.Transformer):
    """Adds the ``text`` column to a result frame from an in-memory ``docno -> text`` mapping.

    .. note::
        The whole corpus is held in memory, which suits the benchmark collections (SciFact, Vaswani,
        Cranfield: a few MB). For large corpora use the dataset's own ``pt.text.get_text`` loader.
    """

    def __init__(self, texts: Mapping[str, str]):
        self.texts = texts

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        pta.validate.columns(inp, includes=["docno"])
        texts = inp["docno"].map(self.texts)
        missing = int(texts.isna().sum())
        if missing:
            warnings.warn(f"{missing} of {len(inp)} docnos are not in the corpus; their text is left empty.",
                          stacklevel=2)
        return inp.assign(text=texts.fillna("").astype(str))

    def __repr__(self) -> str:
        return f"TextLoader({len(self.texts)} documents)"


def load_dataset(name: str, *, split: str | None = None,
                 grade_map: Mapping[int, int] | None = None) -> RetrievalDataset:
    """Loads a test collection by ``irds:`` id or from a local BEIR-format folder.

    Args:
        name: ``irds:<id>`` (e.g. ``irds:beir/scifact/train``), or the path of a BEIR folder
            (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``), optionally as ``<path>:<split>``.
        split: The qrels split of a BEIR folder (default ``test``); not used with ``irds:`` ids.
        grade_map: Replaces labels (``{old: new}``); by default :data:`GRADE_MAPS` applies to known
            collections (Cranfield). Labels absent from the map are kept.

    Returns:
        The dataset, with topics restricted to those that have qrels.

    Raises:
        ValueError: If ``name`` is neither an ``irds:`` id nor a BEIR folder.
    """
    if name.startswith("irds:"):
        dataset = _load_irds(name[len("irds:"):])
    else:
        path, folder_split = Path(name), None
        if not path.is_dir() and ":" in name:
            path, folder_split = Path(name.rsplit(":", 1)[0]), name.rsplit(":", 1)[1]
        if not (path / "corpus.jsonl").is_file():
            raise ValueError(f"Expected an 'irds:' id or a BEIR folder with corpus.jsonl, got {name!r}.")
        dataset = _load_beir_folder(path, split or folder_split or "test")
    grade_map = GRADE_MAPS.get(dataset.corpus_id.removeprefix("irds:")) if grade_map is None else grade_map
    if grade_map:
        dataset.qrels = dataset.qrels.assign(label=dataset.qrels["label"].map(lambda g: grade_map.get(g, g)))
    judged = set(dataset.qrels["qid"])
    dataset.topics = dataset.topics[dataset.topics["qid"].isin(judged)].reset_index(drop=True)
    return dataset


def _join_title(title: str, text: str) -> str:
    """``title text``, dropping a title that is empty or that the text already starts with (Cranfield)."""
    title, text = (title or "").strip(), (text or "").strip()
    return text if not title or text.startswith(title) else f"{title} {text}"


def _load_irds(irds_id: str) -> RetrievalDataset:
    import ir_datasets

    dataset = pt.get_dataset(f"irds:{irds_id}")
    topics = dataset.get_topics()[["qid", "query"]].astype(str)
    qrels = dataset.get_qrels()[["qid", "docno", "label"]].astype({"qid": str, "docno": str, "label": int})

    def docs() -> Iterator[dict]:
        for doc in ir_datasets.load(irds_id).docs_iter():
            yield {"docno": str(doc.doc_id),
                   "text": _join_title(getattr(doc, "title", ""), getattr(doc, "text", ""))}

    return RetrievalDataset(f"irds:{irds_id}", f"irds:{ir_datasets.docs_parent_id(irds_id)}", topics, qrels, docs)


def _load_beir_folder(path: Path, split: str) -> RetrievalDataset:
    qrels_file = path / "qrels" / f"{split}.tsv"
    if not qrels_file.is_file():
        raise ValueError(f"Expected qrels for split {split!r} at {qrels_file}, but the file does not exist.")
    qrels = pd.read_csv(qrels_file, sep="\t", dtype=str)
    qrels = pd.DataFrame({"qid": qrels.iloc[:, 0], "docno": qrels.iloc[:, 1], "label": qrels.iloc[:, 2].astype(int)})
    with open(path / "queries.jsonl", encoding="utf8") as fin:
        queries = [json.loads(line) for line in fin if line.strip()]
    topics = pd.DataFrame({"qid": [str(q["_id"]) for q in queries], "query": [q["text"] for q in queries]})

    def docs() -> Iterator[dict]:
        with open(path / "corpus.jsonl", encoding="utf8") as fin:
            for line in fin:
                if line.strip():
                    doc = json.loads(line)
                    yield {"docno": str(doc["_id"]), "text": _join_title(doc.get("title", ""), doc.get("text", ""))}

    stat = (path / "corpus.jsonl").stat()
    digest = hashlib.sha1(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return RetrievalDataset(f"{path}:{split}", f"beir-{path.resolve().name}-{digest}", topics, qrels, docs)


def split_topics(topics: pd.DataFrame, dev_fraction: float = 0.2, *,
                 seed: int = 42) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Splits topics into a training part and a dev part for choosing hyperparameters.

    The split depends only on the set of qids, the fraction and the seed, not on the frame's row order,
    so every run (and every script) carves the same dev topics.

    Args:
        topics: A frame with a ``qid`` column (other columns are kept).
        dev_fraction: The share of topics held out, in (0, 1); at least one topic goes to each side.
        seed: Seeds the permutation.

    Returns:
        ``(train_topics, dev_topics)``, disjoint, each in the input's row order.

    Raises:
        ValueError: For a fraction outside (0, 1) or fewer than two distinct topics.
    """
    if not 0 < dev_fraction < 1:
        raise ValueError(f"Expected dev_fraction in (0, 1), got {dev_fraction}.")
    qids = np.array(sorted(topics["qid"].astype(str).unique()))
    if len(qids) < 2:
        raise ValueError(f"Expected at least 2 distinct topics to split, got {len(qids)}.")
    n_dev = min(max(1, round(dev_fraction * len(qids))), len(qids) - 1)
    dev_qids = set(qids[np.random.default_rng(seed).permutation(len(qids))[:n_dev]])
    is_dev = topics["qid"].astype(str).isin(dev_qids)
    return topics[~is_dev].reset_index(drop=True), topics[is_dev].reset_index(drop=True)
