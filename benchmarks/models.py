"""Benchmark models: a CIFAR-style ResNet-18 (3x32x32 in, 10 classes) and BatchNorm folding."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def conv_bn(cin: int, cout: int, k: int, stride: int = 1) -> nn.Sequential:
    # Conv and its BN kept together in one Sequential so fold_batchnorm can find every pair.
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, cout, 3, stride), nn.ReLU(inplace=True), conv_bn(cout, cout, 3))
        self.shortcut = conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.body(x) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for 32x32 inputs: 3x3 stem, no max-pool, stages of 64/128/256/512 channels."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = [conv_bn(3, 64, 3), nn.ReLU(inplace=True)]
        cin = 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every Conv2d->BatchNorm2d pair inside a Sequential into one Conv2d (eval model, in place).

    Without this the INT8 graph keeps a float BatchNormalization after each QLinearConv, which costs a
    dequantize/requantize round trip per layer in ONNX Runtime.
    """
    model.eval()
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            if isinstance(seq[i], nn.Conv2d) and isinstance(seq[i + 1], nn.BatchNorm2d):
                seq[i] = fuse_conv_bn_eval(seq[i], seq[i + 1])
                seq[i + 1] = nn.Identity()
    return model


def resnet18_with_stats(seed: int = 0, batches: int = 3, batch_size: int = 16) -> ResNet18:
    """Random weights, but BatchNorm running statistics from a few random batches so that folding
    changes the weights the way a trained network's would (fresh BN stats would fold to a no-op)."""
    torch.manual_seed(seed)
    model = ResNet18()
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(batch_size, 3, 32, 32))
    return model.eval()
