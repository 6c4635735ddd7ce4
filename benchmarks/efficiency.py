"""What PG-Rank training and re-ranking cost, measured side by side on one machine.

Sections (``--sections``, all by default):

- ``throughput``: queries and candidate documents per second of a PG-Rank training step (both towers,
  query tower only) against sentence-transformers' own training loop (``old_fit`` with
  ``MultipleNegativesRankingLoss``) on the same model, sequence length and documents per step;
- ``share``: the share of a step spent outside the encoder (sampling, utility, estimator, bookkeeping)
  against samples and candidates per query;
- ``memory``: peak memory of one training step against candidates per query, each in a fresh process,
  for the chunked backward and, as a contrast, a naive step that keeps every candidate's graph;
- ``rerank``: re-ranking throughput of ``PGRankBiEncoder.text_scorer()`` against pyterrier-dr's
  ``SBertBiEncoder`` on the same checkpoint, and of the cross-encoder;
- ``scaling``: seconds per step and queries per second of the same global batch in 1 and more processes
  (``--processes``), each count launched with ``torchrun``: gloo on CPU, where the cores are split
  evenly between the processes, and one GPU per process with NCCL.

Timings come from the real :class:`~pyterrier_pgrank.training.Trainer`, whose model hooks, loss and
optimizer step are wrapped with timers; the first step of each run is a warm-up and is not counted.
Example: ``python benchmarks/efficiency.py --sections throughput share --steps 3``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
from pathlib import Path

import _common as common
import _report as report
import numpy as np
import torch

logger = logging.getLogger("efficiency")
SECTIONS = ("throughput", "share", "memory", "rerank", "scaling")


def candidate_sets(args, n_candidates: int, n_sets: int, offset: int = 0) -> list:
    """``n_sets`` SciFact-style candidate sets of exactly ``n_candidates`` BM25 results with text."""
    from pyterrier_pgrank.data import build_candidate_sets
    from pyterrier_pgrank.experiments import load_dataset

    dataset = load_dataset(args.dataset)
    topics = dataset.topics.iloc[offset: offset + 4 * n_sets + 8]
    res = (dataset.bm25(n_candidates) >> dataset.text_loader())(topics)
    sets = [s for s in build_candidate_sets(res, dataset.qrels) if len(s) == n_candidates]
    if len(sets) < n_sets:
        raise ValueError(f"expected {n_sets} queries with {n_candidates} candidates, found {len(sets)}")
    return sets[:n_sets]


def load_biencoder(args, towers: str):
    from pyterrier_pgrank import PGRankBiEncoder

    return PGRankBiEncoder.from_pretrained(args.model, train_towers=towers, max_length=args.max_length,
                                           batch_size=args.batch_size, doc_chunk_size=args.batch_size,
                                           device=args.device)


def time_pgrank(model, sets: list, args, *, n_samples: int, estimator: str = "plrank") -> dict:
    """Mean per-step seconds of each phase of ``Trainer`` steps on ``sets`` (first step not counted).

    ``allreduce`` is the sum of the gradients over processes (nothing in one process); ``step_median_s``
    is the median step, ``steps_s`` every timed step.
    """
    from pyterrier_pgrank.settings import TrainingSettings
    from pyterrier_pgrank.training import Trainer

    settings = TrainingSettings(estimator=estimator, n_samples=n_samples, queries_per_step=args.queries_per_step,
                                max_steps=args.steps + 1, warmup=0, lr=1e-7, log_every=10**6, verbose=False)
    trainer = Trainer(model, settings)
    timer = common.PhaseTimer(args.device)
    for hook in ("_pgrank_prepare", "_pgrank_scores", "_pgrank_backward"):
        setattr(model, hook, timer.wrap(hook, getattr(model, hook)))
    trainer.loss_fn = timer.wrap("loss", trainer.loss_fn)
    trainer.optimizer.step = timer.wrap("update", trainer.optimizer.step)
    trainer.dist.sum_gradients = timer.wrap("allreduce", trainer.dist.sum_gradients)
    try:
        trainer.fit(sets)
    finally:
        for hook in ("_pgrank_prepare", "_pgrank_scores", "_pgrank_backward"):
            delattr(model, hook)
    steps = np.diff(timer.ends["update"])  # [steps]: from the end of one update to the end of the next
    phases = {name: float(np.mean(timer.calls[hook][1:])) for name, hook in
              (("scores", "_pgrank_scores"), ("loss", "loss"), ("backward", "_pgrank_backward"),
               ("allreduce", "allreduce"), ("update", "update"))}
    step = float(np.mean(steps))  # means, so that step = sum of phases + other
    other = step - sum(phases.values())
    n_docs = args.queries_per_step * len(sets[0])
    return {"step_s": step, "step_median_s": float(np.median(steps)), "steps_s": steps.tolist(),
            **{f"{k}_s": v for k, v in phases.items()}, "other_s": other,
            "prepare_s": timer.calls["_pgrank_prepare"][0], "loss_share": phases["loss"] / step,
            "outside_encoder_share": (phases["loss"] + other) / step,
            "queries_per_s": args.queries_per_step / step, "docs_per_s": n_docs / step}


def time_sentence_transformers(sets: list, args) -> dict:
    """Per-step seconds of sentence-transformers' ``old_fit`` with MNRL on the same documents per step."""
    from sentence_transformers import InputExample, SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from torch.utils.data import DataLoader

    model = SentenceTransformer(args.model, device=args.device)
    model.max_seq_length = args.max_length
    examples = []
    for s in sets:  # query, one relevant candidate, then the other N - 1 candidates as hard negatives
        first = int(torch.nonzero(s.labels > 0)[0])
        examples.append(InputExample(texts=[s.query, s.texts[first]] + s.texts[:first] + s.texts[first + 1:]))
    loss = MultipleNegativesRankingLoss(model)
    timer = common.PhaseTimer(args.device)
    loss.forward = timer.wrap("loss", loss.forward)
    loader = DataLoader(examples, batch_size=args.queries_per_step, shuffle=False)
    model.old_fit(train_objectives=[(loader, loss)], epochs=1, steps_per_epoch=args.steps + 2, warmup_steps=0,
                  optimizer_params={"lr": 1e-7}, show_progress_bar=False)
    starts = np.array(timer.ends["loss"]) - np.array(timer.calls["loss"])
    step = float(np.mean(np.diff(starts)[1:]))  # [steps]: loss start to loss start, warm-up dropped
    n_docs = args.queries_per_step * len(sets[0])
    return {"step_s": step, "queries_per_s": args.queries_per_step / step, "docs_per_s": n_docs / step}


