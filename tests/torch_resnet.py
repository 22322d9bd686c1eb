"""A torchvision-layout ResNet-18 written in PyTorch (torchvision is optional), for the weight-loading test."""

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return torch.relu(h + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):
    """torchvision.models.resnet18's modules and parameter names; the stem pooling is averaged (the paper's variant)."""

    def __init__(self, num_classes):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.pool = nn.AvgPool2d(3, 2, 1)
        chans, cin = (64, 128, 256, 512), 64
        for i, c in enumerate(chans):
            setattr(self, f"layer{i + 1}", nn.Sequential(Block(cin, c, 1 if i == 0 else 2), Block(c, c, 1)))
            cin = c
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        h = self.pool(torch.relu(self.bn1(self.conv1(x))))
        for i in range(4):
            h = getattr(self, f"layer{i + 1}")(h)
        return self.fc(h.mean((2, 3)))
