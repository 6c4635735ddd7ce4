"""Atomic training checkpoints: weights as safetensors, the rest as a tensor-only ``torch.save`` file.

A checkpoint directory holds

- ``step-00000120/`` with ``model.safetensors`` (the trained module's state) and ``trainer.pt``
  (optimizer state, RNG states, step, early-stopping counters, history, settings);
- ``best-00000100.safetensors``, the weights with the best validation score so far, when validating;
- ``latest``, a one-line file naming the newest complete ``step-*`` folder.

Each file is written under a temporary name and moved into place with :func:`os.replace`, and ``latest``
is switched only once the whole step folder is in place, so a run killed at any moment leaves the
previous checkpoint usable. Files are read with ``torch.load(weights_only=True)`` and safetensors:
nothing is ever unpickled.
"""
from __future__ import annotations

import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)

__all__ = ["save_checkpoint", "load_checkpoint", "save_weights", "load_weights", "rng_state", "set_rng_state"]


def cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Returns a detached, contiguous CPU copy of a module's state (shared tensors become separate copies)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}


def save_weights(state: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Writes a state dictionary to a safetensors file atomically."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{path}.tmp"
    save_file(state, tmp)
    os.replace(tmp, path)


def load_weights(module: torch.nn.Module, path: str | os.PathLike) -> None:
    """Loads a safetensors file written by :func:`save_weights` into ``module`` (strictly)."""
    module.load_state_dict(load_file(str(path)), strict=True)


def rng_state() -> dict[str, Any]:
    """Returns the torch (CPU and CUDA), Python and NumPy random states as tensors and plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores the random states returned by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_checkpoint(directory: str | os.PathLike, step: int, module: torch.nn.Module,
                    trainer_state: dict[str, Any], *, keep: set[str] = frozenset()) -> Path:
    """Writes a complete checkpoint for ``step`` and then points ``latest`` at it.

    Args:
        directory: The checkpoint directory (created if missing).
        step: The number of optimizer updates done.
        module: The module whose weights are saved.
        trainer_state: Tensors and plain values to save in ``trainer.pt``.
        keep: File names in ``directory`` (e.g. the current best weights) that must not be cleaned up.

    Returns:
        The path of the new step folder.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}"
    tmp = directory / f"{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()

    # write the folder under a temporary name, then move it into place
    save_file(cpu_state(module), tmp / "model.safetensors")
    torch.save(trainer_state, tmp / "trainer.pt")
    final = directory / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _write_text(directory / "latest", name)

    # only now drop older checkpoints and stale best weights
    for old in directory.iterdir():
        stale_step = old.name.startswith("step-") and old.name != name
        stale_best = old.name.startswith("best-") and old.name not in keep
        if stale_step or stale_best:
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    logger.debug("checkpoint written to %s", final)
    return final


def load_checkpoint(directory: str | os.PathLike, module: torch.nn.Module,
                    map_location: torch.device | str = "cpu") -> dict[str, Any] | None:
    """Loads the newest complete checkpoint into ``module`` and returns its trainer state.

    Returns:
        The ``trainer_state`` given to :func:`save_checkpoint`, or ``None`` when there is no checkpoint.
    """
    directory = Path(directory)
    latest = directory / "latest"
    if not latest.is_file():
        return None
    folder = directory / latest.read_text().strip()
    load_weights(module, folder / "model.safetensors")
    return torch.load(folder / "trainer.pt", map_location=map_location, weights_only=True)
