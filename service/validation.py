"""One line from a pydantic ValidationError, for settings, manifests and training configs alike."""

from __future__ import annotations

from pydantic import ValidationError

_MAX_INPUT_REPR = 60


def describe_validation_error(error: ValidationError) -> str:
    """Pydantic's multi-line report as one line: ``port: Input should be less than or equal to 65535 (got 0)``."""
    problems = []
    for issue in error.errors():
        where = ".".join(str(part) for part in issue["loc"])
        message = issue["msg"].removeprefix("Value error, ")
        got = ""
        if where and "input" in issue:
            shown = repr(issue["input"])
            # A 1000-entry noise table or a whole config section is no help in a one-line error.
            got = f" (got {shown if len(shown) <= _MAX_INPUT_REPR else shown[:_MAX_INPUT_REPR] + '…'})"
        problems.append(f"{where}: {message}{got}" if where else message)
    return "; ".join(problems)
