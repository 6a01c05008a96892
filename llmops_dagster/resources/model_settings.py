"""Settings of the model stages, each mirroring a core configuration dataclass: training, the RAG
model (retrieval and generation) and the evaluation gate."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import dagster as dg

if TYPE_CHECKING:
    from llmops_dagster.core.evaluation import GateSettings
    from llmops_dagster.core.rag import RagConfig
    from llmops_dagster.core.training import TrainingConfig


class _SettingsResource(dg.ConfigurableResource):
    """A resource whose fields mirror one of the core configuration dataclasses."""

    def _fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in type(self).model_fields}


class TrainingResource(_SettingsResource):
    """How the embedding model is trained: a query-side adapter (default) or a full fine-tune.

    ``trains`` is false in an environment that adopts its source's champion instead of training.
    """

    trains: bool = True

    mode: str = "adapter"
    held_out: float = 0.3
    seed: int = 0
    epochs: int = 30
    learning_rate: float = 3e-4
    l2: float = 1.0
    temperature: float = 0.03
    batch_size: int = 32
    max_pairs: int = 3000
    max_held_out: int = 500
    full_learning_rate: float = 2e-5
    full_epochs: int = 1
    device: str = "auto"

    def config(self) -> TrainingConfig:
        from llmops_dagster.core.training import TrainingConfig

        return TrainingConfig(**{k: v for k, v in self._fields().items() if k != "trains"})


class RagResource(_SettingsResource):
    """Retrieval (k, vector/text/hybrid) and the answer generator bundled into the RAG model."""

    k: int = 5
    mode: str = "hybrid"
    fusion: str = "rrf"
    text_weight: float = 0.5
    depth: int = 50
    rerank: str = "none"
    rerank_depth: int = 20
    select_by_evaluation: bool = True
    generator_model: str | None = None
    max_new_tokens: int = 96
    max_sentences: int = 1
    min_score: float = 0.3

    def config(self) -> RagConfig:
        from llmops_dagster.core.rag import RagConfig

        return RagConfig(**self._fields())


class EvaluationResource(_SettingsResource):
    """The gate: minimum metrics, the tolerance against the champion, and the smoke question."""

    min_recall_at_5: float = 0.6
    min_mrr_at_10: float = 0.5
    champion_tolerance: float = 0.02
    baseline_tolerance: float = 0.02
    smoke_question: str = "What do these documents describe?"

    def gate(self) -> GateSettings:
        from llmops_dagster.core.evaluation import GateSettings

        return GateSettings(**self._fields())
