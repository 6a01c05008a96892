"""Entry points set the process environment; the core leaves it as it found it."""

from __future__ import annotations

import os
import subprocess
import sys

PROBE = """
import os
from llmops_dagster.core.embedding import EmbedderConfig, load_embedder
from llmops_dagster.core.store import LanceStore
import tempfile
load_embedder(EmbedderConfig(precision="fp32")).encode(["a local model loads without a hub"])
LanceStore(tempfile.mkdtemp())
print(os.environ.get("HF_HUB_OFFLINE"), os.environ.get("LANCEDB_LOG"))
from llmops_dagster.definitions import build_defs
build_defs("test")
print(os.environ.get("HF_HUB_OFFLINE"), os.environ.get("LANCEDB_LOG"))
"""


def test_core_leaves_the_environment_alone_and_the_code_location_sets_it(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "LANCEDB_LOG")}
    env["LLMOPS_HOME"] = str(tmp_path / "home")
    result = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[:2] == ["None None", "1 error"]
