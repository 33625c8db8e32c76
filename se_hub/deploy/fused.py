"""Inference-only building blocks that ``optimize`` assembles from a trained model's parameters.

Every block is an ``nn.Module`` of its own (hooks attach to it, ``torch.jit.script`` and
``torch.compile`` see plain tensor code), built from weights only: nothing here calls into the
training modules, so they may change their internals freely.

* ``ExcitationGate``  the SE unit's excitation, returning the gate instead of the scaled input:
  the caller decides where the scale goes (into the next 1x1 convolution's weights, or one fused
  scale + add + ReLU pass). Its squeeze can read the *input* of the 1x1 convolution (+ folded BN)
  that makes the SE's input: ``mean(W h + b) = W mean(h) + b`` by linearity, and ``W`` is folded
  into ``fc1`` (``fc1(W m + b) = (W1 W) m + W1 b + b1``), so the squeeze reads the smaller
  tensor and costs no extra weights.
* ``GatedPointwiseConv``  a 1x1 convolution whose input or output channels are scaled by a
  per-sample gate; at batch 1 the gate goes into the weights when that touches fewer numbers
  than scaling the activation (early, high-resolution stages), else one ``addcmul`` pass does
  scale + residual add (then ReLU in place).
"""
import copy
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

GATES = {'sigmoid': nn.Sigmoid, 'hard_sigmoid': nn.Hardsigmoid, 'tanh': nn.Tanh, 'relu': nn.ReLU}


def fold_conv_bn(conv: nn.Conv2d, bn: Optional[nn.Module]) -> nn.Conv2d:
    """A copy of ``conv`` computing ``bn(conv(x))`` (eval statistics), always with a bias."""
    if bn is not None and not isinstance(bn, nn.Identity):
        if not isinstance(bn, nn.BatchNorm2d) or type(bn).forward is not nn.BatchNorm2d.forward:
            raise TypeError(f'cannot fold {type(bn).__name__} into a convolution')
        return torch.nn.utils.fusion.fuse_conv_bn_eval(conv.eval(), bn.eval())
    conv = copy.deepcopy(conv).eval()
    if conv.bias is None:
        conv.bias = nn.Parameter(torch.zeros(conv.out_channels, dtype=conv.weight.dtype, device=conv.weight.device))
    return conv


def linear_from_1x1(conv: nn.Conv2d) -> nn.Linear:
    """A 1x1 convolution on a 1x1 map as the linear layer it is (an (N, C) matmul is cheaper)."""
    out_chs, in_chs = conv.weight.shape[:2]
    lin = nn.Linear(in_chs, out_chs, bias=conv.bias is not None)
    with torch.no_grad():
        lin.weight.copy_(conv.weight.detach().reshape(out_chs, in_chs))
        if conv.bias is not None:
            lin.bias.copy_(conv.bias.detach())
    return lin.to(conv.weight.dtype)


