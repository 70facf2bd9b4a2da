"""The paper's ResNet-18 variant (docs/method.md §4; official Keras `ResNet18()` in 1_CIFAR100_Pretraininng.py).

7x7 stride-1 stem ('valid' conv after a zero-pad of 3) + BN + ReLU, then a zero-pad of 1 and no pooling, so stage 1
runs at 34x34 for 32x32 inputs; 4 stages of 2 basic blocks (64/128/256/512 x width); the first 128-channel block
keeps stride 1 with a 1x1 projection shortcut; the 256- and 512-channel stages downsample with stride 2; global
average pool; linear head. Convs carry biases (Keras Conv2D default), BN uses Keras defaults (momentum 0.99 ->
PyTorch momentum 0.01, eps 1e-3), convs use he_normal init (truncated normal, std sqrt(2 / fan_in)).
`width` scales every channel count (width=1 is the paper's model; the cpu profile uses a narrow one).
"""
import math

import torch.nn as nn

from know.models.registry import register

BN_KW = dict(eps=1e-3, momentum=0.01)  # Keras BatchNormalization defaults


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, padding=1)
        self.bn1 = nn.BatchNorm2d(c_out, **BN_KW)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(c_out, **BN_KW)
        self.shortcut = None
        if stride != 1 or c_in != c_out:  # Keras conv_block: 1x1 projection + BN
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride), nn.BatchNorm2d(c_out, **BN_KW))

    def forward(self, x):
        out = self.bn2(self.conv2(self.bn1(self.conv1(x)).relu()))
        return (out + (x if self.shortcut is None else self.shortcut(x))).relu()


class ResNet18Know(nn.Module):
    def __init__(self, num_classes: int = 100, in_chans: int = 3, width: float = 1.0):
        super().__init__()
        chans = [max(1, int(round(c * width))) for c in (64, 128, 256, 512)]
        self.conv1 = nn.Conv2d(in_chans, chans[0], 7, 1, padding=3)
        self.bn1 = nn.BatchNorm2d(chans[0], **BN_KW)
        self.pad = nn.ZeroPad2d(1)  # the official graph's 'pool1_pad' with no pooling after it
        strides = (1, 1, 2, 2)
        layers, c_in = [], chans[0]
        for c, s in zip(chans, strides):
            layers.append(nn.Sequential(BasicBlock(c_in, c, s), BasicBlock(c, c)))
            c_in = c
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.fc = nn.Linear(c_in, num_classes)
        self._init_weights()

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                std = math.sqrt(2.0 / fan_in) / 0.87962566  # Keras he_normal: truncated at 2 std, variance corrected
                nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)  # Keras Dense default (glorot_uniform)
                nn.init.zeros_(m.bias)

    def forward_features(self, x):
        x = self.pad(self.bn1(self.conv1(x)).relu())
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x):
        return self.fc(self.forward_features(x).mean((2, 3)))


@register("resnet18_know")
def resnet18_know(num_classes: int = 100, in_chans: int = 3, width: float = 1.0, img_size: int = 32) -> ResNet18Know:
    return ResNet18Know(num_classes, in_chans, width)  # global pooling: any img_size
