"""monitoring and unanswered_questions: what the served model answered, window by window.

Both are partitioned by the environment's ``monitoring.window`` (daily by default, in UTC). The
window still under way is a partition too, so that new requests can refresh it; a past window is
backfilled like any partition (the UI, or ``dagster asset materialize --partition``). Their checks
and partitions depend on the environment's settings, so they are built per environment here rather
than declared once per module.
"""

from datetime import UTC, datetime, time
from typing import TYPE_CHECKING, Any

import dagster as dg

from llmops_dagster.assets._metadata import markdown_table, table_metadata
from llmops_dagster.core import monitoring_table
from llmops_dagster.core.monitoring import MonitoringConfig, check_names, check_thresholds, is_drift_check, partition_schedule
from llmops_dagster.resources import EmbedderResource, LanceDBResource
from llmops_dagster.tags import ENV_TAG

if TYPE_CHECKING:
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

    from llmops_dagster.core.store import LanceStore

MONITORING = "monitoring"
UNANSWERED = "unanswered_questions"
MONITOR_JOB = "monitor"
GROUP = "monitoring"


def monitoring_partitions(config: MonitoringConfig) -> dg.TimeWindowPartitionsDefinition:
    """One partition per epoch-aligned window in UTC, from ``monitoring.start`` up to the window now
    under way (``end_offset=1``)."""
    cron, fmt = partition_schedule(config.window)
    start = datetime.combine(config.start, time(), UTC)
    if cron == "0 0 * * *":
        return dg.DailyPartitionsDefinition(start_date=start, end_offset=1, timezone="UTC")
    return dg.TimeWindowPartitionsDefinition(cron_schedule=cron, start=start, fmt=fmt, end_offset=1, timezone="UTC")


def partition_bounds(context: dg.AssetExecutionContext) -> tuple[datetime, datetime]:
    window = context.partition_time_window
    return datetime.fromtimestamp(window.start.timestamp(), UTC), datetime.fromtimestamp(window.end.timestamp(), UTC)


def scoring(lance: "LanceStore", embedder: EmbedderResource, config: MonitoringConfig | None = None) -> monitoring_table.Scoring:
    """The index's embedding model (loaded only if the window has questions) and vectors, and the
    configured answer scorers when ``config`` is given (loaded only if the window has answers)."""
    return monitoring_table.lazy_scoring(lance, embedder.load, config.scorers if config is not None else None)


def check_description(config: MonitoringConfig, name: str) -> str:
    threshold = check_thresholds(config)[name]
    levels = ", ".join(f"{severity} {level:g}" for severity, level in (("WARN", threshold.warn), ("ERROR", threshold.error)) if level is not None)
    kind = "drift" if is_drift_check(name) else "quality"
    return f"A {kind} check over the window's served versions and sources; {threshold.bad} {levels} fails with that severity."


def check_result(verdict: monitoring_table.Verdict) -> dg.AssetCheckResult:
    severity = dg.AssetCheckSeverity.ERROR if verdict.severity == monitoring_table.ERROR else dg.AssetCheckSeverity.WARN
    metadata: dict[str, Any] = {"status": verdict.status}
    if verdict.value is not None:
        metadata["value"] = float(verdict.value)
    if verdict.threshold is not None:
        metadata["threshold"] = float(verdict.threshold)
    if verdict.slice:
        metadata["slice"] = verdict.slice
    return dg.AssetCheckResult(check_name=verdict.name, passed=verdict.passed, severity=severity, description=verdict.description, metadata=metadata)


def _window_figures(rows: list[dict[str, Any]], config: MonitoringConfig) -> dict[str, float]:
    """Each plotted metric of each source in the window (its versions weighted by rows), as numbers
    named ``<source>/<metric>``: Dagster's own Plots view draws these across materializations."""
    from llmops_dagster.core.monitoring import SOURCES, metric_series

    figures = {}
    for source in SOURCES:
        for metric in monitoring_table.plotted(config):
            _, values = metric_series(rows, metric, source=source)
            if values and values[-1] is not None:
                figures[f"{source}/{metric}"] = float(values[-1])
    return figures


