import sys

from llmops_dagster.cli.app import main

sys.exit(main())
