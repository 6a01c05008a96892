"""Training the embedding model as a Pipes process: ``core.training.train_embedding_model``, the
function the ``embedding_model`` asset calls, logging into the Dagster run's MLflow run (or a run of
its own outside Dagster), with the asset's own metadata reported back."""

from __future__ import annotations

from collections.abc import Sequence

from llmops_dagster.pipes._model import index, must_train
from llmops_dagster.pipes._session import arguments, environment, logger, mlflow_run, open_pipes, report, resources


def main(argv: Sequence[str] | None = None) -> None:
    args = arguments("train", argv)
    with open_pipes() as pipes:
        from llmops_dagster.assets.training import embedding_model_metadata
        from llmops_dagster.core.training import train_embedding_model

        settings = environment(args, pipes)
        built = resources(settings)
        must_train(settings, built, "train")
        _, table = index(settings, built)
        with mlflow_run(pipes, built["registry"], settings.name, "train"):
            trained = train_embedding_model(table, built["embedder"].load(), built["training"].config(), log=logger(pipes).info)
        report(pipes, {**embedding_model_metadata(trained), "compute": "pipes"})


if __name__ == "__main__":
    main()