def load_query_tower_model(args, sets: list):
    """A query-tower-only model whose document cache already holds every candidate of ``sets``.

    For the default MiniLM, when the zero-shot index of the corpus has been built (by ``effectiveness.py``),
    the cache is filled from it: these are the vectors the frozen document tower computes. Otherwise
    it is filled with random unit vectors, which cost the training step exactly the same, so that the
    timed runs do not spend minutes encoding thousands of candidates first.
    """
    model = load_biencoder(args, "query")
    index = _built_zero_shot_index(args)
    if index is not None:
        model.cache_doc_vectors(index)
        args.doc_vectors = "zero-shot index"
    else:
        docnos = sorted({d for s in sets for d in s.docnos})
        vectors = torch.nn.functional.normalize(torch.randn(len(docnos), model.query_tower.dim), dim=-1)
        model.cache_doc_vectors(docnos, vectors.numpy())
        args.doc_vectors = "random unit vectors"
    return model


def _built_zero_shot_index(args):
    from pyterrier_dr import FlexIndex

    from pyterrier_pgrank.experiments import dense_index_complete, load_dataset

    if args.model != common.minilm_path():
        return None
    path = common.zero_shot_index_path(args.model, args.max_length, load_dataset(args.dataset).corpus_id)
    return FlexIndex(str(path), verbose=False) if dense_index_complete(path) else None


