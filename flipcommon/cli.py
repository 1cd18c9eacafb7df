"""The shared shape of the three stage entry points: ``python -m STAGE CONFIG [key=value ...]``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from flipcommon.config import load_config
from flipcommon.errors import UserError

T = TypeVar("T")


def stage_parser(prog: str, description: str, override_example: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", help="YAML config (see configs/)")
    parser.add_argument(
        "overrides", nargs="*", help=f"key=value overrides, e.g. {override_example}"
    )
    return parser


def run_stage(
    parser: argparse.ArgumentParser,
    config_cls: type[T],
    run: Callable[[T, argparse.Namespace], Any],
    argv: list[str] | None = None,
    user_errors: tuple[type[Exception], ...] = (),
) -> Any:
    """Parse, load the config, run. A user's mistake (a ``UserError``: a bad config, a missing
    dataset or checkpoint; or one of ``user_errors``) ends with its message and exit status 2;
    any other exception is a bug and keeps its traceback."""
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        config = load_config(config_cls, args.config, args.overrides)
        return run(config, args)
    except (UserError, *user_errors) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
