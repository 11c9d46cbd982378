"""Does the benchmark's small ViViT (``motions_base``) learn the generated motions? A learning curve plus the
diagnostics behind the README's "Not measured yet: rgtp bench action" paragraph.

The clips are generated once and held in memory (normalised and resized), so a step costs only the model. Training
is AdamW with the learning-rate schedule of ``rgtp train`` (:func:`rgtp.training.loop.lr_schedule`: linear warmup,
then cosine decay) and gradient clipping at 1 (the motions curriculum's ``clip_grad``). The script reports:

* at initialisation, the singular values of the class-token features of the validation clips, relative to the
  largest. Few large values mean the model barely tells the clips apart;
* every ``--every`` steps, the mean training loss, validation top-1, the spread of the temporal class token across
  clips and the spread of the spatial class tokens over the steps of a clip (relative to their spread across clips).

``--pos-std S`` re-initialises the spatial and temporal position embeddings at std S (the model's is 0.02).
``--toy`` instead trains the spatial encoder alone to regress the centre of one square on a flat background, a
localisation check. ``--classes 0 1`` keeps move_right and move_left only. ``--easy`` uses the curriculum's easy
clips (no distractor, flat background) and ``--init`` starts from saved weights, so a curriculum's stages can be
re-run one by one. ``--train-clips 64 --memorise`` validates on the training clips, as a memorisation check. The
JSON (default ``benchmarks/results/action_learnability.json``) holds the curve, the settings and the environment.

Usage: ``PYTHONPATH=src python benchmarks/action_learnability.py [--steps 2000] [--lr 1e-3] [--batch 16]
[--classes ...] [--train-clips 3000] [--threads 2] [--out FILE]``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from _timing import environment
from rgtp.build import load_weights
from rgtp.data.views import normalize_resize
from rgtp.lab.data.motions import MOTION_CLASSES, MotionDataset
from rgtp.models.vivit import Encoder, ViViT
from rgtp.presets import get_preset
from rgtp.training.loop import lr_schedule


def load_clips(split: str, count: int, classes: list[int], crop: int, easy: bool) -> tuple[Tensor, Tensor]:
    """The first ``count`` clips of ``split`` whose label is in ``classes`` (``easy``: no distractor, flat
    background): (N, 3, T, crop, crop) normalised, (N,)."""
    options = {"distractor": False, "background": "flat"} if easy else {}
    names = [MOTION_CLASSES[c] for c in classes]
    data = MotionDataset(split=split, num_clips=count, classes=names, **options)
    video = np.stack([data.load(c) for c in data.clips])  # (N, T, H, W, 3) uint8
    x = normalize_resize(torch.from_numpy(video).permute(0, 4, 1, 2, 3), crop)  # (N, 3, T, crop, crop)
    return x, torch.tensor([c.label for c in data.clips])


@torch.no_grad()
def diagnose(model: ViViT, x: Tensor, y: Tensor) -> dict[str, Any]:
    """Top-1, the temporal class token's spread across clips, the spatial class tokens' spread over steps relative
    to their spread across clips, and the singular values of the centred temporal class tokens relative to the
    largest (first 8)."""
    model.eval()
    spatial = torch.cat([model.spatial_features(x[i : i + 50]) for i in range(0, len(x), 50)])  # (N, steps, C)
    temporal = model.temporal(spatial)  # (N, C)
    logits = model.classify(spatial)
    model.train()
    across = spatial.std(dim=0).mean().item()
    singular = torch.linalg.svdvals(temporal - temporal.mean(dim=0))
    return {
        "top1": (logits.argmax(-1) == y).float().mean().item() * 100,
        "temporal_spread": temporal.std(dim=0).mean().item(),
        "step_over_clip_spread": spatial.std(dim=1).mean().item() / max(across, 1e-12),
        "singular_values": [round(v, 4) for v in (singular / singular[0])[:8].tolist()],
    }


def write(args: argparse.Namespace, result: dict[str, Any]) -> None:
    """Write ``result`` with the settings and the environment to ``args.out``."""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    args.out.write_text(json.dumps({"settings": settings, **result, "environment": environment()}, indent=2))
    print(f"wrote {args.out}")


def localise_toy(steps: int, lr: float, pos_std: float, seed: int) -> list[dict[str, float]]:
    """Train a 4-block spatial encoder (8x8 patches of 80x80 images, width 64) to regress the centre of one 12-pixel
    square of random colour on a flat background; returns the loss curve (the centre's variance is about 0.047)."""
    gen = torch.Generator().manual_seed(seed)
    embed, encoder, head = torch.nn.Conv2d(3, 64, 8, 8), Encoder(100, 64, 4, 4, 4.0), torch.nn.Linear(64, 2)
    with torch.no_grad():
        encoder.pos_embed.normal_(0.0, pos_std, generator=gen)
    params = [*embed.parameters(), *encoder.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=lr)
    curve = []
    for step in range(1, steps + 1):
        images = torch.full((32, 3, 80, 80), -1.5)
        centres = torch.rand(32, 2, generator=gen) * 60 + 10  # (32, 2) x, y in pixels
        for image, (cx, cy) in zip(images, centres.int().tolist(), strict=True):
            image[:, cy - 6 : cy + 6, cx - 6 : cx + 6] = torch.randn(3, 1, 1, generator=gen)
        tokens = embed(images).flatten(2).transpose(1, 2)  # (32, 64, 10, 10) -> (32, 100, 64)
        loss = F.mse_loss(head(encoder(tokens)), centres / 80 - 0.5)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0:
            curve.append({"step": step, "loss": loss.item()})
            print(f"toy step {step}: loss {loss.item():.4f}", flush=True)
    return curve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--classes", type=int, nargs="+", default=list(range(len(MOTION_CLASSES))))
    ap.add_argument("--train-clips", type=int, default=3000)
    ap.add_argument("--val-clips", type=int, default=200)
    ap.add_argument("--memorise", action="store_true", help="validate on the training clips")
    ap.add_argument("--every", type=int, default=200)
    ap.add_argument("--pos-std", type=float, default=None, help="re-initialise the position embeddings at this std")
    ap.add_argument("--toy", action="store_true", help="the localisation toy instead of the motions")
    ap.add_argument("--easy", action="store_true", help="no distractor, flat background (the curriculum's easy clips)")
    ap.add_argument("--init", type=Path, help="start from these weights (e.g. a curriculum stage's best.pt)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/action_learnability.json"))
    args = ap.parse_args()
    if any(not 0 <= c < len(MOTION_CLASSES) for c in args.classes):
        ap.error(f"--classes must be in [0, {len(MOTION_CLASSES)})")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    if args.toy:
        curve = localise_toy(args.steps, args.lr, 0.02 if args.pos_std is None else args.pos_std, args.seed)
        write(args, {"toy": True, "curve": curve})
        return
    cfg = get_preset("motions_base").model
    model = ViViT(cfg)
    if args.init is not None:
        load_weights(model, args.init)
    if args.pos_std is not None:
        with torch.no_grad():
            model.spatial.pos_embed.normal_(0.0, args.pos_std)
            model.temporal.pos_embed.normal_(0.0, args.pos_std)
    t0 = time.perf_counter()
    x_train, y_train = load_clips("train", args.train_clips, args.classes, cfg.img_size, args.easy)
    if args.memorise:
        x_val, y_val = x_train, y_train
    else:
        x_val, y_val = load_clips("val", args.val_clips, args.classes, cfg.img_size, args.easy)
    print(
        f"{len(y_train)} train / {len(y_val)} val clips of classes {args.classes}, "
        f"generated in {time.perf_counter() - t0:.0f} s"
    )
    rank = diagnose(model, x_val, y_val)["singular_values"]
    print(f"at init: class-token singular values / largest: {rank}")

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    rng = np.random.default_rng(args.seed)
    curve: list[dict[str, Any]] = []
    losses: list[float] = []
    t0 = time.perf_counter()
    print("| step | train loss | val top-1 | temporal spread | step/clip spread | s |")
    print("|---:|---:|---:|---:|---:|---:|")
    for step in range(1, args.steps + 1):
        for group in opt.param_groups:
            group["lr"] = args.lr * lr_schedule(step - 1, args.steps, args.warmup, cosine=True)
        idx = torch.from_numpy(rng.integers(0, len(y_train), args.batch))
        loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % args.every == 0 or step == args.steps:
            row = {"step": step, "train_loss": float(np.mean(losses[-args.every :])), **diagnose(model, x_val, y_val)}
            row["seconds"] = time.perf_counter() - t0
            curve.append(row)
            print(
                f"| {step} | {row['train_loss']:.3f} | {row['top1']:.1f} | {row['temporal_spread']:.4f} | "
                f"{row['step_over_clip_spread']:.4f} | {row['seconds']:.0f} |",
                flush=True,
            )

    result = {"chance": 100 / len(args.classes), "init_singular_values": rank, "curve": curve}
    write(args, result)


if __name__ == "__main__":
    main()
