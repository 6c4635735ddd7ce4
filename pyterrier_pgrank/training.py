"""The policy-gradient training loop shared by every PG-Rank model, and the ``fit()`` that runs it.

A model plugs in by inheriting :class:`PGRankEstimator` and implementing four hooks:

- ``_pgrank_module() -> torch.nn.Module``: the parameters the optimiser updates and checkpoints save.
- ``_pgrank_prepare(train_sets, valid_sets, settings) -> None``: one-off work before the loop (e.g. encode
  and cache every distinct document once when only the query tower trains).
- ``_pgrank_scores(batch) -> Tensor [Q, N]``: scores of a :class:`~pyterrier_pgrank.data.CandidateBatch`
  with NO autograd graph, in whatever train/eval mode the trainer set; used for sampling and validation.
- ``_pgrank_backward(batch, doc_weights [Q, N]) -> None``: accumulate into ``.grad`` the gradient of
  ``(doc_weights * scores).sum()``, recomputing the scores WITH graph chunk by chunk so that memory does
  not grow with ``N``. It must compute the same function as ``_pgrank_scores`` (with dropout either off or
  its random state replayed per chunk).

Both estimators reduce to per-document weights on the scores (the gradient of the loss with respect to
the ``[Q, N]`` score matrix), which is what makes the chunked backward possible: one gradient-free pass
scores every candidate, the loss is differentiated with respect to that matrix only, and the encoder's
backward then runs chunk by chunk with those weights.

Shapes: ``Q`` queries in a global batch, ``q`` on this process, ``N`` candidates per query.
"""
from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyterrier as pt
import torch

from pyterrier_pgrank import checkpoint as ckpt
from pyterrier_pgrank.data import CandidateBatch, CandidateSet, build_candidate_sets, collate
from pyterrier_pgrank.distributed import init_distributed
from pyterrier_pgrank.history import TrainingHistory
from pyterrier_pgrank.settings import TRAJECTORY_FIELDS, TrainingSettings
from pyterrier_pgrank.utilities import parse_utility
from pyterrier_pgrank.validation import Validator

logger = logging.getLogger(__name__)

