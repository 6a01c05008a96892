"""The RAG model as an MLflow pyfunc, and its registration.

Importing this module imports MLflow; Dagster assets import it inside their bodies so that loading
the definitions stays fast.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.models import infer_signature

from llmops_dagster.core.checks import Verdict
from llmops_dagster.core.model_spec import ADAPTER_ARTIFACT, EMBEDDER_ARTIFACT, GENERATOR_ARTIFACT, ModelSpec, open_pipeline
from llmops_dagster.core.rag import OUTPUT_COLUMNS, QUESTION_COLUMN, RagConfig

PACKAGE_DIR = Path(__file__).resolve().parents[1]
# Models from code: MLflow stores this script, not a pickle, and runs it to build the model at load.
MODEL_SCRIPT = Path(__file__).resolve().with_name("rag_pyfunc.py")
MODEL_NAME_IN_RUN = "rag_model"
CONTENT_TAG = "llmops_content_digest"
# What the pyfunc imports at load time; the package itself travels with the model (code_paths).
PIP_REQUIREMENTS = [
    "torch>=2.5,<2.14",
    "transformers>=5,<6",
    "lancedb>=0.40,<0.41",
    "pyarrow",
    "pandas",
    "numpy",
    "mlflow>=3,<4",
]


class RagModel(mlflow.pyfunc.PythonModel):
    """``predict`` takes a DataFrame with a ``question`` column; params ``k`` and ``mode`` override the defaults."""

    def load_context(self, context: Any) -> None:
        artifacts = context.artifacts
        self.spec = ModelSpec.from_config(context.model_config)
        self.pipeline = open_pipeline(
            self.spec, artifacts[EMBEDDER_ARTIFACT], artifacts.get(ADAPTER_ARTIFACT), artifacts.get(GENERATOR_ARTIFACT)
        )

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        params = params or {}
        if QUESTION_COLUMN not in model_input.columns:
            raise ValueError(f"input needs a '{QUESTION_COLUMN}' column, got {list(model_input.columns)}")
        k = int(params.get("k") or self.spec.rag.k)
        mode = params.get("mode") or self.spec.rag.mode
        rows = [self.pipeline.answer(str(question), k, mode).row() for question in model_input[QUESTION_COLUMN]]
        return pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))


def signature_and_example(spec: ModelSpec) -> tuple[Any, pd.DataFrame]:
    """Inputs (``question``), outputs (answer, passages, sources, scores…) and the ``k``/``mode`` params."""
    example = pd.DataFrame({QUESTION_COLUMN: ["What must pass before a release?"]})
    output = pd.DataFrame(
        [{"answer": "text [1]", "found": True, "passages": ["passage"], "sources": ["file.pdf#page=1"], "scores": [0.5], "latency_ms": 1.0,
          "cited": [1], "prompt_tokens": 1, "completion_tokens": 1, "generator": "{}", "error": ""}],
        columns=list(OUTPUT_COLUMNS),
    )
    with warnings.catch_warnings():
        # MLflow's note that integer columns cannot hold missing values: these never miss.
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column", category=UserWarning)
        return infer_signature(example, output, params={"k": spec.rag.k, "mode": spec.rag.mode}), example


def weights_digest(path: Path) -> str:
    """sha256 of a local generator's weights: a GGUF file, or every file of a model folder."""
    from llmops_dagster.core.generation import file_sha256

    if path.is_file():
        return file_sha256(path)
    digest = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(item.relative_to(path)).encode())
        digest.update(file_sha256(item).encode())
    return digest.hexdigest()


def content_digest(spec: ModelSpec, embedder_fingerprint: str, adapter: np.ndarray | None, generator: Path | None) -> str:
    """Equal digests mean equal behaviour on the same index: a re-run with no change registers nothing
    new. The generator counts by its identity (kind, model, parameters, prompt template digest) and
    a local one by its weights, not by where its file happens to lie."""
    config = {key: value for key, value in spec.to_config().items() if key != "index_version"}  # data, not model
    rag = json.loads(config["rag"])
    rag["generator"].pop("path", None)
    config["rag"] = rag
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    digest.update(embedder_fingerprint.encode())
    if adapter is not None:
        digest.update(np.ascontiguousarray(adapter, dtype=np.float32).tobytes())
    digest.update(json.dumps(spec.rag.generator.identity(), sort_keys=True).encode())
    if generator is not None:
        digest.update(weights_digest(generator).encode())
    return digest.hexdigest()[:20]


def pip_requirements(spec: ModelSpec) -> list[str]:
    """What the pyfunc imports at load time, with what its generator needs."""
    kind = spec.rag.generator.kind
    extra = {"openai": ["openai>=1.50"], "local": ["gguf>=0.10", "accelerate>=1.0"]}.get(kind, [])
    return [*PIP_REQUIREMENTS, *extra]


