"""The block protocol on our own models: :class:`~rgtp.models.vitdet.ViTDet` and :class:`~rgtp.models.vivit.ViViT`.

Our models know nothing of pruning; these views hand their pieces to the runtimes. A ViTDet is a grid model whose
outputs are the simple feature pyramid of the last block (and whose detector is the runners' head). A ViViT's spatial
encoder is a class-token model over one tubelet step: its inputs are that step's tubelet embeddings, which
:meth:`ViViTAdapter.embed_clip` computes for a whole clip at once, and :meth:`ViViTAdapter.classify` runs the temporal
encoder and the classifier on the steps' class tokens.
"""

from __future__ import annotations

from torch import Tensor

from rgtp.models.vitdet import ViTDet
from rgtp.models.vivit import ViViT

__all__ = ["ViTDetAdapter", "ViViTAdapter"]


class ViTDetAdapter:
    """Our ViTDet as a grid model: (B, 3, S, S) padded, normalised images -> pyramid features "p2".."p6"."""

    family = "grid"

    def __init__(self, model: ViTDet) -> None:
        self.model = model
        self.blocks = model.net.blocks
        self.patch_size = model.cfg.patch_size
        self.output_blocks = (len(model.net.blocks) - 1,)

    def embed(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        return self.model.net.embed(images), self.model.cfg.grid  # (B, N, C)

    def position(self, grid: tuple[int, int]) -> Tensor:
        return self.model.net.position()  # (1, N, C)

    def outputs(self, blocks: dict[int, Tensor], grid: tuple[int, int]) -> dict[str, Tensor]:
        return self.model.features(blocks[self.output_blocks[0]])


class ViViTAdapter:
    """Our ViViT's spatial encoder as a class-token model over one tubelet step: inputs (B, N, C) tubelet
    embeddings before positions -> the spatial class token after the final norm (no dense output)."""

    family = "cls"
    num_prefix = 1
    dense_output = False

    def __init__(self, model: ViViT) -> None:
        self.model = model
        self.blocks = model.spatial.blocks

    def embed(self, inputs: Tensor) -> tuple[Tensor, tuple[int, int]]:
        if inputs.dim() != 3 or inputs.shape[1:] != (self.model.cfg.num_tokens, self.model.cfg.embed_dim):
            raise ValueError(
                f"a ViViT step takes (B, {self.model.cfg.num_tokens}, {self.model.cfg.embed_dim}) tubelet embeddings "
                f"(see embed_clip), got {tuple(inputs.shape)}"
            )
        return inputs, self.model.grid

    def tokens(self, embeds: Tensor, grid: tuple[int, int]) -> Tensor:
        return self.model.spatial.tokens(embeds)  # (B, 1 + N, C)

    def finish(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        return self.model.spatial.norm(x[:, 0]), None  # (B, C)

    def embed_clip(self, clip: Tensor) -> Tensor:
        """(B, 3, T, H, W) normalised views -> (B, steps, N, C) tubelet embeddings, the inputs of the steps."""
        return self.model.embed(clip)

    def classify(self, step_features: Tensor) -> Tensor:
        """(B, steps, C) spatial class tokens -> (B, classes + nouns) logits."""
        return self.model.classify(step_features)
