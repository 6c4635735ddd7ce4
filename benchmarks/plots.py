"""Figures for BENCHMARKS.md, drawn from the JSON files the benchmark scripts write.

- ``dev-curves-<run>.png``: validation score against training step for every trained system and learning
  rate of an ``effectiveness.py`` run (``effectiveness-<run>.json``);
- ``rerank-dev-curves.png``: the same for the cross-encoders of ``examples/scifact_rerank.py``, read from
  the ``history.json`` of each ``cross_encoder_<loss>`` folder (or ``history-<loss>.json`` files);
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
from _report import system_label  # noqa: E402


def _finish(fig, ax, path: Path, ylabel: str, legend_outside: bool = False) -> None:
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if legend_outside:  # many lines: the legend beside the axes, not over the curves
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    else:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def dev_curves(effectiveness: Path, path: Path) -> None:
    """One line per (system, learning rate), dev score against step; the chosen run drawn solid."""
    fig, ax = plt.subplots(figsize=(10, 4.6))
    data = json.loads(effectiveness.read_text())
    colours = plt.get_cmap("tab10").colors
    for i, (system, info) in enumerate(data.get("training", {}).items()):  # one colour per system
        chosen = info.get("chosen", {}).get("lr")
        runs = [run for run in info.get("runs", [info]) if "dev_curve" in run]  # MNRL has no curve
        for run in runs:
            steps = [point["step"] for point in run["dev_curve"]]
            scores = [point["score"] for point in run["dev_curve"]]
            style = "-" if run["lr"] == chosen or len(runs) == 1 else ":"
            ax.plot(steps, scores, style, marker=".", color=colours[i % len(colours)],
                    label=f"{system_label(system, '').strip()}, lr {run['lr']:g}")
    _finish(fig, ax, path, "dev score (each model's training utility)", legend_outside=True)


def rerank_dev_curves(folder: Path, path: Path) -> None:
    """Dev nDCG@10 against step of each cross-encoder of a ``scifact_rerank.py`` run."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    histories = {f.parent.name.removeprefix("cross_encoder_"): f for f in folder.glob("cross_encoder_*/history.json")}
    histories.update({f.stem.removeprefix("history-"): f for f in folder.glob("history-*.json")})
    for loss, file in sorted(histories.items()):
        history = json.loads(file.read_text())
        steps = [point["step"] for point in history["valid"]]
        scores = [point["score"] for point in history["valid"]]
        ax.plot(steps, scores, marker="o", label=f"cross-encoder, {loss}")
    _finish(fig, ax, path, f"dev {history['measure']}")


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
    parser.add_argument("--effectiveness", type=Path, nargs="*", default=[], help="effectiveness.py results files")
    parser.add_argument("--rerank", type=Path, default=None, help="an examples/scifact_rerank.py output folder")
    parser.add_argument("--memory", type=Path, default=None, help="an efficiency.py results file with 'memory'")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for results in args.effectiveness:  # one figure per run: each run validates on its own dev topics
        dev_curves(results, args.out / f"dev-curves-{results.stem.removeprefix('effectiveness-')}.png")
    if args.rerank:
        rerank_dev_curves(args.rerank, args.out / "rerank-dev-curves.png")
    if args.memory:
        memory(args.memory, args.out / "memory.png")


if __name__ == "__main__":
    main()