def log_rag_model(
    spec: ModelSpec,
    embedder_dir: Path,
    adapter: np.ndarray | None,
    generator: Path | None,
    registered_name: str,
    tags: dict[str, str],
) -> str:
    """Log the pyfunc into the active MLflow run and register it; returns the new version number."""
    signature, example = signature_and_example(spec)
    with tempfile.TemporaryDirectory() as scratch:
        artifacts = {EMBEDDER_ARTIFACT: str(embedder_dir)}
        if adapter is not None:
            adapter_path = Path(scratch) / "adapter.npy"
            np.save(adapter_path, adapter.astype(np.float32))
            artifacts[ADAPTER_ARTIFACT] = str(adapter_path)
        if generator is not None:  # the weights travel with the version: a GGUF file or a model folder
            artifacts[GENERATOR_ARTIFACT] = str(generator)
        info = mlflow.pyfunc.log_model(
            name=MODEL_NAME_IN_RUN,
            python_model=str(MODEL_SCRIPT),
            artifacts=artifacts,
            model_config=spec.to_config(),
            signature=signature,
            input_example=example,
            code_paths=[str(PACKAGE_DIR)],
            pip_requirements=pip_requirements(spec),
            registered_model_name=registered_name,
            tags=tags,
        )
    return str(info.registered_model_version)


def register_challenger(
    client: Any,
    name: str,
    spec: ModelSpec,
    embedder_dir: Path,
    adapter: np.ndarray | None,
    generator: Path | None,
    tags: dict[str, str],
) -> tuple[str, bool]:
    """Register the model as ``name``'s challenger: (version, whether an existing version with the
    same content was reused instead). A new version starts PENDING, with ``tags`` and its content
    digest; the gate's checks move it to PASSED or FAILED."""
    from llmops_dagster.core import registry

    digest = content_digest(spec, spec.index_embedding_model, adapter, generator)
    existing = registry.find_version(client, name, **{CONTENT_TAG: digest})
    if existing is not None:
        version = str(existing.version)
    else:
        version = log_rag_model(spec, embedder_dir, adapter, generator, name, tags={"llmops_variant": spec.embedder_variant})
        for key, value in {CONTENT_TAG: digest, **tags, registry.VALIDATION_STATUS: registry.PENDING}.items():
            client.set_model_version_tag(name, version, key, value)
    client.set_registered_model_alias(name, registry.CHALLENGER, version)
    return version, existing is not None


def local_generator_weights(config: RagConfig) -> Path | None:
    """The weights of a local generator (a GGUF file or a model folder), which the registered
    version carries; None for the extractive generator and for an endpoint."""
    generator = config.generator
    if generator.kind != "local":
        return None
    path = Path(generator.path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"rag.generator.path '{generator.path}' does not exist (a transformers model folder or a .gguf file)")
    return path


def generator_params(identity: dict[str, Any]) -> dict[str, str]:
    """The generator's identity as flat MLflow params: kind, model, template digest, parameters."""
    flat = {"kind": identity["kind"], "model": identity["model"] or "", "template": identity["template"] or ""}
    flat.update({key: str(value) for key, value in identity["parameters"].items()})
    return flat


@dataclass(frozen=True)
class Registration:
    """The challenger a registration left: a new version, or an equal one reused."""

    name: str
    version: str
    reused: bool
    spec: ModelSpec
    generator: dict[str, Any]  # the generator's identity

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def challenger_spec(
    lancedb_uri: str, table: Any, index_fingerprint: str, rag: RagConfig, ann: Any, variant: str, device: str
) -> ModelSpec:
    """What a version registered now is made of: the index as it stands (``table``), the retrieval
    and generator, and the embedder variant."""
    from llmops_dagster.core import store

    return ModelSpec(
        lancedb_uri=lancedb_uri,
        table=store.EMBEDDINGS,
        index_embedding_model=index_fingerprint,
        rag=rag,
        ann=ann,
        embedder_variant=variant,
        device=device,
        index_version=table.version,
        registered_index=lancedb_uri,
    )


def register_rag_model(
    client: Any, name: str, spec: ModelSpec, embedder_dir: Path, adapter: np.ndarray | None, run_id: str, training_run_id: str
) -> Registration:
    """Log the generator's identity to the active MLflow run and register the model as ``name``'s
    challenger (``register_challenger``), tagged with the run, the training and what it is made of.
    The one code path of the ``rag_model`` asset and the ``register`` Pipes step."""
    from llmops_dagster.core import registry

    generator = local_generator_weights(spec.rag)
    identity = spec.rag.generator.identity()
    mlflow.log_params({f"generator.{key}": value for key, value in generator_params(identity).items()})
    tags = {
        registry.DAGSTER_RUN_TAG: run_id,
        "embedder_variant": spec.embedder_variant,
        "index_embedding_model": spec.index_embedding_model,
        "retrieval": spec.rag.retrieval_label(),
        "training_run_id": training_run_id,
        "generator": json.dumps(identity, sort_keys=True),
    }
    version, reused = register_challenger(client, name, spec, embedder_dir, adapter, generator, tags=tags)
    return Registration(name, version, reused, spec, identity)


