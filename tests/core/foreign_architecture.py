"""A tiny segmentation network as another tool would ship it in a bioimage.io package: its own source file,
nothing of napari-unet. One 2x2 pooling, so valid input sizes are even and outputs reach 6 pixels."""
import torch
from torch import nn


class TinySegmenter(nn.Module):
    """Class scores (logits) for a (N, C, Y, X) image; the package's postprocessing makes them probabilities."""

    def __init__(self, channels: int = 1, features: int = 4, classes: int = 2) -> None:
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(channels, features, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(features, features, 3, padding=1), nn.ReLU())
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.head = nn.Conv2d(features + channels, classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([x, self.up(self.down(x))], dim=1))
