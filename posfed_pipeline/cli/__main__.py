"""``python -m posfed_pipeline.cli``: how posfed demo starts its fast path service."""

import sys

from posfed_pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main())
