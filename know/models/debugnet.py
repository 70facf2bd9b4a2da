"""A tiny conv + BN + linear network for tests: every parameter kind KNOW handles, in milliseconds."""
import torch.nn as nn

from know.models.registry import register


class DebugNet(nn.Module):
    def __init__(self, num_classes: int = 4, in_chans: int = 1, width: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).relu().mean((2, 3)))


@register("debugnet")
def debugnet(num_classes: int = 4, in_chans: int = 1, img_size: int = 32, **kwargs) -> DebugNet:
    return DebugNet(num_classes, in_chans, **kwargs)  # global pooling: any img_size
