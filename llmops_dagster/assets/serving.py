"""inference_log: the requests ``llmops serve`` answered, as an observable source asset.

The server writes the table; Dagster only observes it (row count, last request, versions seen).
The ``inference_log`` sensor reports an observation whenever the table changes, and the monitoring
assets read it.
"""

import warnings

import dagster as dg

from llmops_dagster.core import inference_log
from llmops_dagster.resources import LanceDBResource

INFERENCE_LOG = dg.AssetKey("inference_log")


def observe_inference_log(lancedb: LanceDBResource) -> dg.ObserveResult:
    facts = inference_log.summary(lancedb.store())
    return dg.ObserveResult(data_version=dg.DataVersion(str(facts["table_version"])), metadata=inference_log.metadata(facts))


with warnings.catch_warnings():
    warnings.simplefilter("ignore", dg.BetaWarning)  # observable source assets are marked beta; CLI output stays clean
    inference_log_table = dg.observable_source_asset(key=INFERENCE_LOG, group_name="serving", description=__doc__.split("\n\n")[0])(
        observe_inference_log
    )
