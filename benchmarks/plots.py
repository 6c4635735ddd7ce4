"""Figures for BENCHMARKS.md, drawn from the JSON files the benchmark scripts write.

- ``dev-curves.png``: validation score against training step for every trained system and learning rate
  of an ``effectiveness.py`` run (and, with ``--rerank``, the two cross-encoders of
  ``examples/scifact_rerank.py``, read from their ``history.json``);
- ``memory.png``: peak memory of a training step against candidates per query (``efficiency.py --sections
  memory``), chunked backward against keeping every graph.

Example: ``python benchmarks/plots.py --effectiveness benchmarks/results/effectiveness-scifact.json
--memory benchmarks/results/efficiency-cpu-memory.json --out benchmarks/results``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def dev_curves(effectiveness: Path | None, rerank: Path | None, path: Path) -> None:
    """One line per (system, learning rate), dev score against step; the chosen run drawn solid."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    if effectiveness is not None:
        data = json.loads(effectiveness.read_text())
        for system, info in data.get("training", {}).items():
            chosen = info.get("chosen", {}).get("lr")
            for run in info.get("runs", []):
                steps = [point["step"] for point in run["dev_curve"]]
                scores = [point["score"] for point in run["dev_curve"]]
                style = "-" if run["lr"] == chosen else ":"
                ax.plot(steps, scores, style, marker=".", label=f"{system} (lr {run['lr']:g}, {info['utility']})")
    if rerank is not None:
        for folder in sorted(rerank.glob("cross_encoder_*")):
            history = json.loads((folder / "history.json").read_text())
            steps = [point["step"] for point in history["valid"]]
            scores = [point["score"] for point in history["valid"]]
            ax.plot(steps, scores, "--", marker=".", label=folder.name.replace("_", " "))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("dev score (the training utility)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def memory(results: Path, path: Path) -> None:
    """Rise of resident memory during one training step against candidates per query."""
    rows = json.loads(results.read_text())["memory"]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for kind, method in sorted({(r["kind"], r["method"]) for r in rows}):
        points = sorted((r["candidates"], r["peak_above_start_mb"]) for r in rows
                        if r["kind"] == kind and r["method"] == method)
        ax.plot(*zip(*points), marker="o", label=f"{kind}, {method} backward")
    ax.set_xlabel("candidates per query")
    ax.set_ylabel("memory rise during the step (MiB)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--effectiveness", type=Path, default=None, help="an effectiveness.py results file")
    parser.add_argument("--rerank", type=Path, default=None, help="an examples/scifact_rerank.py output folder")
    parser.add_argument("--memory", type=Path, default=None, help="an efficiency.py results file with 'memory'")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.effectiveness or args.rerank:
        dev_curves(args.effectiveness, args.rerank, args.out / "dev-curves.png")
    if args.memory:
        memory(args.memory, args.out / "memory.png")


if __name__ == "__main__":
    main()