def scale_add(y: torch.Tensor, gate: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
    """``y * gate + shortcut`` in one pass (``addcmul``); exported to ONNX as Mul + Add (``addcmul``
    would add a Mul by its constant 1)."""
    if torch.jit.is_scripting():
        return torch.addcmul(shortcut, y, gate)
    if torch.onnx.is_in_onnx_export():
        return y * gate + shortcut
    return torch.addcmul(shortcut, y, gate)


class ExcitationGate(nn.Module):
    """``gate(fc2(act(fc1(squeeze(x)))))`` as an (N, C, 1, 1) tensor.

    ``squeeze`` is 'avg' or 'max'; pooling runs as a global pool (exported to ONNX as
    ``GlobalAveragePool`` / ``GlobalMaxPool``, which quantizes to an int8 kernel, where a
    ``ReduceMean`` does not).

    The FC weights are this module's own parameters, and the paper's ReLU and sigmoid run as in-place
    tensor ops, one module call per gate instead of five: at batch 1 each small call costs tens of
    microseconds once a large convolution has flushed the caches (what it saves on an SE-ResNet-50 is
    within the noise of ``bench/bench_se_cost.py`` here).
    Other activations and gates stay modules (``act`` / ``gate``), called as such."""

    def __init__(self, fc1: nn.Linear, act: nn.Module, fc2: nn.Linear, gate: nn.Module, squeeze: str = 'avg'):
        super().__init__()
        if squeeze not in ('avg', 'max'):
            raise ValueError(f'ExcitationGate squeezes by avg or max pooling, not {squeeze!r}')
        self.squeeze = squeeze
        self.channels = fc2.out_features
        self.fc1_weight, self.fc1_bias = _frozen_linear(fc1)
        self.fc2_weight, self.fc2_bias = _frozen_linear(fc2)
        self.act = None if type(act) is nn.ReLU else act
        self.gate = None if type(gate) is nn.Sigmoid else gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.squeeze == 'max':
            s = F.adaptive_max_pool2d(x, 1).flatten(1)
        else:
            s = F.adaptive_avg_pool2d(x, 1).flatten(1)
        s = F.linear(s, self.fc1_weight, self.fc1_bias)
        s = s.relu_() if self.act is None else self.act(s)
        s = F.linear(s, self.fc2_weight, self.fc2_bias)
        s = s.sigmoid_() if self.gate is None else self.gate(s)
        return s.reshape(-1, self.channels, 1, 1)  # one Reshape in ONNX (two Unsqueeze otherwise)

    def extra_repr(self) -> str:
        fc1, fc2 = self.fc1_weight.shape, self.fc2_weight.shape
        return (f'squeeze={self.squeeze!r}, fc1={fc1[1]}->{fc1[0]}, fc2={fc2[1]}->{fc2[0]}'
                + (', act=ReLU' if self.act is None else '') + (', gate=Sigmoid' if self.gate is None else ''))


def _frozen_linear(linear: nn.Linear):
    weight = nn.Parameter(linear.weight.detach().clone(), requires_grad=False)
    bias = linear.bias.detach().clone() if linear.bias is not None else torch.zeros_like(weight[:, 0])
    return weight, nn.Parameter(bias, requires_grad=False)


class PositionwiseGate(nn.Module):
    """The 'NoSqueeze' excitation: 1x1 convolutions at every position, a gate per position."""

    def __init__(self, fc1: nn.Conv2d, act: nn.Module, fc2: nn.Conv2d, gate: nn.Module):
        super().__init__()
        self.fc1 = fc1
        self.act = act
        self.fc2 = fc2
        self.gate = gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(self.fc2(self.act(self.fc1(x))))


class ScaleByGate(nn.Module):
    """``x * gate(x)``: an SE unit where no neighbouring layer can take the scale."""

    def __init__(self, gate: nn.Module):
        super().__init__()
        self.excite = gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.excite(x)


class ConvAct(nn.Module):
    """A convolution with its BatchNorm folded in, then an activation."""

    def __init__(self, conv: nn.Conv2d, act: nn.Module):
        super().__init__()
        self.conv = conv
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class GatedPointwiseConv(nn.Module):
    """``conv(x * g)`` (``gate_input``) or ``conv(x) * g``, then ``+ shortcut`` and ReLU when asked.

    Holds the folded 1x1 convolution's weight and bias itself (no submodule whose forward the
    folded path would skip). ``fold_gate``: at batch 1 put the gate into the weights when the
    weight tensor is smaller than the activation it would otherwise scale (False for exports:
    ONNX / INT8 graphs want static weights)."""

    def __init__(self, conv: nn.Conv2d, gate_input: bool, fold_gate: bool = True):
        super().__init__()
        if conv.kernel_size != (1, 1) or conv.stride != (1, 1) or conv.groups != 1 or conv.padding != (0, 0):
            raise ValueError('GatedPointwiseConv needs a plain 1x1 stride-1 convolution')
        if conv.bias is None:
            raise ValueError('GatedPointwiseConv needs the folded bias')
        self.in_channels = conv.in_channels
        self.out_channels = conv.out_channels
        self.weight = nn.Parameter(conv.weight.detach().clone(), requires_grad=False)
        self.bias = nn.Parameter(conv.bias.detach().clone(), requires_grad=False)
        self.gate_input = gate_input
        self.fold_gate = fold_gate

    def _fold(self, x: torch.Tensor, gate: torch.Tensor) -> bool:
        if not self.fold_gate or x.shape[0] != 1 or gate.shape[2] != 1 or gate.shape[3] != 1:
            return False
        positions = x.shape[2] * x.shape[3]  # scaling the activation touches channels x positions
        return (self.out_channels if self.gate_input else self.in_channels) < positions

    def forward(self, x: torch.Tensor, gate: Optional[torch.Tensor] = None,
                shortcut: Optional[torch.Tensor] = None, relu: bool = False) -> torch.Tensor:
        if gate is not None and self._fold(x, gate):
            if self.gate_input:
                y = F.conv2d(x, self.weight * gate.view(1, -1, 1, 1), self.bias)
            else:
                g = gate.view(-1)
                y = F.conv2d(x, self.weight * g.view(-1, 1, 1, 1), self.bias * g)
            if shortcut is not None:
                y = y.add_(shortcut)
        elif gate is not None and not self.gate_input:
            y = F.conv2d(x, self.weight, self.bias)
            if shortcut is None:
                y = y * gate
            else:
                y = scale_add(y, gate, shortcut)
        else:
            if gate is not None:
                x = x * gate
            y = F.conv2d(x, self.weight, self.bias)
            if shortcut is not None:
                y = y.add_(shortcut)
        return y.relu_() if relu else y

    def extra_repr(self) -> str:
        return (f'{self.in_channels}, {self.out_channels}, gate_input={self.gate_input}, '
                f'fold_gate={self.fold_gate}')