def run_throughput(args) -> dict:
    sets = candidate_sets(args, args.candidates, args.queries_per_step * (args.steps + 2))
    out = {"sentence_transformers_mnrl": time_sentence_transformers(sets, args)}
    for towers in ("both", "query"):
        model = load_query_tower_model(args, sets) if towers == "query" else load_biencoder(args, "both")
        for estimator in ("plrank", "reinforce"):
            out[f"pgrank_{towers}_{estimator}"] = time_pgrank(model, sets, args, n_samples=args.n_samples,
                                                              estimator=estimator)
    base = out["sentence_transformers_mnrl"]["step_s"]
    for row in out.values():
        row["step_time_vs_st"] = row["step_s"] / base
    out["pgrank_query_plrank"]["doc_vectors"] = out["pgrank_query_reinforce"]["doc_vectors"] = args.doc_vectors
    return out


def run_share(args) -> list[dict]:
    rows = []
    for n_candidates in args.share_candidates:
        sets = candidate_sets(args, n_candidates, args.queries_per_step * (args.steps + 1))
        towers_list = ("query", "both") if n_candidates <= args.both_max_candidates else ("query",)
        for towers in towers_list:
            model = load_query_tower_model(args, sets) if towers == "query" else load_biencoder(args, "both")
            for estimator in ("plrank", "reinforce"):
                for n_samples in args.samples:
                    row = time_pgrank(model, sets, args, n_samples=n_samples, estimator=estimator)
                    rows.append({"towers": towers, "estimator": estimator, "candidates": n_candidates,
                                 "samples": n_samples, **row})
                    if towers == "query":
                        rows[-1]["doc_vectors"] = args.doc_vectors
                    logger.info("share %s", rows[-1])
    return rows


def memory_probe(args, kind: str, method: str, n_candidates: int) -> dict:
    """One training step in this process; peak memory during it (run in a fresh process per setting)."""
    from pyterrier_pgrank.data import collate
    from pyterrier_pgrank.estimators import pg_loss

    sets = candidate_sets(args, n_candidates, 2)
    if kind == "crossencoder":
        from pyterrier_pgrank import PGRankCrossEncoder

        model = PGRankCrossEncoder.from_pretrained(args.model, batch_size=args.batch_size,
                                                   max_length=args.max_length, device=args.device)
    else:
        model = load_biencoder(args, "both")
    module = model._pgrank_module()
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-7)
    batch = collate(sets[:1]).to(args.device)
    before = common.current_rss_mb() if args.device == "cpu" else torch.cuda.memory_allocated() / 2**20
    common.reset_peak_memory(args.device)
    with common.stopwatch(args.device) as elapsed:
        if method == "chunked":  # what the trainer does: scores without graph, weights, chunked backward
            scores = model._pgrank_scores(batch).float().requires_grad_()
            loss = pg_loss(scores, batch.labels, batch.mask, n_samples=32, n_relevant=batch.n_relevant)
            (doc_weights,) = torch.autograd.grad(loss, scores)
            model._pgrank_backward(batch, doc_weights)
        else:  # every candidate encoded with its graph kept, one backward
            queries = model.query_tower.encode(batch.queries, args.batch_size)  # [1, D]
            docs = model.document_tower.encode(batch.texts[0], args.batch_size)  # [N, D]
            scores = queries @ docs.T  # [1, N]
            pg_loss(scores, batch.labels, batch.mask, n_samples=32, n_relevant=batch.n_relevant).backward()
        optimizer.step()
    peak = common.peak_memory_mb(args.device)
    return {"kind": kind, "method": method, "candidates": n_candidates, "peak_mb": peak,
            "peak_above_start_mb": peak - before, "step_s": elapsed()}


def run_memory(args) -> list[dict]:
    rows = []
    settings = [("biencoder", "chunked", n) for n in args.memory_candidates]
    settings += [("biencoder", "naive", n) for n in args.memory_candidates if n <= args.naive_max_candidates]
    settings += [("crossencoder", "chunked", n) for n in args.memory_candidates]
    for kind, method, n in settings:
        command = [sys.executable, __file__, "--memory-probe", f"{kind}:{method}:{n}", *args.argv]
        rows.append(common.run_json_probe(command, f"memory probe {kind}:{method}:{n}"))
        logger.info("memory %s", rows[-1])
    return rows


