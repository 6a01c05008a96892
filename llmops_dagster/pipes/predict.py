"""Batch inference as a Pipes process: the landing zone's questions answered by the environment's
champion (or challenger), written to ``batch_predictions`` by ``core.batch.predict_batch``, the
function the in-process asset calls."""

from __future__ import annotations

from collections.abc import Sequence

from llmops_dagster.pipes._session import arguments, environment, logger, open_pipes, resources, run_id


def main(argv: Sequence[str] | None = None) -> None:
    args = arguments("predict", argv)
    with open_pipes() as pipes:
        from llmops_dagster.core.batch import predict_batch

        settings = environment(args, pipes)
        built = resources(settings)
        engine, registry = built["engine"], built["registry"]
        result = predict_batch(
            run_id(pipes),
            settings.landing,
            built["lancedb"].store(),
            registry.client(),
            registry.registered_model,
            engine=engine.engine,
            spark_master=engine.spark_master,
            spark_remote=engine.spark_remote,
            log=logger(pipes).info,
            warn=logger(pipes).warning,
        )
        pipes.report_asset_materialization(
            metadata={**result.metadata(), "summary": {"raw_value": result.summary(), "type": "md"}, "compute": "pipes"}
        )


if __name__ == "__main__":
    main()
