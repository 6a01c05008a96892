"""Names of the Dagster run tags the project writes and filters on, in one place.

Registry tags (on MLflow model versions) are named in ``core/registry.py``, beside the code that
reads them.
"""

ENV_TAG = "llmops/env"  # on every run; runs of one environment are queued one at a time on it
TRIGGER_TAG = "llmops/trigger"  # what started a run: a sensor's name, cli, or cli-tick:<sensor>
# Where an in-process CLI run executes, so that a run whose process was killed can be told from a live one.
HOST_TAG = "llmops/host"
PID_TAG = "llmops/pid"
ADOPT_TAG = "llmops/adopt"  # on adopt runs: the upstream model version and attempt they belong to
SOURCE_VERSION_TAG = "llmops/source_version"  # on adopt runs: which upstream version to copy
LANDING_DIGEST_TAG = "llmops/landing_digest"  # on ingest runs a sensor started: the landing zone's content
LANDING_CHANGE_TAG = "llmops/landing_change"  # ... and what changed, in words
OPERATOR_ENV_TAG = "llmops/operator_env"  # on approve and rollback runs: the environment acted on
# Dagster's own tags for a sensor's run: the daemon skips a run request whose key a run of the same
# sensor already carries. ``llmops tick`` writes and reads them too, so the two never run a key twice.
RUN_KEY_TAG = "dagster/run_key"
SENSOR_NAME_TAG = "dagster/sensor_name"