def run_rerank(args) -> dict:
    from pyterrier_dr import SBertBiEncoder
    from sentence_transformers import CrossEncoder

    from pyterrier_pgrank import PGRankBiEncoder, PGRankCrossEncoder
    from pyterrier_pgrank.experiments import load_dataset

    dataset = load_dataset(args.rerank_dataset)
    res = (dataset.bm25(args.rerank_depth) >> dataset.text_loader())(dataset.topics.head(args.rerank_queries + 1))
    first = res["qid"].iloc[0]
    warm, timed = res[res["qid"] == first], res[res["qid"] != first]
    sbert = SBertBiEncoder(args.model, batch_size=args.batch_size, device=args.device)
    sbert.model.max_seq_length = args.max_length
    st_cross = CrossEncoder(args.model, max_length=args.max_length, device=args.device)
    scorers = {
        "pgrank_biencoder_text_scorer": PGRankBiEncoder.from_pretrained(
            args.model, max_length=args.max_length, batch_size=args.batch_size, device=args.device).text_scorer(),
        "pyterrier_dr_sbert_text_scorer": sbert.text_scorer(),
        "pgrank_cross_encoder": PGRankCrossEncoder.from_pretrained(
            args.model, max_length=args.max_length, batch_size=args.batch_size, device=args.device),
        "sentence_transformers_cross_encoder": lambda frame: st_cross.predict(
            list(zip(frame["query"], frame["text"])), batch_size=args.batch_size),
    }
    # round-robin repeats, so that a drift in the machine's speed hits every scorer alike; median per scorer
    for scorer in scorers.values():
        scorer(warm)
    seconds: dict[str, list[float]] = {name: [] for name in scorers}
    for _ in range(args.rerank_repeats):
        for name, scorer in scorers.items():
            with common.stopwatch(args.device) as elapsed:
                scorer(timed)
            seconds[name].append(elapsed())
    out = {}
    for name, times in seconds.items():
        median = statistics.median(times)
        out[name] = {"pairs": len(timed), "seconds": median, "pairs_per_s": len(timed) / median, "all_seconds": times}
        logger.info("rerank %s %s", name, out[name])
    return out


def scaling_probe(args, towers: str, threads: int) -> dict | None:
    """Times training steps in one process of a ``torchrun`` launch; returns rank 0's row, ``None`` elsewhere.

    On CPU each process uses ``threads`` threads.
    """
    world_size, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    if torch.device(args.device).type == "cuda":
        args.device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    else:
        torch.set_num_threads(threads)
    torch.manual_seed(0)  # the same random document vectors, if any, on every rank
    sets = candidate_sets(args, args.candidates, args.queries_per_step * (args.steps + 1))
    model = load_query_tower_model(args, sets) if towers == "query" else load_biencoder(args, "both")
    row = time_pgrank(model, sets, args, n_samples=args.n_samples)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    if rank > 0:
        return None
    if towers == "query":
        row["doc_vectors"] = args.doc_vectors
    return {"towers": towers, "processes": world_size, "threads_per_process": torch.get_num_threads(),
            "queries_per_step": args.queries_per_step,
            "median_queries_per_s": args.queries_per_step / row["step_median_s"], **row}