def build_monitoring_assets(env: str, config: MonitoringConfig, imports: list[dg.AssetKey] | None = None) -> list[dg.AssetsDefinition]:
    """The environment's ``monitoring`` asset, with one check per threshold, and its
    ``unanswered_questions``, keys prefixed with the environment name. ``imports``: the assets that
    add requests to ``inference_log`` besides the server (the Databricks inference table)."""
    partitions = monitoring_partitions(config)
    key, unanswered_key = dg.AssetKey([env, MONITORING]), dg.AssetKey([env, UNANSWERED])
    names = check_names(config)
    specs = [dg.AssetCheckSpec(name, asset=key, description=check_description(config, name)) for name in names]

    @dg.asset(
        key=key,
        deps=[dg.AssetKey([env, "batch_predictions"]), dg.AssetKey([env, "inference_log"]), *(imports or [])],
        partitions_def=partitions,
        check_specs=specs,
        group_name=GROUP,
        kinds={"lancedb"},
    )
    def monitoring(context: dg.AssetExecutionContext, lancedb: LanceDBResource, embedder: EmbedderResource) -> dg.MaterializeResult:
        """Per window, served model version and source (endpoint or batch): requests, error rate,
        latency, token counts, readability, retrieval scores, no-answer and empty-retrieval rates,
        cited sources, groundedness, and toxicity and perplexity where ``monitoring.scorers`` names
        local models; drift against the reference (PSI, JS distance, KS per column) and against the
        corpus (query drift, out-of-corpus rate). One row per slice in the Lance table
        ``monitoring``; plots of each metric over the last windows in the metadata (``plots``)."""
        begin, end = partition_bounds(context)
        lance = lancedb.store()
        report = monitoring_table.compute_window(lance, begin, end, config, scoring(lance, embedder, config), context.run_id)
        write = monitoring_table.write_window(lance, report)
        verdicts = monitoring_table.window_verdicts(report.rows, names)
        starts = monitoring_table.plot_windows(begin, config, end - begin)
        history = monitoring_table.read_rows(lance, since=starts[0], until=end)
        plots = monitoring_table.metric_plots(history, starts, config)
        summary = monitoring_table.summary_markdown(begin, end, report.rows, verdicts)
        state = monitoring_table.drift_state(report.rows)
        failing = [verdict.description for verdict in verdicts if not verdict.passed]
        context.log.info(f"{context.partition_key}: {sum(r['request_count'] for r in report.rows)} rows, drift {state['state']}")
        metadata: dict[str, Any] = {
            **table_metadata(
                monitoring_table.MONITORING_SCHEMA,
                lance.count(monitoring_table.MONITORING),
                write.version,
                lance.uri,
                monitoring_table.MONITORING,
                summary,
            ),
            "window": f"{begin.isoformat()} – {end.isoformat()}",
            "window_rows": len(report.rows),
            "requests": sum(int(row["request_count"]) for row in report.rows),
            "questions": sum(int(row["question_count"]) for row in report.rows),
            "drift_state": state["state"],
            "failing_checks": "; ".join(failing) or "none",
            "malformed_rows": sum(report.problems.values()),
            "malformed_by_reason": dg.MetadataValue.json(report.problems),
            "reference": report.reference,
            "model_based_scorers": config.scorers.describe(),
            "scorer_skipped": dg.MetadataValue.json(monitoring_table.scorer_skipped(report.rows)),
            "plots": dg.MetadataValue.md(monitoring_table.plots_markdown(plots)),
            **_window_figures(report.rows, config),
        }
        return dg.MaterializeResult(metadata=metadata, check_results=[check_result(verdict) for verdict in verdicts])

    @dg.asset(key=unanswered_key, deps=[key], partitions_def=partitions, group_name=GROUP, kinds={"lancedb"})
    def unanswered_questions(context: dg.AssetExecutionContext, lancedb: LanceDBResource, embedder: EmbedderResource) -> dg.MaterializeResult:
        """Questions of the window that got no answer, or whose nearest chunk is below
        ``monitoring.out_of_corpus_floor``, grouped by meaning (largest group first): which
        documents the corpus lacks. One row per group in the Lance table ``unanswered_questions``."""
        begin, end = partition_bounds(context)
        lance = lancedb.store()
        model = scoring(lance, embedder)
        frame, _ = monitoring_table.frame_between(lance, begin, end, model)
        groups = monitoring_table.unanswered_groups(frame, config)
        write = monitoring_table.write_unanswered(lance, begin, end, groups, context.run_id)
        asked = sum(group["size"] for group in groups)
        if groups:
            rows = [
                [
                    rank,
                    group["size"],
                    group["no_answer"],
                    group["out_of_corpus"],
                    "–" if group["top_cosine_mean"] is None else f"{group['top_cosine_mean']:.2f}",
                    group["representative"].replace("|", "/"),
                    "; ".join(q for q in group["questions"] if q != group["representative"])[:200].replace("|", "/") or "–",
                ]
                for rank, group in enumerate(groups[:20], start=1)
            ]
            table = markdown_table(["#", "asked", "no answer", "out of corpus", "nearest cosine", "representative", "also asked"], rows)
            summary = f"**{asked}** unanswered or out-of-corpus question(s) in **{len(groups)}** group(s).\n\n{table}"
        elif not model.compares_with_corpus:
            summary = "No index to compare questions with: materialize embeddings first."
        else:
            summary = f"No unanswered or out-of-corpus question in this window ({len(frame)} rows)."
        return dg.MaterializeResult(
            metadata={
                **table_metadata(
                    monitoring_table.UNANSWERED_SCHEMA,
                    lance.count(monitoring_table.UNANSWERED),
                    write.version,
                    lance.uri,
                    monitoring_table.UNANSWERED,
                    summary,
                ),
                "window": f"{begin.isoformat()} – {end.isoformat()}",
                "groups": len(groups),
                "questions": asked,
            }
        )

    return [monitoring, unanswered_questions]


def build_monitor_job(env: str, config: MonitoringConfig) -> "UnresolvedAssetJobDefinition":
    """Both monitoring assets (and their checks) for one window. Tagged with the environment, so
    its runs queue with the environment's other runs rather than write the tables alongside them."""
    return dg.define_asset_job(
        MONITOR_JOB,
        selection=dg.AssetSelection.assets(dg.AssetKey([env, MONITORING]), dg.AssetKey([env, UNANSWERED])),
        partitions_def=monitoring_partitions(config),
        description=f"monitoring and unanswered_questions for one {config.window} window ({env})",
        tags={ENV_TAG: env},
    )
