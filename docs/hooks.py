"""MkDocs hooks for the rgtp documentation (registered under ``hooks:`` in mkdocs.yml).

- ``on_files``: the benchmark plots stay where ``rgtp bench`` writes them (``benchmarks/results/**/*.png``); each is
  added to the site under ``results/...``, so ``![...](results/bench_detection/plot.png)`` on a page at the top of
  ``docs/`` resolves, is checked by ``--strict`` and is copied into the built site.
- ``on_page_markdown``: on the command-line page, the marker ``<!-- cli-reference -->`` is replaced by the ``--help``
  of ``rgtp`` and of every subcommand (recursively), taken from ``rgtp.cli.build_parser()`` at build time, so the
  reference always matches the parser.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "benchmarks"
RESULTS = BENCH_DIR / "results"
CLI_PAGE = "cli.md"
CLI_MARKER = "<!-- cli-reference -->"
HELP_WIDTH = "100"  # argparse wraps to $COLUMNS; fixed, so the page does not depend on the terminal


def on_files(files: Files, config, **kwargs) -> Files:
    for png in sorted(RESULTS.rglob("*.png")):
        rel = png.relative_to(BENCH_DIR).as_posix()  # results/bench_<task>/.../plot.png
        if "/train/" in f"/{rel}" or files.get_file_from_path(rel) is not None:
            continue
        files.append(File(rel, str(BENCH_DIR), config["site_dir"], config["use_directory_urls"]))
    return files


def _subcommands(parser: argparse.ArgumentParser):
    """(name, parser) of every subcommand below ``parser``, depth first, in the order they were added."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases map to the same parser once
                yield sub
                yield from _subcommands(sub)


def _cli_reference() -> str:
    from rgtp.cli import build_parser

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = HELP_WIDTH
    try:
        parser = build_parser()
        parts = []
        for p in [parser, *_subcommands(parser)]:
            if hasattr(p, "color"):  # Python >= 3.14 colours help on a terminal; the page wants plain text
                p.color = False
            text = p.format_help().rstrip()
            parts.append(f"### `{p.prog}`\n\n```text\n{text}\n```\n")
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files, **kwargs) -> str:
    if page.file.src_uri != CLI_PAGE:
        return markdown
    if CLI_MARKER not in markdown:
        raise PluginError(f"{CLI_PAGE}: the marker {CLI_MARKER} is missing; the CLI reference has nowhere to go")
    return markdown.replace(CLI_MARKER, _cli_reference())