def run_scaling(args) -> list[dict]:
    """Times every process count of ``--processes`` in turn, each in a fresh ``torchrun`` launch.

    On CPU the cores are split evenly between the processes, and a last run of one process with the threads
    of one process of the largest count separates the effect of the processes from that of the threads.
    """
    cores = os.cpu_count() or 1
    runs = [(n, max(1, cores // n)) for n in args.processes]
    if torch.device(args.device).type == "cpu" and runs[-1][1] != runs[0][1]:
        runs.append((1, runs[-1][1]))
    rows = []
    for towers in args.scaling_towers:
        single = None
        for n, threads in runs:
            command = [*common.torchrun(n), __file__, "--scaling-probe", f"{towers}:{threads}", *args.argv]
            row = common.run_json_probe(command, f"scaling probe {towers} in {n} processes of {threads} threads")
            single = single or row
            rows.append({**row, "speedup": single["step_median_s"] / row["step_median_s"]})
            logger.info("scaling %s", rows[-1])
        timed = rows[-len(runs):]
        for row in timed:  # against one process of as many threads, where it was timed
            same = [r for r in timed if r["processes"] == 1 and r["threads_per_process"] == row["threads_per_process"]]
            if same and row["processes"] > 1:
                row["speedup_same_threads"] = same[0]["step_median_s"] / row["step_median_s"]
    return rows


def scaling_markdown(rows: list[dict]) -> str:
    """The ``scaling`` section as a Markdown table.

    The speed-up is against the first run (one process); the last column against one process with the
    threads of one of these processes.
    """
    out = ["| towers | processes | threads/process | s/step (median) | queries/s | all-reduce s/step | speed-up | "
           "vs 1 process, same threads |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        same = f"{row['speedup_same_threads']:.2f}x" if "speedup_same_threads" in row else "-"
        out.append(f"| {row['towers']} | {row['processes']} | {row['threads_per_process']} | "
                   f"{row['step_median_s']:.2f} | {row['median_queries_per_s']:.3f} | {row['allreduce_s']:.3f} | "
                   f"{row['speedup']:.2f}x | {same} |")
    return "\n".join(out)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--model", default=None, help="encoder to measure (default: all-MiniLM-L6-v2)")
    parser.add_argument("--dataset", default="irds:beir/scifact/train", help="training candidates come from here")
    parser.add_argument("--rerank-dataset", default="irds:beir/scifact/test")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--max-length", type=int, default=256, help="tokens per text")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per encoder pass (and backward chunk)")
    parser.add_argument("--queries-per-step", type=int, default=4)
    parser.add_argument("--candidates", type=int, default=8, help="candidates per query in 'throughput'")
    parser.add_argument("--n-samples", type=int, default=32, help="rankings sampled per query in 'throughput'")
    parser.add_argument("--samples", type=int, nargs="+", default=[8, 32, 128], help="sample counts in 'share'")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per setting (after one warm-up)")
    parser.add_argument("--share-candidates", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--both-max-candidates", type=int, default=0,
                        help="largest N timed with both towers in 'share' (0: query tower only)")
    parser.add_argument("--memory-candidates", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--naive-max-candidates", type=int, default=32)
    parser.add_argument("--rerank-queries", type=int, default=10)
    parser.add_argument("--rerank-depth", type=int, default=50)
    parser.add_argument("--rerank-repeats", type=int, default=3, help="timed passes per re-ranker (median kept)")
    parser.add_argument("--processes", type=int, nargs="+", default=None,
                        help="process counts in 'scaling' (default: 1 2 on CPU, 1 to every GPU on CUDA)")
    parser.add_argument("--scaling-towers", nargs="+", choices=("query", "both"), default=["query", "both"])
    parser.add_argument("--out", type=Path, default=None, help="JSON results (default benchmarks/results/)")
    parser.add_argument("--markdown", type=Path, nargs="+", default=None,
                        help="print the tables of results files and exit")
    parser.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--scaling-probe", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.model = args.model or common.minilm_path()
    if args.processes is None:
        cuda = torch.device(args.device).type == "cuda"
        args.processes = list(range(1, torch.cuda.device_count() + 1)) if cuda else [1, 2]
    return args


def main(argv=None) -> None:
    common.setup_environment()
    args = parse_args(argv)
    if args.markdown:
        for path in args.markdown:
            results = json.loads(path.read_text())
            print(report.efficiency_markdown(results))
            if "scaling" in results:
                print(scaling_markdown(results["scaling"]))
        return
    if args.memory_probe:
        kind, method, n = args.memory_probe.split(":")
        print(json.dumps(memory_probe(args, kind, method, int(n))))
        return
    if args.scaling_probe:
        towers, threads = args.scaling_probe.split(":")
        row = scaling_probe(args, towers, int(threads))
        if row is not None:
            print(json.dumps(row))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = {k: v for k, v in vars(args).items() if k not in ("memory_probe", "scaling_probe", "argv")}
    results = {"machine": common.machine(), "settings": settings}
    runners = {"throughput": run_throughput, "share": run_share, "memory": run_memory, "rerank": run_rerank,
               "scaling": run_scaling}
    out = args.out or Path(__file__).parent / "results" / f"efficiency-{torch.device(args.device).type}.json"
    for section in args.sections:
        with common.stopwatch() as elapsed:
            results[section] = runners[section](args)
        results.setdefault("section_seconds", {})[section] = elapsed()
        common.write_json(out, results)  # after each section, so a long run keeps what it measured


if __name__ == "__main__":
    main()