def loads_and_answers(name: str, version: str, lancedb_uri: str | None, question: str) -> Verdict:
    """The gate's first check: the version loads with ``mlflow.pyfunc.load_model`` and answers ``question``."""
    from llmops_dagster.core.generation import GeneratorUnavailableError

    try:
        started = time.perf_counter()
        model = load_version(name, version, lancedb_uri)
        model.unwrap_python_model().pipeline.generator.check()  # an endpoint that cannot be reached fails here, by URL
        answer = model.predict(pd.DataFrame({QUESTION_COLUMN: [question]})).iloc[0]
        seconds = time.perf_counter() - started
    except GeneratorUnavailableError as error:
        return Verdict(False, f"v{version}'s generator cannot answer: {error}")
    except Exception as error:  # the verdict is the point: any failure to load or answer fails the gate
        return Verdict(False, f"v{version} did not load or answer: {type(error).__name__}: {error}")
    problem = answer.get("error") or ("" if len(answer["passages"]) else "returned no passages")
    return Verdict(
        not problem and bool(answer["answer"]),
        f"v{version}: {problem}" if problem else f"v{version} answered '{question}' with {len(answer['passages'])} passage(s)",
        {"load_and_answer_seconds": round(seconds, 2), "smoke_answer": str(answer["answer"])[:300], "generator": str(answer.get("generator") or "")},
    )


def signature_verdict(name: str, version: str) -> Verdict:
    """The gate's second check: the signature takes a question and returns every output column, with an input example."""
    from mlflow.models import get_model_info

    from llmops_dagster.core.model_spec import signature_problems

    info = get_model_info(f"models:/{name}/{version}")
    problems = signature_problems(info.signature.to_dict() if info.signature else None, info.saved_input_example_info is not None)
    return Verdict(not problems, "; ".join(problems) or f"v{version}: signature and input example are valid", {"model_version": version})


def index_override(lancedb_uri: str | None) -> dict[str, str] | None:
    """``model_config`` that points a version at this environment's index (a promoted copy serves the
    data of the environment it was copied into)."""
    return {"lancedb_uri": lancedb_uri} if lancedb_uri else None


def load_version(registered_name: str, version: str, lancedb_uri: str | None = None) -> mlflow.pyfunc.PyFuncModel:
    """A registered version as a pyfunc, optionally pointed at another environment's index."""
    return mlflow.pyfunc.load_model(f"models:/{registered_name}/{version}", model_config=index_override(lancedb_uri))


SPARK_RESULT_TYPE = (
    "answer string, found boolean, passages array<string>, sources array<string>, scores array<double>, latency_ms double, "
    "cited array<bigint>, prompt_tokens bigint, completion_tokens bigint, generator string, error string"
)


def predict_local(model_uri: str, questions: list[str], lancedb_uri: str | None = None) -> pd.DataFrame:
    model = mlflow.pyfunc.load_model(model_uri, model_config=index_override(lancedb_uri))
    return model.predict(pd.DataFrame({QUESTION_COLUMN: questions}))


def predict_spark(spark: Any, model_uri: str, questions: list[str], lancedb_uri: str | None = None) -> pd.DataFrame:
    """The same model as a Spark UDF (``mlflow.pyfunc.spark_udf``), loaded once per executor."""
    # env_manager="local" on purpose: the executors run this interpreter, which has the package and the
    # model; MLflow warns about it on every call, so its logger is quieted for this one.
    pyfunc_log = logging.getLogger("mlflow.pyfunc")
    level = pyfunc_log.level
    pyfunc_log.setLevel(logging.ERROR)
    try:
        udf = mlflow.pyfunc.spark_udf(
            spark, model_uri, result_type=SPARK_RESULT_TYPE, env_manager="local", model_config=index_override(lancedb_uri)
        )
    finally:
        pyfunc_log.setLevel(level)
    frame = spark.createDataFrame(pd.DataFrame({"position": range(len(questions)), QUESTION_COLUMN: questions}))
    result = frame.withColumn("prediction", udf(QUESTION_COLUMN)).select("position", "prediction.*").toPandas()
    return result.sort_values("position").drop(columns="position").reset_index(drop=True)
