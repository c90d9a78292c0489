"""``python -m busgen_monai.data.ingest SRC OUT [options]``: the same as ``busgen ingest``."""

import sys

from .cli import ingest_main

sys.exit(ingest_main())
