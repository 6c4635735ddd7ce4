"""Ranking quality of PG-Rank fine-tuning against BM25, zero-shot MiniLM and the contrastive recipe.

One run trains the selected systems on the training topics (hyperparameters chosen on a dev split carved
from them), then evaluates every system with ``pt.Experiment`` on the evaluation topics, with paired
t-tests against BM25 (Holm-corrected), and, evaluation only, on out-of-domain collections.

Systems (``--systems``): ``bm25``; ``zeroshot`` (all-MiniLM-L6-v2 re-ranking BM25 and as a dense
retriever); ``mnrl`` (sentence-transformers ``MultipleNegativesRankingLoss`` with in-batch and BM25 hard
negatives from the same candidate sets, same epochs); ``pg-<towers>-<estimator>`` for towers ``query`` /
``both`` and estimators ``plrank`` / ``reinforce``; ``pg-query-reinforce-rr10``, trained for RR@10 (not a
sum of per-place gains, so REINFORCE); ``ce-pgrank`` and ``ce-pointwise`` (cross-encoders from the MiniLM
body, re-ranking BM25's top ``--ce-depth``).

Bi-encoders are evaluated from stored vectors: each distinct document is encoded once per document
tower into a ``FlexIndex`` (query-tower-only models share the zero-shot index, since their document tower
is the untouched MiniLM), which serves both BM25 re-ranking (``index.scorer()``) and dense retrieval.

A run can be stopped and started again: every trained model is saved in the work folder with a record of
its training, and every system's ranking of each collection is written there as a TREC run file, so a
second invocation with the same settings trains and ranks only what is missing (``--fresh`` starts over).
The work folder is named after the settings every system shares, so a run with other such settings never
picks up these models; a model whose own family's settings (learning rates, candidate depths) changed is
trained again, and its rankings computed again. Significance tests always compare the systems of one
invocation side by side on the same topics, wherever their rankings were computed.

Example: ``python benchmarks/effectiveness.py --systems bm25 zeroshot pg-query-plrank``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import _baselines as baselines
import _common as common
import _report as tables
import pyterrier as pt

logger = logging.getLogger("effectiveness")
SYSTEMS = ("bm25", "zeroshot", "mnrl", "pg-query-plrank", "pg-query-reinforce", "pg-both-plrank",
           "pg-both-reinforce", "pg-query-reinforce-rr10", "ce-pgrank", "ce-pointwise")


def measures():
    from ir_measures import AP, RR, R, nDCG

    return [nDCG @ 10, RR @ 10, R @ 100, AP]


class Collections:
    """The collections of a run, each with its BM25 retriever, text loader and per-model document indexes."""

    def __init__(self, args):
        from pyterrier_pgrank.experiments import load_dataset

        self.args = args
        self.datasets = {name: load_dataset(name) for name in dict.fromkeys([args.train, args.eval, *args.ood])}
        self._indexes: dict[tuple[str, str], object] = {}

    def bm25(self, name: str, depth: int | None = None) -> pt.Transformer:
        return self.datasets[name].bm25(depth or self.args.depth)

    def text(self, name: str) -> pt.Transformer:
        return self.datasets[name].text_loader()

    def index(self, doc_key: str, encoder, name: str):
        """The ``FlexIndex`` of collection ``name`` by the document tower ``doc_key`` (built once per run).

        ``'zeroshot'`` is MiniLM itself, whose indexes persist in the cache folder across runs; any other
        key names a model trained with this run's settings, whose indexes persist in the work folder until
        the model is trained again (:meth:`forget`).
        """
        dataset = self.datasets[name]
        key = (doc_key, dataset.corpus_id)
        if key not in self._indexes:
            if doc_key == "zeroshot":
                _, index = common.zero_shot_index(self.args.model, dataset, batch_size=self.args.batch_size,
                                                  max_length=self.args.max_length)
            else:
                index = dataset.dense_index(encoder, self._index_path(doc_key, dataset.corpus_id))
            self._indexes[key] = index
        return self._indexes[key]

    def _index_path(self, doc_key: str, corpus_id: str) -> Path:
        return self.args.work / "indexes" / f"{doc_key}-{common.safe_name(corpus_id)}"

    def forget(self, doc_key: str) -> None:
        """Deletes the indexes of a document tower about to be trained (again)."""
        for dataset in self.datasets.values():
            self._indexes.pop((doc_key, dataset.corpus_id), None)
            shutil.rmtree(self._index_path(doc_key, dataset.corpus_id), ignore_errors=True)


def biencoder_pipelines(label: str, encoder, doc_key: str, collections: Collections, name: str) -> dict:
    """BM25 re-ranked from a bi-encoder's stored vectors, and dense retrieval, on collection ``name``.

    Returns:
        Pipeline name -> function building the pipeline, so that an index is built only for a ranking
        that is not stored yet.
    """

    def rerank():
        index = collections.index(doc_key, encoder, name)
        return collections.bm25(name) >> encoder.query_encoder() >> index.scorer()

    def dense():
        index = collections.index(doc_key, encoder, name)
        return encoder.query_encoder() >> index.retriever(num_results=collections.args.depth)

    return {f"BM25 >> {label}": rerank, f"{label} dense": dense}


def stored_run(path: Path, build: Callable[[], pt.Transformer], topics) -> object:
    """The ranking of ``topics`` stored at ``path`` (TREC format), computed by ``build()`` when missing."""
    if path.exists():
        logger.info("reusing %s", path)
        return pt.io.read_results(str(path))
    res = build()(topics)
    tmp = path.with_name(path.name + ".tmp.gz")
    path.parent.mkdir(parents=True, exist_ok=True)
    pt.io.write_results(res, str(tmp))
    tmp.replace(path)
    return res


def train_mnrl(args, data: dict, collections: Collections) -> tuple[object, str, dict]:
    """The contrastive baseline once per learning rate of ``--lrs``; keeps the best dev nDCG@10.

    PG-Rank validates on the dev candidate sets as it trains; MNRL has no such loop, so each trained model
    encodes the training corpus into its own index and re-ranks the dev topics' BM25 candidates from it.
    The chosen model's index then serves the evaluation when the evaluation collection shares the corpus.

    Returns:
        The chosen model, the key of its document index, and a record of every run.
    """
    from ir_measures import nDCG
    from pyterrier_dr import SBertBiEncoder

    dev_qrels = data["qrels"][data["qrels"]["qid"].isin(data["dev"]["qid"])]  # else other topics count as 0
    runs, best = [], None
    for lr in args.lrs:
        record = args.work / "models" / f"mnrl-lr{lr:g}.json"
        if record.exists():  # trained and validated by an earlier invocation
            path, info = str(record.with_suffix("")), json.loads(record.read_text())
        else:
            collections.forget(f"mnrl-lr{lr:g}")
            path, info = baselines.train_mnrl(args, data, lr)
        model = SBertBiEncoder(path, batch_size=args.batch_size)
        model.model.max_seq_length = args.max_length
        doc_key = f"mnrl-lr{lr:g}"
        if "dev_score" not in info:
            index = collections.index(doc_key, model, args.train)
            dev_run = (model.query_encoder() >> index.scorer())(data["dev"][["qid", "query", "docno"]])
            info["dev_score"] = pt.Evaluate(dev_run, dev_qrels, metrics=[nDCG @ 10])["nDCG@10"]
            common.write_json(record, info)
        runs.append(info)
        logger.info("mnrl lr=%g: dev nDCG@10=%.4f", lr, info["dev_score"])
        if best is None or info["dev_score"] > best[2]["dev_score"]:
            best = (model, doc_key, info)
    return best[0], best[1], {"utility": "nDCG@10", "chosen": best[2], "runs": runs}


def load_trained(args, system: str, record: dict):
    """The model an earlier invocation trained for ``system``, from the folder its record names."""
    from pyterrier_dr import SBertBiEncoder

    from pyterrier_pgrank import PGRankBiEncoder, PGRankCrossEncoder

    path = str(args.work / record["path"])
    if system == "mnrl":
        model = SBertBiEncoder(path, batch_size=args.batch_size)
        model.model.max_seq_length = args.max_length
        return model
    if system.startswith("ce-"):
        return PGRankCrossEncoder.from_pretrained(path, max_length=args.max_length, batch_size=args.batch_size)
    return PGRankBiEncoder.from_pretrained(path, max_length=args.max_length, batch_size=args.batch_size)


def train_systems(args, data: dict, collections: Collections) -> tuple[list, dict, dict]:
    """Trains the selected systems; returns bi-encoders ``(label, model, doc_key)``, cross-encoders, report.

    A system trained by an earlier invocation with the same settings is loaded from the work folder.
    """
    biencoders, cross, report = [], {}, {"train_seconds": {}, "training": {}}
    for system in args.systems:
        if system in ("bm25", "zeroshot"):
            continue
        label = tables.system_label(system, args.label)
        record_path = args.work / "trained" / f"{system}.json"
        record = json.loads(record_path.read_text()) if record_path.exists() else None
        if record is not None and record.get("settings") == system_settings(args, system):
            model = load_trained(args, system, record)
            logger.info("%s: trained earlier, loaded from %s", system, record["path"])
        else:
            collections.forget(system)
            for name in (f"BM25 >> {label}", f"{label} dense"):  # rankings by an earlier model of the system
                for stale in (args.work / "runs").glob(f"*/{common.safe_name(name)}.res.gz"):
                    stale.unlink()
            zero_shot = collections.index("zeroshot", None, args.train) if system.startswith("pg-query") else None
            start = time.perf_counter()  # after the zero-shot index, which every query-tower model shares
            if system == "mnrl":
                model, doc_key, info = train_mnrl(args, data, collections)
                path = args.work / "models" / doc_key  # sentence-transformers saved it there
            else:
                if system.startswith("ce-"):
                    model, info = baselines.train_cross_encoder(args, system, data)
                    doc_key = None
                else:
                    model, info = baselines.train_pgrank_biencoder(args, system, data, zero_shot)
                    doc_key = "zeroshot" if model.train_towers == "query" else system  # documents unchanged
                path = args.work / "models" / system
                model.save(path)
            record = {"path": str(path.relative_to(args.work)), "doc_key": doc_key, "info": info,
                      "seconds": time.perf_counter() - start,  # the learning-rate sweep included
                      "settings": system_settings(args, system)}
            common.write_json(record_path, record)
        if system.startswith("ce-"):
            cross[label] = model
        else:
            biencoders.append((label, model, record["doc_key"]))
        report["train_seconds"][system] = record["seconds"]
        report["training"][system] = record["info"]
    return biencoders, cross, report


def run(args) -> dict:
    from pyterrier_dr import SBertBiEncoder

    from pyterrier_pgrank.experiments import split_topics

    # data: train/dev topics from the training collection, BM25 candidates with text
    collections = Collections(args)
    train_ds = collections.datasets[args.train]
    train_topics, dev_topics = split_topics(train_ds.topics, args.dev_fraction, seed=args.seed)
    train_topics = train_topics.head(args.max_train_queries) if args.max_train_queries else train_topics
    dev_topics = dev_topics.head(args.max_dev_queries) if args.max_dev_queries else dev_topics
    candidates = collections.bm25(args.train) >> collections.text(args.train)
    data = {"train": candidates(train_topics), "dev": candidates(dev_topics), "qrels": train_ds.qrels}
    logger.info("train %d topics, dev %d topics", len(train_topics), len(dev_topics))
    biencoders, cross, report = train_systems(args, data, collections)
    zeroshot = SBertBiEncoder(args.model, batch_size=args.batch_size)
    zeroshot.model.max_seq_length = args.max_length

    # evaluate every system on the evaluation collection, then out of domain
    for name in [args.eval, *args.ood]:
        dataset = collections.datasets[name]
        pipelines = {"BM25": lambda name=name: collections.bm25(name)}
        if "zeroshot" in args.systems:
            pipelines.update(biencoder_pipelines(f"{args.label} zero-shot", zeroshot, "zeroshot", collections, name))
        for label, model, doc_key in biencoders:
            pipelines.update(biencoder_pipelines(label, model, doc_key, collections, name))
        for label, model in cross.items():
            pipelines[f"BM25 >> {label}"] = (lambda name=name, model=model:
                                             collections.bm25(name, args.ce_depth) >> collections.text(name) >> model)
        start = time.perf_counter()
        folder = args.work / "runs" / common.safe_name(name)
        runs = [stored_run(folder / f"{common.safe_name(system)}.res.gz", build, dataset.topics)
                for system, build in pipelines.items()]
        table = pt.Experiment(runs, dataset.topics, dataset.qrels, measures(), names=list(pipelines),
                              baseline=0, correction="holm", round=4, validate="ignore")
        report.setdefault("eval_seconds", {})[name] = time.perf_counter() - start
        report.setdefault("results", {})[name] = table.to_dict(orient="records")
        names = [str(m) for m in measures()]
        print(f"\n## {name} ({len(dataset.topics)} topics)\n\n{tables.experiment_markdown(table, names)}", flush=True)
        common.write_json(args.out, {"machine": common.machine(), "settings": vars(args), **report})
    return report


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", default="irds:beir/scifact/train")
    parser.add_argument("--eval", default="irds:beir/scifact/test")
    parser.add_argument("--ood", nargs="*", default=["irds:vaswani", "irds:cranfield"])
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    parser.add_argument("--model", default=None, help="sentence-transformers folder to start from (default MiniLM)")
    parser.add_argument("--dev-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--depth", type=int, default=100, help="BM25 candidates for training and re-ranking")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=1, help="the same for every trained system")
    parser.add_argument("--max-steps", type=int, default=None, help="PG-Rank and cross-encoder updates (budget)")
    parser.add_argument("--queries-per-step", type=int, default=8, help="queries per update (MNRL batch size)")
    parser.add_argument("--n-samples", type=int, default=32)
    parser.add_argument("--lrs", type=float, nargs="+", default=[2e-5, 1e-4],
                        help="bi-encoder learning rates tried (PG-Rank and MNRL); the best on the dev split is kept")
    parser.add_argument("--eval-every", type=int, default=20, help="dev validations every so many steps")
    parser.add_argument("--patience", type=int, default=None, help="stop after so many validations without gain")
    parser.add_argument("--temperature", type=float, default=None,
                        help="PG-Rank bi-encoder policy temperature (default: the model's own)")
    parser.add_argument("--mnrl-negatives", type=int, default=3, help="BM25 hard negatives per query for MNRL")
    parser.add_argument("--both-depth", type=int, default=20, help="candidates per query when both towers train")
    parser.add_argument("--ce-depth", type=int, default=30, help="candidates a cross-encoder trains on and re-ranks")
    parser.add_argument("--ce-lr", type=float, default=2e-5)
    parser.add_argument("--max-train-queries", type=int, default=None, help="cap on training topics (budget)")
    parser.add_argument("--max-dev-queries", type=int, default=None, help="cap on dev topics (budget)")
    parser.add_argument("--work", type=Path, default=None,
                        help="models, indexes and rankings (default: a folder of the cache named after the settings)")
    parser.add_argument("--fresh", action="store_true", help="discard what an earlier run with these settings stored")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "effectiveness.json")
    parser.add_argument("--report", type=Path, nargs="+", default=None,
                        help="print the Markdown tables of these results files instead of running")
    return parser.parse_args(argv)


# Settings that change what every trained system learns; those of one family only are in SYSTEM_SETTINGS.
TRAINING_SETTINGS = ("train", "model", "dev_fraction", "seed", "depth", "max_length", "epochs", "max_steps",
                     "queries_per_step", "n_samples", "eval_every", "patience", "temperature",
                     "mnrl_negatives", "max_train_queries", "max_dev_queries")
SYSTEM_SETTINGS = {"pg-query": ("lrs",), "pg-both": ("lrs", "both_depth"), "mnrl": ("lrs",),
                   "ce": ("ce_depth", "ce_lr")}


def system_settings(args, system: str) -> dict:
    """The settings of ``system``'s own family (e.g. ``both_depth`` for both-towers PG-Rank), or ``{}``.

    A model trained with other values of these is trained again; the rest of the run's models are kept.
    """
    family = "-".join(system.split("-")[:2]) if system.startswith("pg-") else system.split("-")[0]
    return {name: getattr(args, name) for name in SYSTEM_SETTINGS.get(family, ())}


def settings_digest(args) -> str:
    """A folder name for the settings that change what every system learns (not systems, collections, output)."""
    settings = {name: getattr(args, name) for name in TRAINING_SETTINGS}
    return "run-" + hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]


def main(argv=None) -> None:
    common.setup_environment()
    from pyterrier_pgrank.experiments import default_cache_dir

    args = parse_args(argv)
    if args.report:
        for path in args.report:
            print(f"## {path}\n\n{tables.effectiveness_markdown(json.loads(path.read_text()))}\n")
        return
    args.label = "MiniLM" if args.model is None else Path(args.model).name
    args.model = args.model or common.minilm_path()
    args.work = args.work or default_cache_dir() / "benchmarks" / settings_digest(args)
    if args.fresh and args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    run(args)


if __name__ == "__main__":
    main()
