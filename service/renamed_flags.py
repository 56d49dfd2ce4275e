"""Command-line flags that were renamed: the old spelling keeps working for one version (until 0.4), hidden from
--help, with a warning on stderr, so scripts written against 0.2 do not break on upgrade."""

from __future__ import annotations

import argparse
import sys
from typing import Any

REMOVED_IN = "0.4"


class _Renamed(argparse.Action):
    def __init__(self, option_strings: list[str], dest: str, new: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option: str | None = None
    ) -> None:
        print(f"xraysr: {option} is renamed {self.new}; the old name goes in {REMOVED_IN}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_renamed(
    parser: argparse.ArgumentParser, new: str, old: str, *, required: bool = False, **kwargs: Any
) -> argparse.Action:
    """Adds flag ``new`` (``kwargs`` as for add_argument) and ``old`` as its deprecated alias, storing in the same
    place; ``required``: one of the two must be given, never both."""
    group = parser.add_mutually_exclusive_group(required=required)
    action = group.add_argument(new, **kwargs)
    alias = {key: kwargs[key] for key in ("type", "choices", "nargs") if key in kwargs}
    group.add_argument(old, dest=action.dest, action=_Renamed, new=new, help=argparse.SUPPRESS, **alias)
    return action
