"""``python -m busgen_readerstudy build|serve|analyse`` (same as ``busgen reader-study``)."""

from .command import main

raise SystemExit(main())
