"""The Squeeze-and-Excitation block, spanning the design space the paper ablates.

squeeze  : 'avg' (global average pooling, the paper's choice), 'max' (global max pooling),
           'none' (the paper's "NoSqueeze": the excitation runs at every position with 1x1 convs)
reduction: ratio r (``rd_ratio = 1/r``) or an explicit ``rd_channels``; ``rd_divisor=1`` floors
           ``C/r`` as the Caffe prototxts do, ``rd_divisor=8`` rounds to a multiple of 8 as timm does
gate     : 'sigmoid' (paper), 'hard_sigmoid', 'tanh', 'relu'; '2sigmoid' (2 * sigmoid, range (0, 2), exactly 1
           at 0: with a zero last FC the unit is an identity, which ``se_hub.retrofit`` uses)
act      : the activation between the two FCs, ReLU (paper); MBConv blocks use their own (SiLU)

``SqueezeExcite(x)`` returns the excitation ``s`` (the gate), not ``x * s``: the block that owns
the unit applies the scale, so a residual block can fuse scale + shortcut add into one pass (and
keep less for backward, see ``se_tail.py``) while every submodule (``fc1``, ``act``, ``fc2``,
``gate``) and the unit itself still run as modules: forward hooks, wrappers (LoRA, quantization
observers) and ``torch.fx`` see every call.
"""
from typing import Callable, Final, Optional, Union

import torch
import torch.nn.functional as F
from timm.layers import create_act_layer, make_divisible
from torch import nn

from .recomputed_scale import lean_backward_applies, scale

SQUEEZE_TYPES = ('avg', 'max', 'none')


class DoubledSigmoid(nn.Module):
    """``2 * sigmoid(z)``: the paper's gate stretched to (0, 2) so that z = 0 gives exactly 1 (sigmoid(0)
    is exactly 0.5 in floating point); its slope there is 0.5, so a unit whose last FC starts at zero
    passes its input through unchanged and still learns."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * torch.sigmoid(x)


GATE_TYPES = {
    'sigmoid': nn.Sigmoid,
    'hard_sigmoid': nn.Hardsigmoid,
    'tanh': nn.Tanh,
    'relu': nn.ReLU,
    '2sigmoid': DoubledSigmoid,
}


def reduced_channels(channels: int, rd_ratio: float, rd_divisor: int = 1) -> int:
    """Width of the excitation bottleneck: floor(C/r) for divisor 1, else timm's rounding."""
    if rd_divisor <= 1:
        return max(1, int(channels * rd_ratio))
    return make_divisible(channels * rd_ratio, rd_divisor, round_limit=0.)


def squeeze_average(x: torch.Tensor) -> torch.Tensor:
    """``x.mean((2, 3), keepdim=True)``. In training (float32 / float64, eager) it is computed as the
    sum divided by ``H * W``, which on the CPU is how ``mean`` computes it (the same bits): the
    backward of ``mean`` writes its gradient out at full size, divided, before autograd adds it to the
    scale's gradient, that of a sum hands over a broadcast view and divides only the (N, C, 1, 1)
    gradient. One full-size pass less per SE unit, which pays for the recomputed product
    (``recomputed_scale.py``); ``plain_se_backward()`` keeps ``mean``."""
    if not isinstance(x, torch.Tensor) or not lean_backward_applies(x):  # exporters see the mean
        return x.mean((2, 3), keepdim=True)
    return x.sum((2, 3), keepdim=True) / (x.shape[2] * x.shape[3])


class ExcitationConv(nn.Conv2d):
    """A 1x1 convolution, stored as one (weight ``(C_out, C_in, 1, 1)``, the layout of every SE
    checkpoint), that runs as an (N, C) matmul when ``squeezed``: on a 1x1 map a matmul costs a
    fraction of a convolution at batch 1. Input and output are (N, C, H, W) either way, so
    anything that wraps or replaces a Conv2d here keeps working."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True, squeezed: bool = True):
        super().__init__(in_channels, out_channels, kernel_size=1, bias=bias)
        self.squeezed = squeezed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.squeezed:
            # one view back to (N, C, 1, 1), not two unsqueezes: a dispatch and an autograd node fewer per
            # call, which a training step of a CIFAR-sized network notices; one Reshape in ONNX
            return F.linear(x.flatten(1), self.weight.flatten(1), self.bias).view(-1, self.out_channels, 1, 1)
        return self._conv_forward(x, self.weight, self.bias)


class SqueezeExcite(nn.Module):
    """SE unit: ``forward(x)`` returns the gate ``gate(fc2(act(fc1(squeeze(x)))))`` ((N, C, 1, 1), or
    (N, C, H, W) for squeeze='none'); the caller scales: ``x * se(x)``. ``act`` is ReLU unless
    ``act_layer`` says otherwise.

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
        squeezed = squeeze != 'none'
        self.fc1 = ExcitationConv(channels, rd_channels, bias=bias, squeezed=squeezed)
        # not in place: a hook or feature extractor may hold fc1's output
        self.act = create_act_layer(act_layer, inplace=False)
        self.fc2 = ExcitationConv(rd_channels, channels, bias=bias, squeezed=squeezed)
        self.gate = GATE_TYPES[gate]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The per-channel (or, for squeeze='none', per-position) scale for ``x``."""
        if self.squeeze == 'avg':
            s = x.mean((2, 3), keepdim=True) if torch.jit.is_scripting() else squeeze_average(x)
        elif self.squeeze == 'max':
            s = x.amax((2, 3), keepdim=True)
        else:
            s = x
        return self.gate(self.fc2(self.act(self.fc1(s))))

    def extra_repr(self) -> str:
        return f'squeeze={self.squeeze!r}, channels={self.channels}, rd_channels={self.rd_channels}'


class AttentionSlot(nn.Module):
    """Base of every block with one attention unit in ``self.se`` (None when it has none). se_hub's
    SqueezeExcite returns its gate, which the block applies (``_attend``, or a fused tail that reads
    ``se_gates``); timm's ECA / CBAM and user callables return the scaled input. ``se_gates`` is a
    flag, not an isinstance() in forward, which TorchScript resolves wrongly for specialised copies of
    one module class; as a TorchScript constant it leaves only the branch taken to compile."""
    se_gates: Final[bool]
    # True where the block's SE product goes through recomputed_scale (``_attend`` or ``scaled_residual``):
    # the network opens ``recomputed_scales()`` for such blocks only (a block with a BatchNorm-statistics
    # tail, se_tail.py, needs no saved-tensor hooks, whose calls cost time on small networks)
    recomputes_products: bool

    def _init_attention(self, attention: Optional[nn.Module], recomputes_products: bool = True) -> None:
        self.se = attention
        self.se_gates = isinstance(attention, SqueezeExcite)
        self.recomputes_products = self.se_gates and recomputes_products

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        if self.se_gates:
            if torch.jit.is_scripting():
                return x * self.se(x)
            return self._scale(x, self.se(x))
        if self.se is not None:
            return self.se(x)
        return x

    @torch.jit.unused
    def _scale(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        # x * gate; a layer that saves it for backward keeps x and the gate instead (recomputed_scale.py)
        if torch.compiler.is_compiling():
            return x * gate
        return scale(x, gate)
