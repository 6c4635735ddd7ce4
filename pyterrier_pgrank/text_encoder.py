"""A Hugging Face transformer with pooling: the tower of a dense bi-encoder, read and written as sentence-transformers.

A :class:`TextEncoder` turns texts into single vectors: token states from any ``AutoModel`` encoder, pooled
(``mean``, ``cls`` or ``max`` over the attention mask) and optionally L2-normalised. It reads the pooling
mode, the normalisation and the maximum length from a sentence-transformers folder (``modules.json``,
``1_Pooling/config.json``, ``sentence_bert_config.json``) and writes the same layout, so that
``sentence_transformers.SentenceTransformer`` loads what it saves.

Shape legend: ``B`` texts in a batch, ``T`` tokens, ``H`` hidden size, ``D`` embedding size (``D == H``).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

POOLING_MODES = ("mean", "cls", "max")
DEFAULT_MAX_LENGTH = 256

# sentence-transformers' legacy module names: every release from 2.x to 6.x resolves them.
_ST_TRANSFORMER = "sentence_transformers.models.Transformer"
_ST_POOLING = "sentence_transformers.models.Pooling"
_ST_NORMALIZE = "sentence_transformers.models.Normalize"
_POOLING_KEYS = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token", "max": "pooling_mode_max_tokens"}


def read_sbert_config(path: str | Path) -> dict:
    """Reads pooling, normalisation and maximum length from a sentence-transformers folder.

    Args:
        path: A local folder; a name on the Hugging Face hub or a plain transformers folder yields ``{}``.

    Returns:
        A dict with any of ``pooling`` (str), ``normalize`` (bool) and ``max_length`` (int) that were found.
    """
    path = Path(path)
    modules_file = path / "modules.json"
    if not modules_file.is_file():
        return {}
    found: dict = {"normalize": False}
    for module in json.loads(modules_file.read_text()):
        kind = module["type"].rsplit(".", 1)[-1].lower()
        if kind == "normalize":
            found["normalize"] = True
        elif kind == "pooling":
            found["pooling"] = _read_pooling_mode(json.loads((path / module["path"] / "config.json").read_text()))
    sbert_file = path / "sentence_bert_config.json"
    if sbert_file.is_file():
        max_length = json.loads(sbert_file.read_text()).get("max_seq_length")
        if max_length:
            found["max_length"] = int(max_length)
    return found


def _read_pooling_mode(config: dict) -> str:
    if "pooling_mode" in config:  # sentence-transformers >= 6 writes a single key
        mode = config["pooling_mode"]
    else:
        modes = [mode for mode, key in _POOLING_KEYS.items() if config.get(key)]
        known = set(_POOLING_KEYS.values())
        unknown = [k for k, v in config.items() if k.startswith("pooling_mode") and v and k not in known]
        mode = modes[0] if len(modes) == 1 and not unknown else str(modes + unknown)
    if mode not in POOLING_MODES:
        raise ValueError(f"Unsupported pooling {mode!r} in the sentence-transformers config; expected one of "
                         f"{POOLING_MODES}.")
    return mode


class TextEncoder(torch.nn.Module):
    """One tower: a transformer encoder followed by pooling and optional L2 normalisation.

    .. math::
        e(x) = \\operatorname{normalize}\\big(\\operatorname{pool}(\\mathrm{BERT}(x), \\text{mask})\\big)

    Args:
        transformer: A Hugging Face ``PreTrainedModel`` returning ``last_hidden_state``.
        tokenizer: Its tokenizer.
        pooling: ``'mean'`` (masked average), ``'cls'`` (first token) or ``'max'`` (masked maximum).
        normalize: Whether to L2-normalise the pooled vector (dot product becomes cosine similarity).
        max_length: Texts are truncated to this many tokens.
    """

    def __init__(self, transformer: torch.nn.Module, tokenizer, *, pooling: str = "mean", normalize: bool = False,
                 max_length: int = DEFAULT_MAX_LENGTH) -> None:
        super().__init__()
        if pooling not in POOLING_MODES:
            raise ValueError(f"pooling must be one of {POOLING_MODES}, got {pooling!r}.")
        self.transformer = transformer
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize = normalize
        self.max_length = max_length

    @classmethod
    def load(cls, name_or_path: str | Path, *, pooling: str | None = None, normalize: bool | None = None,
             max_length: int | None = None, trust_remote_code: bool = False) -> TextEncoder:
        """Loads an encoder; explicit arguments override what a sentence-transformers config says.

        Args:
            name_or_path: A Hugging Face model id, a transformers folder or a sentence-transformers folder.
            pooling: Pooling mode; default from the folder's config, else ``'mean'``.
            normalize: L2 normalisation; default from the folder's config, else ``False``.
            max_length: Truncation length; default from the folder's config, else 256.
            trust_remote_code: Passed to ``transformers``; off by default so no downloaded code runs.
        """
        from transformers import AutoModel, AutoTokenizer

        found = read_sbert_config(name_or_path)
        transformer = AutoModel.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code,
                                                use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code)
        return cls(
            transformer, tokenizer,
            pooling=pooling if pooling is not None else found.get("pooling", "mean"),
            normalize=normalize if normalize is not None else found.get("normalize", False),
            max_length=max_length if max_length is not None else found.get("max_length", DEFAULT_MAX_LENGTH),
        )

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dim(self) -> int:
        """The embedding size ``D``."""
        return int(self.transformer.config.hidden_size)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Tokenises, pads to the longest text and truncates to ``max_length``; tensors are on the model's device."""
        inputs = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                                return_tensors="pt")
        return {name: tensor.to(self.device) for name, tensor in inputs.items()}

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Embeds tokenised texts.

        Args:
            inputs: The tokenizer's output; ``attention_mask`` is ``[B, T]``.

        Returns:
            ``[B, D]`` float32 embeddings.
        """
        states = self.transformer(**inputs).last_hidden_state.float()  # [B, T, H]
        mask = inputs["attention_mask"].unsqueeze(-1).to(states.dtype)  # [B, T, 1]
        if self.pooling == "mean":
            pooled = (states * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        elif self.pooling == "cls":
            pooled = states[:, 0]
        else:
            pooled = states.masked_fill(mask == 0, -1e9).max(1).values
        if self.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
        return pooled  # [B, D]

    def encode(self, texts: list[str], batch_size: int = 32) -> torch.Tensor:
        """Embeds texts in batches of similar length, keeping autograd only when it is enabled by the caller.

        Args:
            texts: ``B`` strings.
            batch_size: Texts per forward pass.

        Returns:
            ``[B, D]`` embeddings on the model's device, in the order of ``texts``.
        """
        texts = [str(t) for t in texts]
        if not texts:
            return torch.empty((0, self.dim), device=self.device)
        # Sorting by length keeps padding small; the inverse permutation restores the input order.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        chunks = [self(self.tokenize([texts[i] for i in order[start:start + batch_size]]))
                  for start in range(0, len(texts), batch_size)]
        embeddings = torch.cat(chunks)  # [B, D] in sorted order
        inverse = torch.empty(len(order), dtype=torch.long, device=embeddings.device)
        inverse[torch.tensor(order, device=embeddings.device)] = torch.arange(len(order), device=embeddings.device)
        return embeddings[inverse]

    def save(self, path: str | Path, *, modules_file: bool = True) -> None:
        """Writes the tower as a sentence-transformers folder (safetensors weights, no pickles).

        Args:
            path: The folder; created when missing.
            modules_file: Whether to write ``modules.json`` (a tower inside a routed model has none).
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.transformer.save_pretrained(path, safe_serialization=True)
        self.tokenizer.save_pretrained(path)
        (path / "sentence_bert_config.json").write_text(
            json.dumps({"max_seq_length": self.max_length, "do_lower_case": False}, indent=2))
        (path / "1_Pooling").mkdir(exist_ok=True)
        pooling_config = {"word_embedding_dimension": self.dim, **{key: mode == self.pooling
                                                                   for mode, key in _POOLING_KEYS.items()}}
        (path / "1_Pooling" / "config.json").write_text(json.dumps(pooling_config, indent=2))
        if self.normalize:
            (path / "2_Normalize").mkdir(exist_ok=True)
        if modules_file:
            (path / "modules.json").write_text(json.dumps(self.sbert_modules(), indent=2))

    def sbert_modules(self, prefix: str = "") -> list[dict]:
        """The ``modules.json`` entries of this tower, with paths relative to its folder plus ``prefix``."""
        modules = [
            {"idx": 0, "name": "0", "path": prefix.rstrip("/"), "type": _ST_TRANSFORMER},
            {"idx": 1, "name": "1", "path": prefix + "1_Pooling", "type": _ST_POOLING},
        ]
        if self.normalize:
            modules.append({"idx": 2, "name": "2", "path": prefix + "2_Normalize", "type": _ST_NORMALIZE})
        return modules
