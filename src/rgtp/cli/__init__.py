"""The ``rgtp`` command line, one module per command group: presets and compute (:mod:`.presets`), videos
(:mod:`.video`), evaluation (:mod:`.evaluate`), conversion (:mod:`.convert`), caching and training (:mod:`.train`),
the lab's benchmark (:mod:`.bench`)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence

from rgtp.cli import bench, convert, evaluate, presets, train, video
from rgtp.config import ConfigError
from rgtp.interrupt import Interrupted, exit_status, interrupt_as_exception

__all__ = ["build_parser", "main"]

GROUPS = (presets, video, evaluate, convert, bench, train)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rgtp", description="Rollout-Guided Token Pruning for video ViTs.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    first = int(os.environ.get("RANK", "0")) == 0  # under torchrun, only the first process logs (and errors)
    level = (logging.DEBUG if args.verbose else logging.INFO) if first else logging.ERROR
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    optional = args.command == "evaluate" or getattr(args, "preset_optional", False)  # a default chosen per task
    if not optional and getattr(args, "preset", "x") is None and getattr(args, "config", None) is None:
        print("rgtp: error: name a preset (see `rgtp presets`) or give --config FILE", file=sys.stderr)
        return 2
    try:
        if getattr(args, "device", None) is not None:
            from rgtp.build import resolve_device

            args.device = resolve_device(args.device)
        with interrupt_as_exception():
            return int(args.fn(args))
    except BrokenPipeError:  # the output's reader went away (`rgtp presets | head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 0
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"rgtp: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # SIGINT, or SIGTERM as Interrupted
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        print(
            f"rgtp: interrupted ({signal.Signals(signum).name}); what was finished is written "
            "(evaluations, benchmarks and training resume when the same command is run again)",
            file=sys.stderr,
        )
        return exit_status(signum)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
