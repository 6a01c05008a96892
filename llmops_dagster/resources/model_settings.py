"""Settings of the model stages, each carrying one section of the environment's settings and
turning it into its core dataclass: training, the RAG model (retrieval and generation) and the
evaluation gate."""

from __future__ import annotations

from typing import TYPE_CHECKING

import dagster as dg

from llmops_dagster.resources.section import SettingsSection

if TYPE_CHECKING:
    from llmops_dagster.core.evaluation import GateSettings
    from llmops_dagster.core.rag import RagConfig
    from llmops_dagster.core.training import TrainingConfig


class TrainingResource(dg.ConfigurableResource):
    """How the embedding model is trained: a query-side adapter (default) or a full fine-tune.

    ``trains`` is false in an environment that adopts its source's champion instead of training.
    """

    trains: bool = True
    training: SettingsSection

    def config(self) -> TrainingConfig:
        from llmops_dagster.core.training import TrainingConfig

        return self.training.to(TrainingConfig)


class RagResource(dg.ConfigurableResource):
    """Retrieval (k, mode, fusion, rerank) and the answer generator bundled into the RAG model."""

    rag: SettingsSection

    def config(self) -> RagConfig:
        from llmops_dagster.core.rag import RagConfig

        return self.rag.to(RagConfig)


class EvaluationResource(dg.ConfigurableResource):
    """The gate: minimum metrics, the tolerances against the champion and the naive baseline, and
    the smoke question."""

    evaluation: SettingsSection

    def gate(self) -> GateSettings:
        from llmops_dagster.core.evaluation import GateSettings

        return self.evaluation.to(GateSettings)
