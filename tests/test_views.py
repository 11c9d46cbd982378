"""The 3x4 multi-view sampling of the ViViT protocol (method §12.2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rgtp.data.views import MEAN, STD, make_views, spatial_offsets, temporal_starts
from rgtp.models.vivit import predict_views


def test_temporal_starts_and_spatial_offsets_follow_the_spec() -> None:
    assert temporal_starts(250, 64) == [int(k * (250 - 64) / 3) for k in range(4)] == [0, 62, 124, 186]
    assert temporal_starts(40, 64) == [0, 0, 0, 0]  # short video: padded, every view starts at 0
    assert spatial_offsets(398, 224) == [0, 87, 174]  # left / centre / right
    assert spatial_offsets(224, 224) == [0, 0, 0]
    assert spatial_offsets(300, 224, count=1) == [38]  # a single view is centred


def test_make_views_content_order_and_normalisation() -> None:
    t, h, w = 20, 8, 12  # landscape: crops move along x
    video = np.zeros((t, h, w, 3), dtype=np.uint8)
    for i in range(t):
        video[i] = i  # frame index as intensity
    video[:, :, :4] += 100  # left third brighter
    views = make_views(video, frames=4, stride=2, crop=8, views=(3, 2))
    assert views.shape == (6, 3, 4, 8, 8)
    # spatial-major: views 0-1 are the left crop (brighter), 4-5 the right crop
    assert views[0].mean() > views[4].mean()
    # temporal views start at 0 and 20 - 8 = 12; each takes every 2nd frame
    first = views[0, 0, :, 0, 4] * STD + MEAN  # column 4: outside the bright stripe
    torch.testing.assert_close(first * 255, torch.tensor([0.0, 2.0, 4.0, 6.0]), atol=1e-3, rtol=0)
    second = views[1, 0, :, 0, 4] * STD + MEAN
    torch.testing.assert_close(second * 255, torch.tensor([12.0, 14.0, 16.0, 18.0]), atol=1e-3, rtol=0)


def test_make_views_pads_short_videos_and_rejects_bad_shapes() -> None:
    video = np.random.default_rng(0).integers(0, 255, (3, 16, 16, 3), dtype=np.uint8)
    views = make_views(video, frames=4, stride=2, crop=16, views=(1, 1))
    assert views.shape == (1, 3, 4, 16, 16)
    torch.testing.assert_close(views[0, :, 3], views[0, :, 2])  # frames 4 and 6 repeat the last frame
    with pytest.raises(ValueError, match="expected a"):
        make_views(video[0], frames=4, stride=2, crop=16)


def test_predict_views_averages_logits_then_softmax() -> None:
    logits = torch.tensor([[0.0, 2.0], [2.0, 0.0], [1.0, 1.0], [3.0, 1.0]])
    probs = predict_views(logits, 2)
    torch.testing.assert_close(probs[0], torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(probs[1], torch.softmax(torch.tensor([2.0, 1.0]), 0))
    with pytest.raises(ValueError):
        predict_views(logits, 3)
