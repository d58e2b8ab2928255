"""Command line: ``python -m pipeline <stage> [options]`` (also installed as ``pipeline``)."""
from __future__ import annotations

import sys

from pipeline.shared.cli import describe_os_error, main  # noqa: F401  (describe_os_error: used by tests)

if __name__ == "__main__":
    sys.exit(main())
