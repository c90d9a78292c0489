"""``python -m busgen_readerstudy build|serve|analyse`` (same as ``busgen reader-study``)."""

from .cli import main

raise SystemExit(main())
