"""On ``PYTHONPATH`` of a Pipes step's subprocess (``tests/test_pipes.py``): the step runs as on
Databricks compute, where the wheel brings only the package's core dependencies. Where
``LLMOPS_CORE_SITE`` names a view of site-packages without the ``platform`` extra's distributions
(``helpers.core_site_packages``), it takes site-packages' place on ``sys.path``, so that their
modules and metadata are as absent as if they were not installed."""

import os
import sys
import sysconfig

view = os.environ.get("LLMOPS_CORE_SITE")
if view:
    site = sysconfig.get_paths()["purelib"]
    sys.path[:] = [view if entry == site else entry for entry in sys.path]
