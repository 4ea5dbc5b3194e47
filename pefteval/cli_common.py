"""What every ``pefteval`` command shares: user errors as one line and exit status 2, comma-separated
option values, and the apps' context settings. Both pefteval.cli and pefteval.cli_adversarial import
it, so neither has to import the other's module for it."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import typer

from pefteval.api import _csv_list  # noqa: F401 - the commands' comma-separated options
from pefteval.errors import UserError

# -h works as --help on the app and on every command
CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"]}


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """User errors print one clear message and exit with status 2, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None

    return wrapper