__all__ = ["PGRankEstimator", "Trainer", "TrainingSettings", "TrainingHistory"]


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """Switches ``module`` to eval mode (dropout off) and restores its previous mode on exit."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


class PGRankEstimator(pt.Estimator):
    """Mixin giving a model PyTerrier's ``fit()``, trained by policy gradient through the ``_pgrank_*`` hooks.

    Subclasses set ``self.training_settings`` (a :class:`TrainingSettings`) in their constructor, or rely on
    its defaults; ``fit`` keyword arguments override it for one call. A subclass that scores without
    document text sets the class attribute ``_pgrank_requires_text = False``.
    """

    _pgrank_requires_text: bool = True

    def fit(self, train: pd.DataFrame, train_qrels: pd.DataFrame, valid: pd.DataFrame | None = None,
            valid_qrels: pd.DataFrame | None = None, *, loss_fn: Callable | None = None,
            **settings: Any) -> PGRankEstimator:
        """Trains the model on candidate sets: a result frame with qrels, e.g. BM25's top 100.

        In a pipeline, ``(bm25 % 100 >> text >> model).fit(topics, qrels, valid_topics, valid_qrels)``
        runs the stages in front on the topics and calls this method on their output.

        Args:
            train: Result frame with ``qid, query, docno`` (and ``text`` for text-reading models).
            train_qrels: Qrels with ``qid, docno, label``; unjudged candidates count as non-relevant.
            valid: Result frame for validation (early stopping and keeping the best weights), or ``None``.
            valid_qrels: Qrels for ``valid``.
            loss_fn: The loss, called like :func:`~pyterrier_pgrank.estimators.pg_loss` (the default); e.g.
                :func:`~pyterrier_pgrank.pointwise.pointwise_bce_loss` for a pointwise baseline.
            **settings: Overrides of :class:`TrainingSettings` fields for this call.

        Returns:
            The model itself, trained; its ``training_history`` attribute holds a :class:`TrainingHistory`.
        """
        base = getattr(self, "training_settings", None) or TrainingSettings()
        settings = base.replace(**settings)
        if valid is not None and valid_qrels is None:
            raise ValueError("fit() got a validation frame but no valid_qrels to evaluate it with")
        level = settings.relevance_level
        train_sets = build_candidate_sets(train, train_qrels, relevance_level=level,
                                          require_text=self._pgrank_requires_text, what="training frame")
        valid_sets = None
        if valid is not None:
            valid_sets = build_candidate_sets(valid, valid_qrels, relevance_level=level, drop_unlearnable=False,
                                              require_text=self._pgrank_requires_text, what="validation frame")
        self.training_history = Trainer(self, settings, loss_fn).fit(train_sets, valid_sets, valid_qrels)
        return self


class Trainer:
    """Runs policy-gradient training of a model that implements the ``_pgrank_*`` hooks.

    Args:
        model: The model (usually a :class:`PGRankEstimator`).
        settings: How to train.
        loss_fn: The policy-gradient loss, called like :func:`pyterrier_pgrank.estimators.pg_loss`
            (the default) with ``return_utility=True``.
    """

    def __init__(self, model: Any, settings: TrainingSettings, loss_fn: Callable | None = None):
        if loss_fn is None:
            from pyterrier_pgrank.estimators import pg_loss as loss_fn
        self.model = model
        self.settings = settings
        self.loss_fn = loss_fn
        self.module: torch.nn.Module = model._pgrank_module()
        self.parameters = [p for p in self.module.parameters() if p.requires_grad]
        if not self.parameters:
            raise ValueError("the model has no trainable parameters (every requires_grad is False)")
        self.device = self.parameters[0].device
        self.dist = init_distributed(self.device, settings.distributed)
        use_bf16 = settings.precision == "bf16" or (settings.precision == "auto" and self.device.type == "cuda")
        self.autocast = (lambda: torch.autocast(self.device.type, dtype=torch.bfloat16)) if use_bf16 \
            else contextlib.nullcontext
        self.optimizer = torch.optim.AdamW(self.parameters, lr=settings.lr, weight_decay=settings.weight_decay)
        verbose = settings.verbose if settings.verbose is not None else bool(getattr(model, "verbose", False))
        self.verbose = verbose and self.dist.is_main

    def fit(self, train_sets: Sequence[CandidateSet], valid_sets: Sequence[CandidateSet] | None = None,
            valid_qrels: pd.DataFrame | None = None) -> TrainingHistory:
        """Trains on ``train_sets``, validating on ``valid_sets`` against ``valid_qrels`` when given.

        Returns:
            The :class:`TrainingHistory` (also written to ``checkpoint_dir`` when set).
        """
        s, dist = self.settings, self.dist
        was_training = self.module.training  # restored at the end: a model in eval mode stays in eval mode
        if len(train_sets) == 0:
            raise ValueError("the training set is empty: expected at least one query with candidates")
        if s.queries_per_step < dist.world_size:
            raise ValueError(f"queries_per_step ({s.queries_per_step}) must be at least the number of processes "
                             f"({dist.world_size})")
        total = s.total_steps(len(train_sets))
        per_epoch = s.steps_per_epoch(len(train_sets))
        eval_every = s.eval_every or per_epoch
        checkpoint_every = s.checkpoint_every or eval_every
        validator = Validator(self.model, valid_sets, valid_qrels, s.utility, self.autocast) \
            if valid_sets and dist.is_main else None
        self.model._pgrank_prepare(list(train_sets), list(valid_sets) if valid_sets else None, s)

        # start: resume from the newest checkpoint, or validate the initial model
        self.history = TrainingHistory(measure=parse_utility(s.utility).name)
        self.best: dict[str, Any] = {"step": None, "score": -math.inf, "state": None, "bad_evals": 0}
        self._pending: list[torch.Tensor] = []  # [2] loss and mean utility of each step since the last log
        step = self._resume() if s.resume else 0
        dist.broadcast_module(self.module)
        if step == 0 and validator:
            self._validate(validator, 0)
        stop = self.history.stopped_early
        pbar = pt.tqdm(total=total, initial=step, desc="pgrank", unit="step", disable=not self.verbose)
        self._bar: dict[str, float] = {}
        self.module.train()

        while step < total and not stop:
            # set lr: warm-up then linear decay, a pure function of the step
            lr = s.lr_at(step, total)
            for group in self.optimizer.param_groups:
                group["lr"] = lr

            # forward, sample, backward, update
            batch = self._global_batch(train_sets, step, per_epoch)
            self._pending.append(self._train_step(batch, step))
            step += 1
            pbar.update(1)

            # log: the only host synchronisation of the loop outside validation
            if step % s.log_every == 0 or step == total:
                self._log(step, step // per_epoch, lr, pbar)

            # evaluate, keep the best weights, decide on early stopping (on rank 0, then shared)
            if validator and (step % eval_every == 0 or step == total):
                stop = self._validate(validator, step)
                self._bar["valid"] = self.history.valid[-1]["score"]
                pbar.set_postfix(self._bar)
            if valid_sets and (step % eval_every == 0 or step == total):
                stop = dist.broadcast_flag(stop, self.device)
                self.history.stopped_early = stop

            # checkpoint
            if s.checkpoint_dir and (step % checkpoint_every == 0 or step == total or stop):
                self._checkpoint(step)
        pbar.close()

        # stop: restore the best weights everywhere, the module's mode, and write the history
        self.module.train(was_training)
        self._restore_best(step)
        dist.broadcast_module(self.module)
        if s.checkpoint_dir and dist.is_main:
            self.history.save(s.checkpoint_dir)
        dist.barrier()
        return self.history

    def _global_batch(self, train_sets: Sequence[CandidateSet], step: int, per_epoch: int) -> CandidateBatch:
        """The queries of update ``step``: a fixed slice of the epoch's shuffled order, the same on every rank."""
        epoch, position = divmod(step, per_epoch)
        order = torch.randperm(len(train_sets), generator=torch.Generator().manual_seed(self.settings.seed + epoch))
        size = self.settings.queries_per_step
        rows = order[position * size: (position + 1) * size].tolist()
        return collate([train_sets[i] for i in rows])

    def _train_step(self, batch: CandidateBatch, step: int) -> torch.Tensor:
        """One optimizer update on a global batch; returns ``[2]``: the loss and the mean sampled utility."""
        s, dist = self.settings, self.dist
        rows = dist.shard(len(batch))
        local = batch.select(rows).to(self.device)
        batch = batch.to(self.device)

        # score this rank's queries without graph, then share the [Q, N] matrix with every rank
        local_scores = torch.zeros(len(local), batch.labels.shape[1], device=self.device)  # [q, N]
        if len(local):
            with torch.no_grad(), self.autocast():
                local_scores[:, : local.mask.shape[1]] = self.model._pgrank_scores(local).float()
        scores = dist.gather_rows(local_scores, len(batch)).requires_grad_()  # [Q, N]

        # sample rankings and differentiate the loss w.r.t. the scores only; the noise depends on
        # (seed, step) and the global batch, not on the number of processes
        generator = torch.Generator(self.device).manual_seed(s.seed * 1_000_003 + step)
        loss, utility = self.loss_fn(
            scores, batch.labels, batch.mask, utility=s.utility, estimator=s.estimator, n_samples=s.n_samples,
            generator=generator, n_relevant=batch.n_relevant, return_utility=True,
        )
        (doc_weights,) = torch.autograd.grad(loss, scores)  # [Q, N]

        # backward through the model chunk by chunk, then sum the gradients over ranks
        self.optimizer.zero_grad(set_to_none=True)
        if len(local):
            with self.autocast():
                self.model._pgrank_backward(local, doc_weights[rows.start: rows.stop, : local.mask.shape[1]])
        dist.sum_gradients(self.parameters)

        # update
        if s.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.parameters, s.max_grad_norm)
        self.optimizer.step()
        return torch.stack([loss.detach(), utility.mean()])

    def _log(self, step: int, epoch: int, lr: float, pbar: Any) -> None:
        loss, utility = torch.stack(self._pending).mean(dim=0).tolist()
        self._pending = []
        if not math.isfinite(loss):
            raise FloatingPointError(f"the training loss became {loss} at step {step}; lower the learning rate, "
                                     "set max_grad_norm, or check the model for NaN scores")
        self.history.train.append({"step": step, "epoch": epoch, "lr": lr, "loss": loss, "utility": utility})
        self._bar.update(loss=loss, utility=utility)
        pbar.set_postfix(self._bar)
        if self.dist.is_main:
            logger.info("step %d: loss %.4f, sampled %s %.4f, lr %.3g", step, loss, self.history.measure, utility, lr)

    def _validate(self, validator: Validator, step: int) -> bool:
        """Validates, keeps the weights when they are the best so far; returns whether to stop early."""
        with eval_mode(self.module):
            score = validator.evaluate()
        self.history.valid.append({"step": step, "score": score})
        best = self.best
        if score > best["score"]:
            best.update(step=step, score=score, bad_evals=0, state=ckpt.cpu_state(self.module))
            if self.settings.checkpoint_dir:
                ckpt.save_weights(best["state"], self._best_path(step))
        else:
            best["bad_evals"] += 1
        self.history.best_step, self.history.best_score = best["step"], best["score"]
        logger.info("step %d: validation %s = %.4f (best %.4f at step %d)", step, validator.name, score,
                    best["score"], best["step"])
        patience = self.settings.patience
        return patience is not None and best["bad_evals"] >= patience

    def _best_path(self, step: int) -> Path:
        return Path(self.settings.checkpoint_dir) / f"best-{step:08d}.safetensors"

    def _restore_best(self, step: int) -> None:
        if not self.dist.is_main or self.best["step"] is None:
            return
        if self.best["state"] is not None:
            self.module.load_state_dict(self.best["state"])
        else:
            ckpt.load_weights(self.module, self._best_path(self.best["step"]))
        logger.info("restored the weights of step %d (%s = %.4f); trained %d steps", self.best["step"],
                    self.history.measure, self.best["score"], step)

    def _checkpoint(self, step: int) -> None:
        if not self.dist.is_main:
            return
        best = {k: v for k, v in self.best.items() if k != "state"}
        state = {"step": step, "optimizer": self.optimizer.state_dict(), "rng": ckpt.rng_state(), "best": best,
                 "history": self.history.to_dict(), "settings": self.settings.to_dict(),
                 "pending": torch.stack(self._pending).cpu() if self._pending else torch.zeros(0, 2)}
        keep = {self._best_path(best["step"]).name} if best["step"] is not None else set()
        ckpt.save_checkpoint(self.settings.checkpoint_dir, step, self.module, state, keep=keep)

    def _resume(self) -> int:
        """Loads the newest checkpoint, if any; returns the step to continue from."""
        state = ckpt.load_checkpoint(self.settings.checkpoint_dir, self.module)
        if state is None:
            logger.info("no checkpoint in %s; starting from scratch", self.settings.checkpoint_dir)
            return 0
        changed = [k for k in TRAJECTORY_FIELDS if state["settings"].get(k) != self.settings.to_dict()[k]]
        if changed:
            logger.warning("resuming with different settings %s; the run will differ from an uninterrupted one",
                           changed)
        self.optimizer.load_state_dict(state["optimizer"])
        ckpt.set_rng_state(state["rng"])
        self.history = TrainingHistory.from_dict(state["history"])
        self._pending = list(state["pending"].to(self.device))
        self.best.update(state["best"])
        self.best["score"] = -math.inf if self.best["step"] is None else self.best["score"]
        logger.info("resumed from step %d in %s", state["step"], self.settings.checkpoint_dir)
        return state["step"]
