"""``python -m busgen_deploy -i IN -o OUT -m MODEL``: the app's entry point (what a MONAI Application Package runs)."""

import sys

from .app import main

sys.exit(main())
