"""A dense bi-encoder for PyTerrier trained with policy gradient (Neural PG-Rank).

:class:`PGRankBiEncoder` is a :class:`pyterrier_dr.BiEncoder`, so it indexes into a ``FlexIndex``,
retrieves, re-ranks text and takes part in ``pt.Experiment`` like any pyterrier-dr model, and a
:class:`~pyterrier.Estimator` whose ``fit`` trains it with the shared policy-gradient trainer. The score of
document ``d`` for query ``q`` is the dot product of their embeddings; the policy is Plackett-Luce over
these scores (Gao et al., "Policy-Gradient Training of Neural Ranking Models", 2023).

Shape legend: ``Q`` queries in a batch, ``N`` candidates per query, ``D`` embedding size.
"""
from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from pyterrier_dr import BiEncoder

from .biencoder_training import BiEncoderTrainingHooks
from .settings import TrainingSettings
from .text_encoder import TextEncoder
from .training import PGRankEstimator, eval_mode

logger = logging.getLogger(__name__)

TRAIN_TOWERS = ("query", "both")


class PGRankBiEncoder(BiEncoderTrainingHooks, BiEncoder, PGRankEstimator):
    """A dual encoder (query tower, document tower) with dot-product scores, trainable by policy gradient.

    Constructed from a path so that ``pt.Artifact.load`` can build it; :meth:`from_pretrained` is the
    same with a name that reads better.

    Args:
        model_name_or_path: A Hugging Face encoder id or folder, a sentence-transformers folder, or a
            folder written by :meth:`save`.
        pooling: ``'mean'``, ``'cls'`` or ``'max'``; default from the sentence-transformers config, else mean.
        normalize: L2-normalise embeddings; default from the sentence-transformers config, else ``False``.
        device: Where the encoders run; default CUDA when available, else CPU.
        batch_size: Texts per forward pass when encoding.
        max_length: Truncation length in tokens; default from the config, else 256.
        text_field: The document text column.
        verbose: Progress bars when encoding and training.
        trust_remote_code: Allow model code from the hub; off by default.
        train_towers: ``'query'`` trains the query tower only against document embeddings computed once
            by the frozen document tower (an index built before training stays valid; the CPU default);
            ``'both'`` trains the shared encoder of both sides, as in the paper.
        doc_chunk_size: Candidates re-encoded per backward pass when both towers train; bounds memory
            independently of ``N``.
        temperature: The policy is Plackett-Luce over ``q . d / temperature`` (rankings and served scores
            are the plain dot product). Default 0.05 for L2-normalised embeddings, whose cosine scores would
            otherwise give a near-uniform policy, else 1.
        training_settings: Defaults of :meth:`fit` (a :class:`~pyterrier_pgrank.settings.TrainingSettings`
            or a dict of its fields); ``fit`` keyword arguments override them for one call.

    .. note::
        In the ``'query'`` regime the two towers start equal and the document tower never changes, so a
        trained model saves as a routed sentence-transformers model (a ``query`` and a ``document`` tower)
        that ``SentenceTransformer.encode_query`` / ``encode_document`` read.
    """

    ARTIFACT_TYPE = "ranker"
    ARTIFACT_FORMAT = "pgrank_biencoder"

    def __init__(self, model_name_or_path: str | Path, *, pooling: str | None = None,
                 normalize: bool | None = None, device: str | torch.device | None = None, batch_size: int = 32,
                 max_length: int | None = None, text_field: str = "text", verbose: bool = False,
                 trust_remote_code: bool = False, train_towers: str = "query", doc_chunk_size: int = 32,
                 temperature: float | None = None, training_settings: TrainingSettings | dict | None = None) -> None:
        BiEncoder.__init__(self, batch_size=batch_size, text_field=text_field, verbose=verbose)
        if train_towers not in TRAIN_TOWERS:
            raise ValueError(f"train_towers must be one of {TRAIN_TOWERS}, got {train_towers!r}.")
        if doc_chunk_size < 1:
            raise ValueError(f"doc_chunk_size must be a positive integer, got {doc_chunk_size!r}.")
        self.model_name = str(model_name_or_path)
        self.train_towers = train_towers
        self.doc_chunk_size = doc_chunk_size
        self._temperature = temperature
        if isinstance(training_settings, dict):
            training_settings = TrainingSettings(**training_settings)
        self.training_settings = training_settings or TrainingSettings()
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        kwargs = dict(pooling=pooling, normalize=normalize, max_length=max_length,
                      trust_remote_code=trust_remote_code)
        path = Path(model_name_or_path)
        if (path / "router_config.json").is_file():
            self.query_tower = TextEncoder.load(path / "query", **kwargs)
            self.doc_tower: TextEncoder | None = TextEncoder.load(path / "document", **kwargs)
        else:
            self.query_tower = TextEncoder.load(model_name_or_path, **kwargs)
            self.doc_tower = None
        self.query_tower.to(self.device).eval()
        if self.doc_tower is not None:
            self.doc_tower.to(self.device).eval()
        self._init_training_state()

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, **kwargs) -> PGRankBiEncoder:
        """Loads an encoder; keyword arguments as for the constructor."""
        return cls(name_or_path, **kwargs)

    def __repr__(self) -> str:
        return f"PGRankBiEncoder({self.model_name!r})"

    @property
    def temperature(self) -> float:
        """Divides the dot product to give the policy's scores during training."""
        if self._temperature is not None:
            return float(self._temperature)
        return 0.05 if self.query_tower.normalize else 1.0

    @property
    def max_length(self) -> int:
        return self.query_tower.max_length

    @property
    def document_tower(self) -> TextEncoder:
        """The tower that embeds documents: the query tower itself unless the two have been separated."""
        return self.doc_tower if self.doc_tower is not None else self.query_tower

    # ---- pyterrier-dr encoding -------------------------------------------------------------------

    def encode_queries_torch(self, texts: list[str], batch_size: int | None = None) -> torch.Tensor:
        """Embeds queries with autograd enabled when the caller enables it.

        Returns:
            ``[Q, D]`` float32 embeddings on the model's device.
        """
        return self.query_tower.encode(list(texts), batch_size or self.batch_size)

    def encode_queries(self, texts: Iterable[str], batch_size: int | None = None) -> np.ndarray:
        """Embeds queries in eval mode (dropout off, whatever the tower's mode); ``[Q, D]`` float32 array."""
        with torch.no_grad(), eval_mode(self.query_tower):
            return self.encode_queries_torch(list(texts), batch_size).cpu().numpy()

    def encode_docs(self, texts: Iterable[str], batch_size: int | None = None) -> np.ndarray:
        """Embeds documents with the document tower in eval mode; ``[N, D]`` float32 array."""
        with torch.no_grad(), eval_mode(self.document_tower):
            return self.document_tower.encode(list(texts), batch_size or self.batch_size).cpu().numpy()

    # ---- saving ----------------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Writes a folder that this class, ``pt.Artifact.load`` and ``SentenceTransformer`` all load.

        Weights are written as safetensors; the folder holds no pickles. A model whose towers differ is
        written as a sentence-transformers ``Router`` with a ``query`` and a ``document`` tower, each a
        complete sentence-transformers folder.

        Args:
            path: The folder to write; created when missing.

        Returns:
            The folder.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if self.doc_tower is None:
            self.query_tower.save(path)
        else:
            self._save_routed(path)
        meta = {"type": self.ARTIFACT_TYPE, "format": self.ARTIFACT_FORMAT, "package_hint": "pyterrier-pgrank"}
        (path / "pt_meta.json").write_text(json.dumps(meta, indent=2))
        (path / "config_sentence_transformers.json").write_text(json.dumps(
            {"similarity_fn_name": "dot", "prompts": {"query": "", "document": ""}}, indent=2))
        logger.info("saved %r to %s", self, path)
        return path

    def _save_routed(self, path: Path) -> None:
        types, structure = {}, {}
        for route, tower in (("query", self.query_tower), ("document", self.doc_tower)):
            tower.save(path / route)
            modules = tower.sbert_modules(prefix=f"{route}/")
            types.update({module["path"]: module["type"] for module in modules})
            structure[route] = [module["path"] for module in modules]
        router = {"types": types, "structure": structure,
                  "parameters": {"default_route": "document", "allow_empty_key": True}}
        (path / "router_config.json").write_text(json.dumps(router, indent=2))
        (path / "modules.json").write_text(json.dumps(
            [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Router"}], indent=2))

    def _split_towers(self) -> None:
        """Gives documents their own frozen copy of the current encoder (start of query-tower training)."""
        if self.doc_tower is None:
            self.doc_tower = copy.deepcopy(self.query_tower).requires_grad_(False).eval()
