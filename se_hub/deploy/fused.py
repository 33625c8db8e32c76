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
  per-sample gate: one ``addcmul`` pass does scale + residual add (then ReLU in place), or the gate
  scales the input of a packed convolution; with ``fold_gate``, at batch 1 the gate goes into the
  weights where that touches fewer numbers than scaling the activation (early, high-resolution
  stages), which measured slower (oneDNN then reorders the weights on every call).
* ``FusedConv2d``  an ``nn.Conv2d`` with its ReLU / SiLU and a residual add fused in.

In eager CPU float32 inference the convolutions run as oneDNN convolutions whose activation and
residual add are post-ops, on weights reordered once into oneDNN's blocked layout and kept
(``onednn_conv``): what ``torch.compile``'s freezing does for its graphs, and what a plain
``F.conv2d`` redoes on every call. The SE squeeze is a plain ``mean`` there (``spatial_mean``).
Under a tracer, exporter, compiler, dispatch mode, TorchScript or autograd every module runs the
standard ops instead, so those tools see (and fuse) ``conv2d`` / ``adaptive_avg_pool2d``.
"""
import copy
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

GATES = {'sigmoid': nn.Sigmoid, 'hard_sigmoid': nn.Hardsigmoid, 'tanh': nn.Tanh, 'relu': nn.ReLU}
ACTIVATIONS = {nn.ReLU: 'relu', nn.SiLU: 'silu'}  # the activations a FusedConv2d runs as a post-op
_ONEDNN_UNARY = {'': 'none', 'relu': 'relu', 'silu': 'swish'}
_PACKED_SHAPES = 4  # packed weights kept per convolution (one per input shape seen)


# ---------------------------------------------------------------------------------------------
# Eager CPU inference: oneDNN convolutions on packed weights

def _onednn_ops_available() -> bool:
    ops = torch.ops.mkldnn
    return (torch.backends.mkldnn.is_available() and hasattr(ops, '_convolution_pointwise')
            and hasattr(ops, '_reorder_convolution_weight'))


_ONEDNN = _onednn_ops_available()


@torch.jit.unused
def eager_cpu_inference(x: torch.Tensor, *others: Optional[torch.Tensor]) -> bool:
    """Whether this call runs in plain eager PyTorch, float32 on the CPU, with no gradient to record
    and nothing observing the ops: no compiler (checked first: dynamo folds it), tracer, ONNX
    exporter or dispatch mode (FLOP counters, fake tensors), which must see the standard ops."""
    is_compiling = getattr(torch.compiler, 'is_compiling', None)
    if is_compiling is not None and is_compiling():
        return False
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return False
    from torch.utils._python_dispatch import _get_current_dispatch_mode
    if _get_current_dispatch_mode() is not None:
        return False
    grad = torch.is_grad_enabled()
    for t in (x,) + others:
        if t is None:
            continue
        if type(t) is not torch.Tensor and type(t) is not nn.Parameter:
            return False  # a tensor subclass (fake, functional, distributed, ...) keeps its own dispatch
        if t.device.type != 'cpu' or t.dtype != torch.float32 or (grad and t.requires_grad):
            return False
    return True


@torch.jit.unused
def onednn_conv(module: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                stride, padding, dilation, groups: int, shortcut: Optional[torch.Tensor], activation: str,
                pack: bool) -> Optional[torch.Tensor]:
    """``activation(conv(x) + shortcut)`` (zero padding) as one oneDNN convolution with post-ops, or
    None where that path does not apply (the caller runs the standard ops). Applies where ``F.conv2d``
    would run oneDNN's channels-last kernel itself (input or weight channels-last) in eager CPU
    inference, so the output layout is the same; where the op refuses a call, the standard ops run
    here. ``pack``: the weight is the module's own, reordered once per input
    shape and kept (a gate-scaled weight changes every call and is reordered by oneDNN as given)."""
    if not _ONEDNN or not torch.backends.mkldnn.enabled or module.__dict__.get('_onednn_failed', False):
        return None
    if x.dim() != 4 or not eager_cpu_inference(x, weight, bias, shortcut):
        return None
    channels_last = torch.channels_last
    if not (x.is_contiguous(memory_format=channels_last) or weight.is_contiguous(memory_format=channels_last)):
        return None
    if shortcut is not None and not shortcut.is_contiguous(memory_format=channels_last):
        return None
    stride, padding, dilation = list(stride), list(padding), list(dilation)
    ops = torch.ops.mkldnn
    try:
        onednn_weight = weight
        if pack:
            cache = module.__dict__.get('_onednn_packed')
            key = (weight.data_ptr(), weight._version, tuple(x.shape))
            onednn_weight = cache.get(key) if cache is not None else None
            if onednn_weight is None:
                if cache is None or len(cache) >= _PACKED_SHAPES or any(k[:2] != key[:2] for k in cache):
                    cache = module.__dict__['_onednn_packed'] = {}  # weights changed, or too many shapes
                onednn_weight = cache[key] = ops._reorder_convolution_weight(
                    weight, padding, stride, dilation, groups, list(x.shape))
        if shortcut is None:
            return ops._convolution_pointwise(x, onednn_weight, bias, padding, stride, dilation, groups,
                                              _ONEDNN_UNARY[activation], [], '')
        return ops._convolution_pointwise.binary(x, shortcut, onednn_weight, bias, padding, stride, dilation,
                                                 groups, 'add', 1.0,
                                                 _ONEDNN_UNARY[activation] if activation else None, [], '')
    except (RuntimeError, TypeError, NotImplementedError):
        pass
    # Refused: the standard ops on the same input. If they fail too, the input is wrong and torch's own
    # error reaches the caller, the fast path kept for the next input; if they succeed, the op is what
    # this torch build lacks or refuses, and the module takes the standard ops from now on.
    out = add_activate(F.conv2d(x, weight, bias, stride, padding, dilation, groups), shortcut, activation)
    module.__dict__['_onednn_failed'] = True
    return out


def add_activate(x: torch.Tensor, shortcut: Optional[torch.Tensor], activation: str) -> torch.Tensor:
    """``activation(x + shortcut)`` ('', 'relu', 'silu'), in place on a convolution's output: the
    standard ops' version of ``onednn_conv``'s post-ops."""
    if shortcut is not None:
        x = x.add_(shortcut)
    if activation == 'relu':
        return x.relu_()
    if activation == 'silu':
        return F.silu(x, inplace=True)
    return x


def spatial_mean(x: torch.Tensor) -> torch.Tensor:
    """(N, C) mean over H, W. In eager CPU inference a plain ``mean`` (``bench/bench_se_cost.py`` times
    it in the model against global pooling and a matrix-vector product); elsewhere a global average
    pool, which exporters keep as ``GlobalAveragePool`` (an int8 kernel once quantized)."""
    if not torch.jit.is_scripting():  # its own line: TorchScript skips only this form
        if x.dim() == 4 and eager_cpu_inference(x):
            return x.mean((2, 3))
    return F.adaptive_avg_pool2d(x, 1).flatten(1)


class OneDNNWeights:
    """Mixin of the modules that keep packed oneDNN weights: the cache is left out of copies,
    pickles and TorchScript (an opaque oneDNN tensor has no storage to copy; it is rebuilt on use)."""
    __jit_ignored_attributes__ = ['_onednn_packed', '_onednn_failed']

    def __getstate__(self):
        state = nn.Module.__getstate__(self)
        state.pop('_onednn_packed', None)
        state.pop('_onednn_failed', None)
        return state


class FusedConv2d(OneDNNWeights, nn.Conv2d):
    """``activation(conv(x) [+ shortcut])``: an ``nn.Conv2d`` (BN folded in) with its ReLU / SiLU and a
    residual add fused in, as one oneDNN convolution in eager CPU inference (``onednn_conv``).

    Made by re-classing an ``nn.Conv2d`` in place (``from_conv``): parameters, hooks and attributes
    stay; the forward takes an optional ``shortcut``."""

    activation: str

    @staticmethod
    def convertible(conv: nn.Module) -> bool:
        """A plain ``nn.Conv2d`` with explicit zero padding (not ``Conv2dSame`` & co., which pad in
        their own forward)."""
        return type(conv) is nn.Conv2d and conv.padding_mode == 'zeros' and not isinstance(conv.padding, str)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, activation: str = '') -> 'FusedConv2d':
        if not cls.convertible(conv):
            raise TypeError(f'FusedConv2d takes a plain zero-padded nn.Conv2d, not {conv!r}')
        if activation not in _ONEDNN_UNARY:
            raise ValueError(f'FusedConv2d activation is one of {sorted(_ONEDNN_UNARY)}, not {activation!r}')
        conv.__class__ = cls
        conv.activation = activation
        return conv

    def forward(self, input: torch.Tensor, shortcut: Optional[torch.Tensor] = None) -> torch.Tensor:
        out: Optional[torch.Tensor] = None
        if not torch.jit.is_scripting():
            out = onednn_conv(self, input, self.weight, self.bias, self.stride, self.padding, self.dilation,
                              self.groups, shortcut, self.activation, True)
        if out is None:
            out = add_activate(self._conv_forward(input, self.weight, self.bias), shortcut, self.activation)
        return out

    def extra_repr(self) -> str:
        return super().extra_repr() + (f', activation={self.activation}' if self.activation else '')


def fused_conv(conv: nn.Conv2d, act: Optional[nn.Module] = None) -> nn.Module:
    """``act(conv(x) [+ shortcut])`` as a ``FusedConv2d`` where ``act`` is ReLU / SiLU (or None), else
    as a ``ConvAct`` that calls ``act`` (kept as a module: hooks see it)."""
    act_name = '' if act is None or isinstance(act, nn.Identity) else ACTIVATIONS.get(type(act))
    if FusedConv2d.convertible(conv):
        if act_name is not None:
            return FusedConv2d.from_conv(conv, act_name)
        conv = FusedConv2d.from_conv(conv)
    return ConvAct(conv, act if act is not None else nn.Identity())


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
            s = spatial_mean(x)
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
    """``act(conv(x) [+ shortcut])``: a convolution with its BatchNorm folded in, then an activation
    that is not a oneDNN post-op (or a convolution that cannot be a ``FusedConv2d``)."""

    def __init__(self, conv: nn.Module, act: nn.Module):
        super().__init__()
        self.conv = conv
        self.act = act

    def forward(self, x: torch.Tensor, shortcut: Optional[torch.Tensor] = None) -> torch.Tensor:
        y = self.conv(x)
        if shortcut is not None:
            y = y + shortcut
        return self.act(y)


class GatedPointwiseConv(OneDNNWeights, nn.Module):
    """``conv(x * g)`` (``gate_input``) or ``conv(x) * g``, then ``+ shortcut`` and ReLU when asked.

    Holds the folded 1x1 convolution's weight and bias itself (no submodule whose forward the
    folded path would skip). ``fold_gate``: at batch 1 put the gate into the weights when the
    weight tensor is smaller than the activation it would otherwise scale (off by default: slower
    here, see ``optimize``; exports need it off, as ONNX / INT8 graphs want static weights).
    Without a gate, or with it in the weights, the add and ReLU are post-ops of the convolution in
    eager CPU inference (``onednn_conv``)."""

    def __init__(self, conv: nn.Conv2d, gate_input: bool, fold_gate: bool = False):
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

    def _conv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, shortcut: Optional[torch.Tensor],
              relu: bool, pack: bool) -> torch.Tensor:
        out: Optional[torch.Tensor] = None
        if not torch.jit.is_scripting():
            out = onednn_conv(self, x, weight, bias, (1, 1), (0, 0), (1, 1), 1, shortcut, 'relu' if relu else '', pack)
        if out is None:
            out = add_activate(F.conv2d(x, weight, bias), shortcut, 'relu' if relu else '')
        return out

    def forward(self, x: torch.Tensor, gate: Optional[torch.Tensor] = None,
                shortcut: Optional[torch.Tensor] = None, relu: bool = False) -> torch.Tensor:
        if gate is not None and self._fold(x, gate):
            if self.gate_input:
                return self._conv(x, self.weight * gate.view(1, -1, 1, 1), self.bias, shortcut, relu, False)
            g = gate.view(-1)
            return self._conv(x, self.weight * g.view(-1, 1, 1, 1), self.bias * g, shortcut, relu, False)
        if gate is not None and not self.gate_input:
            y = self._conv(x, self.weight, self.bias, None, False, True)
            if shortcut is None:
                y = y * gate
            else:
                y = scale_add(y, gate, shortcut)
            return y.relu_() if relu else y
        if gate is not None:
            x = x * gate
        return self._conv(x, self.weight, self.bias, shortcut, relu, True)

    def extra_repr(self) -> str:
        return (f'{self.in_channels}, {self.out_channels}, gate_input={self.gate_input}, '
                f'fold_gate={self.fold_gate}')
