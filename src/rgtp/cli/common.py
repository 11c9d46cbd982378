"""What the command groups share: preset arguments and their resolution, execution settings, the
action datasets of evaluation and training, the report of a run."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import typing
from typing import TYPE_CHECKING, Any

from rgtp.config import ConfigError, ExecutionConfig, Preset, changed, load_config, override

if TYPE_CHECKING:
    from rgtp.data.action import ActionDataset


__all__ = [
    "action_dataset",
    "add_execution_args",
    "add_preset_args",
    "execution_of",
    "logger",
    "positive_int",
    "report",
    "resolve",
]


logger = logging.getLogger("rgtp")


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (a count of frames, items or steps)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def resolve(args: argparse.Namespace) -> Preset:
    """The preset named on the command line (or read from --config), with every --set applied (``train.*``
    settings are the training config's, see :func:`rgtp.cli.train.training_config`)."""
    from rgtp.presets import get_preset

    preset = load_config(Preset, args.config) if getattr(args, "config", None) else get_preset(args.preset)
    assignments = preset_assignments(args)
    if assignments:
        preset = changed(preset, override(preset, *assignments), assignments)
    return preset


def preset_assignments(args: argparse.Namespace) -> list[str]:
    """The --set assignments of the preset (the ``train.*`` ones belong to `rgtp train` and only to it)."""
    given = args.set or []
    training = [a for a in given if a.startswith("train.")]
    if training and getattr(args, "command", None) != "train":
        raise ConfigError(f"{training[0]}: train.* settings are for `rgtp train`")
    return [a for a in given if not a.startswith("train.")]


def add_preset_args(
    p: argparse.ArgumentParser,
    positional: bool,
    default: str | None = "vitdet_vid_672_keep512",
    set_help: str = "override a field, e.g. rgtp.selection.keep_ratio=0.2 (repeatable)",
) -> None:
    if positional:
        p.add_argument("preset", nargs="?", help="preset name (see `rgtp presets`)")
    else:
        default_help = f"; default {default}" if default else ""
        p.add_argument("--preset", default=default, help=f"preset name (see `rgtp presets`{default_help})")
    p.add_argument("--config", help="a preset saved as YAML/JSON (instead of a preset name)")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help=set_help,
    )


def execution_of(args: argparse.Namespace) -> ExecutionConfig:
    return ExecutionConfig(attention=args.attention, precision=args.precision, compile=args.compile)


def add_execution_args(p: argparse.ArgumentParser) -> None:
    """How the runners execute (:class:`rgtp.config.ExecutionConfig`, its allowed values read from its types)."""
    helps = {
        "attention": "fused: scaled_dot_product_attention wherever the rollout needs no probabilities",
        "precision": "bf16 / fp16: the model under autocast (the rollout stays float32)",
        "compile": "compile: torch.compile the blocks after block 0; graphs: also CUDA graphs on a GPU",
    }
    hints = typing.get_type_hints(ExecutionConfig)
    for f in dataclasses.fields(ExecutionConfig):
        p.add_argument(
            f"--{f.name}",
            default=f.default,
            choices=typing.get_args(hints[f.name]),
            help=f"{helps[f.name]} (default: {f.default}; the GPU path: --attention fused --precision bf16 "
            "--compile graphs)"
            if f.name == "compile"
            else f"{helps[f.name]} (default: {f.default})",
        )


def action_dataset(args: argparse.Namespace, preset: Preset, split: str) -> ActionDataset:
    """The --dataset (default: the preset's) split, with the reader options and --max-items applied."""
    from rgtp.data.registry import ACTION_DATASETS, build_action_dataset, dataset_for_preset

    options: dict[str, Any] = {k: v for k, v in (("fps", args.fps), ("short_side", args.short_side)) if v is not None}
    name = args.dataset or dataset_for_preset(preset.name)
    if name not in ACTION_DATASETS:  # the lab's generated sets (motions) join the table when imported
        import rgtp.lab.data.registry  # noqa: F401
    if getattr(args, "classes", None):
        if not name.startswith("motions"):
            raise ConfigError(f"--classes is an option of the generated motions sets, not of {name}")
        options["classes"] = [c.strip() for c in args.classes.split(",") if c.strip()]
    dataset = build_action_dataset(name, args.data, split, **options)
    if args.max_items is not None:
        dataset.clips = dataset.clips[: args.max_items]
    logger.info("%s %s: %d clips", args.data, split, len(dataset))
    return dataset


def report(summary: object) -> None:
    from rgtp.run import RunSummary

    assert isinstance(summary, RunSummary)
    print(summary.table())
    unit = "GMACs per frame" if summary.unit == "frame" else "GMACs per step and view"
    saving = 100 * (1 - summary.mean_gmacs / summary.dense_gmacs) if summary.dense_gmacs else 0.0
    print(
        f"\n{summary.frames} {summary.unit}s of {summary.video} with {summary.preset}: mean {summary.mean_gmacs:.3g} "
        f"{unit} vs dense {summary.dense_gmacs:.3g} ({saving:.0f}% fewer MACs)"
    )
    print(f"model: {summary.model}")
    for clip in summary.clips:
        top = [(name, p) for name, (_, p) in zip(clip["top5_names"], clip["top5"], strict=True)]
        print(f"clip {clip['clip']}: top-5 (class, prob) {top}")
    if summary.agreement:
        print("pruned vs dense: " + ", ".join(f"{k} {v}" for k, v in summary.agreement.items()))
    if summary.interrupted:
        stopped = signal.Signals(summary.interrupted).name
        print(f"STOPPED by {stopped} after {summary.frames} {summary.unit}s: the outputs hold every finished one.")
    for what, path in summary.outputs.items():
        print(f"{what}: {path}")
