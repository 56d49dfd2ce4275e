"""The `xraysr` command. Serving commands need only the base install; training commands need '.[train]'."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from xraysr.service import __version__
from xraysr.service import commands as service_commands
from xraysr.service.extras import check_dependencies


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xraysr", description=__doc__)
    parser.add_argument("--version", action="version", version=f"xraysr {__version__}")
    parser.add_argument(
        "--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="default INFO (serve: XRAYSR_LOG_LEVEL)"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    service_commands.add_commands(commands)
    # training.cli imports no torch at module level, so listing its commands is free.
    from xraysr.training import cli as training_cli

    training_cli.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level or "INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        check_dependencies(args)  # before any work: a missing extra is one line, not a traceback minutes later
        return int(args.handler(args) or 0)
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        # Expected user errors (bad paths, bad configs) end with one clear line, not a traceback.
        print(f"xraysr {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
