"""What a registered RAG model version is made of (``ModelSpec``, stored as the pyfunc's
``model_config``), how to open the pipeline it describes, and what a valid signature is.

Free of MLflow imports, so that Spark executors and the evaluation open a version's pipeline without
loading MLflow; ``rag_model`` wraps these as the pyfunc and registers it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from llmops_dagster.core.index import AnnParams
from llmops_dagster.core.rag import (
    OUTPUT_COLUMNS,
    QUESTION_COLUMN,
    IndexMismatchError,
    QueryEncoder,
    RagConfig,
    RagPipeline,
    index_models,
)

if TYPE_CHECKING:
    from lancedb.table import Table

EMBEDDER_ARTIFACT = "embedder"
ADAPTER_ARTIFACT = "adapter"
GENERATOR_ARTIFACT = "generator"


@dataclass(frozen=True)
class ModelSpec:
    """What a model version is made of; stored as the pyfunc's ``model_config``."""

    lancedb_uri: str
    table: str
    index_embedding_model: str  # fingerprint of the vectors this version's queries must meet
    rag: RagConfig
    ann: AnnParams
    embedder_variant: str  # base | trained
    device: str = "auto"
    index_version: int | None = None  # the table version it was registered against, to fall back to
    registered_index: str | None = None  # lancedb_uri at registration; index_version is a version of this table

    def to_config(self) -> dict[str, Any]:
        return {
            "lancedb_uri": self.lancedb_uri,
            "table": self.table,
            "index_embedding_model": self.index_embedding_model,
            "rag": json.dumps(asdict(self.rag)),
            "ann": json.dumps(asdict(self.ann)),
            "embedder_variant": self.embedder_variant,
            "device": self.device,
            "index_version": self.index_version,
            "registered_index": self.registered_index,
        }

    @staticmethod
    def from_config(config: dict[str, Any]) -> ModelSpec:
        return ModelSpec(
            lancedb_uri=config["lancedb_uri"],
            table=config["table"],
            index_embedding_model=config["index_embedding_model"],
            rag=rag_config(json.loads(config["rag"])),
            ann=AnnParams.from_stored(json.loads(config["ann"])),
            embedder_variant=config["embedder_variant"],
            device=config.get("device", "auto"),
            index_version=config.get("index_version"),
            registered_index=config.get("registered_index"),
        )


def rag_config(stored: dict[str, Any]) -> RagConfig:
    """A version's RagConfig from its stored JSON. Versions registered before generators were
    configurable stored ``generator_model`` (a transformers folder, or null for extractive) and
    ``max_new_tokens``; they load as the same generator."""
    stored = dict(stored)
    if "generator" not in stored:
        folder, new_tokens = stored.pop("generator_model", None), stored.pop("max_new_tokens", 96)
        stored["generator"] = {"kind": "local", "path": folder, "max_new_tokens": new_tokens} if folder else {}
    return RagConfig(**stored)


def _matching_version(table: Table, spec: ModelSpec, found: set[str]) -> Table:
    """After the index moved to another embedding model, serve from the table version this model was
    registered against (Lance keeps old versions), so a champion keeps answering until it is replaced."""
    problem = (
        f"this model version needs an index of {spec.index_embedding_model}, but {spec.lancedb_uri} now holds "
        f"{', '.join(sorted(found))}"
    )
    if spec.index_version is None or spec.registered_index != spec.lancedb_uri:
        # Another environment's index (a promoted copy): its table versions mean nothing here.
        raise IndexMismatchError(f"{problem}; re-run the environment or load a matching version")
    try:
        table.checkout(spec.index_version)
    except Exception as error:  # the version was cleaned up, or the store cannot time-travel
        raise IndexMismatchError(f"{problem}, and its table version {spec.index_version} is gone ({error})") from None
    if index_models(table) != {spec.index_embedding_model}:
        raise IndexMismatchError(f"{problem}, and table version {spec.index_version} does not match either")
    return table


def open_pipeline(spec: ModelSpec, embedder_dir: str, adapter_path: str | None, generator_path: str | None) -> RagPipeline:
    """Build the pipeline a model version describes, refusing an index of another embedding model.
    ``generator_path`` is the version's own copy of a local generator (folder or GGUF file)."""
    from llmops_dagster.core.embedding import EmbedderConfig, load_embedder
    from llmops_dagster.core.store import LanceStore

    table = LanceStore(spec.lancedb_uri).open(spec.table)
    if table is None:
        raise FileNotFoundError(f"no '{spec.table}' table at {spec.lancedb_uri}; ingest documents first")
    found = index_models(table)
    if found and found != {spec.index_embedding_model}:
        table = _matching_version(table, spec, found)
    embedder = load_embedder(EmbedderConfig(model=embedder_dir, device=spec.device))
    adapter = np.load(adapter_path) if adapter_path else None
    rag = spec.rag
    if generator_path and rag.generator.kind == "local":
        rag = replace(rag, generator=replace(rag.generator, path=generator_path))
    return RagPipeline(QueryEncoder(embedder, adapter), table, spec.ann, rag)


def signature_problems(signature: dict[str, str] | None, has_input_example: bool) -> list[str]:
    """What is wrong with a logged model's signature (``ModelSignature.to_dict()``); empty when valid."""
    if signature is None:
        return ["the model has no signature"]
    problems = []
    inputs = {column.get("name"): column.get("type") for column in json.loads(signature.get("inputs") or "[]")}
    if inputs.get(QUESTION_COLUMN) != "string":
        problems.append(f"input must have a '{QUESTION_COLUMN}' string column, got {inputs}")
    outputs = {column.get("name") for column in json.loads(signature.get("outputs") or "[]")}
    missing = [name for name in OUTPUT_COLUMNS if name not in outputs]
    if missing:
        problems.append(f"outputs lack {missing}")
    params = {param.get("name") for param in json.loads(signature.get("params") or "[]")}
    if not {"k", "mode"} <= params:
        problems.append(f"params must include k and mode, got {sorted(params)}")
    if not has_input_example:
        problems.append("no input example was logged")
    return problems
