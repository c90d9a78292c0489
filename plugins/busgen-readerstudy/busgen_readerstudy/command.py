"""``busgen reader-study build|serve|analyse``: one entry point, three actions (each with its own options)."""

from __future__ import annotations

import argparse
import logging
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run ``build``, ``serve`` or ``analyse``; returns the exit status (1 with a one-line message on bad input)."""
    from . import analyse, app, build

    parser = argparse.ArgumentParser(
        prog="busgen reader-study",
        description="Visual Turing test and label agreement for generated images: build a de-identified study "
                    "from a real and a generated datalist, serve it to readers in the browser, analyse the answers.")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    build.add_arguments(sub.add_parser("build", help="make the study folder (images, reading orders, reader codes)"))
    app.add_arguments(sub.add_parser("serve", help="serve the study (reader page /, coordinator page /admin)"))
    analyse.add_arguments(sub.add_parser("analyse", help="statistics, plots and a one-page HTML report"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    runner = {"build": build.run_from_args, "serve": app.run_from_args, "analyse": analyse.run_from_args}[args.action]
    try:
        return runner(args)
    except (build.StudyError, FileNotFoundError, ValueError) as err:
        print(f"busgen reader-study {args.action}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
