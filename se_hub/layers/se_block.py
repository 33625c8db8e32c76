"""The Squeeze-and-Excitation block, spanning the design space the paper ablates.

squeeze  : 'avg' (global average pooling, the paper's choice), 'max' (global max pooling),
           'none' (the paper's "NoSqueeze": the excitation runs at every position with 1x1 convs)
reduction: ratio r (``rd_ratio = 1/r``) or an explicit ``rd_channels``; ``rd_divisor=1`` floors
           ``C/r`` as the Caffe prototxts do, ``rd_divisor=8`` rounds to a multiple of 8 as timm does
gate     : 'sigmoid' (paper), 'hard_sigmoid', 'tanh', 'relu'
act      : the activation between the two FCs, ReLU (paper); MBConv blocks use their own (SiLU)
"""
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from timm.layers import create_act_layer, make_divisible
from torch import nn

SQUEEZE_TYPES = ('avg', 'max', 'none')
GATE_TYPES = {
    'sigmoid': nn.Sigmoid,
    'hard_sigmoid': nn.Hardsigmoid,
    'tanh': nn.Tanh,
    'relu': nn.ReLU,
}


def reduced_channels(channels: int, rd_ratio: float, rd_divisor: int = 1) -> int:
    """Width of the excitation bottleneck: floor(C/r) for divisor 1, else timm's rounding."""
    if rd_divisor <= 1:
        return max(1, int(channels * rd_ratio))
    return make_divisible(channels * rd_ratio, rd_divisor, round_limit=0.)


class SqueezeExcite(nn.Module):
    """SE unit: ``x * gate(fc2(act(fc1(squeeze(x)))))``, ``act`` ReLU unless ``act_layer`` says otherwise.

    The excitation weights are stored as 1x1 convolutions (the layout of the Caffe release,
    Cadene's port and timm), so checkpoints map onto ``fc1`` / ``fc2`` without reshaping.
    """

    def __init__(
            self,
            channels: int,
            rd_ratio: float = 1. / 16,
            rd_channels: Optional[int] = None,
            rd_divisor: int = 1,
            squeeze: str = 'avg',
            gate: str = 'sigmoid',
            bias: bool = True,
            act_layer: Union[str, Callable[..., nn.Module]] = nn.ReLU,
    ):
        super().__init__()
        if squeeze not in SQUEEZE_TYPES:
            raise ValueError(f"squeeze={squeeze!r} is not one of {SQUEEZE_TYPES}")
        if gate not in GATE_TYPES:
            raise ValueError(f"gate={gate!r} is not one of {tuple(GATE_TYPES)}")
        if rd_channels is None:
            rd_channels = reduced_channels(channels, rd_ratio, rd_divisor)
        self.squeeze = squeeze
        self.channels = channels
        self.rd_channels = rd_channels
        self.fc1 = nn.Conv2d(channels, rd_channels, kernel_size=1, bias=bias)
        self.act = create_act_layer(act_layer, inplace=True)
        self.fc2 = nn.Conv2d(rd_channels, channels, kernel_size=1, bias=bias)
        self.gate = GATE_TYPES[gate]()

    def excite(self, x: torch.Tensor) -> torch.Tensor:
        """The per-channel (or, for squeeze='none', per-position) scale applied to ``x``."""
        if self.squeeze == 'none':
            s = self.fc2(self.act(self.fc1(x)))
            return self.gate(s)
        if self.squeeze == 'max':
            pooled = x.amax((2, 3))
        else:
            pooled = x.mean((2, 3))
        # A (N, C) matmul costs a fraction of a 1x1 convolution on a 1x1 map at batch 1.
        s = F.linear(pooled, self.fc1.weight.flatten(1), self.fc1.bias)
        s = F.linear(self.act(s), self.fc2.weight.flatten(1), self.fc2.bias)
        return self.gate(s).unsqueeze(-1).unsqueeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.excite(x)

    def extra_repr(self) -> str:
        return f'squeeze={self.squeeze!r}, channels={self.channels}, rd_channels={self.rd_channels}'
