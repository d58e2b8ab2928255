"""Command line: ``python -m pipeline <command> [options]`` (also installed as ``pipeline``)."""
from __future__ import annotations

import sys

from pipeline.faces.commands import main

if __name__ == "__main__":
    sys.exit(main())
