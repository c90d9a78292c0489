"""``python -m busgen_deploy -i IN -o OUT -m MODEL``: the app's entry point (what a MONAI Application Package runs;
absolute import so that ``python3 <app folder>`` works too once the package is installed)."""

import sys

from busgen_deploy.app import main

sys.exit(main())
