"""SimpleNet: the small CNN of the paper's meta-dataset sample (docs/method.md §3).

conv3x3 8-16-32-32, each followed by ReLU and 2x2 max-pool, then Dense 64 (ReLU) and Dense num_classes.
'same' padding and ReLU after each conv are our reading of the official sample (not stated in the paper).
"""
import torch.nn as nn

from know.models.registry import register


class SimpleNet(nn.Module):
    def __init__(self, num_classes: int = 10, in_chans: int = 3, img_size: int = 32,
                 channels: tuple[int, ...] = (8, 16, 32, 32), hidden: int = 64):
        super().__init__()
        layers, c_in = [], in_chans
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c_in = c
        self.features = nn.Sequential(*layers)
        side = img_size // 2 ** len(channels)
        self.fc = nn.Linear(c_in * side * side, hidden)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x):
        x = self.features(x).flatten(1)
        return self.head(nn.functional.relu(self.fc(x)))


@register("simplenet")
def simplenet(num_classes: int = 10, in_chans: int = 3, **kwargs) -> SimpleNet:
    return SimpleNet(num_classes, in_chans, **kwargs)
