"""``optimize(model)``: the same function as fast as a CPU runs it, for every se_hub family.

What it does (each measured in ``bench/bench_deploy.py``):

* BatchNorm folded into the convolution before it (``torch.nn.utils.fusion.fuse_conv_bn_eval``);
* residual blocks (SE-ResNet / ResNeXt / SENet / CIFAR, any SE placement) and MBConv blocks
  rebuilt from their parameters as ``fused`` blocks: the SE squeeze of a bottleneck reads the
  last 1x1 convolution's input (4x smaller) by linearity, and scale + residual add + ReLU run as
  one ``addcmul`` plus an in-place ReLU (MBConv, SE-3x3: the gate scales the 1x1 convolution's
  input, whose packed convolution then takes the residual add). ``fold_gate=True`` puts the gate
  into that convolution's weights at batch 1 where the weights are the smaller tensor: fewer
  numbers touched, yet slower on this project's CPU (oneDNN reorders gate-scaled weights on every
  call; ``bench/bench_se_cost.py``), so it is off by default;
* a block class says how it fuses in its ``fusion`` attribute (``FUSIONS``: 'residual',
  'preact_residual', 'inverted_residual', 'conv_bn_act'); any module class (a model's stem / head, a
  block whose forward is kept: MobileNet, ShuffleNet, VGG, Shake-Shake) which (conv, BN) pairs fold in
  ``fusion_pairs``: a new family becomes fusable without a change here;
* the other SE units (Inception) become ``ScaleByGate`` modules; other attention modules (ECA,
  CBAM) and every other layer are kept as they are;
* every plain convolution becomes a ``FusedConv2d`` (re-classed in place: hooks stay), its ReLU /
  SiLU and the block's residual add fused in. In eager CPU float32 inference each runs as one oneDNN
  convolution with those as post-ops, on weights reordered once into oneDNN's blocked layout and
  kept (about as much memory again as the convolution weights); ``F.conv2d`` redoes that reorder on
  every call. This is what ``torch.compile``'s freezing does; it took ``optimize`` of an SE-ResNet-50
  at batch 1 from 1.10-1.14x to 1.71x timm's eager seresnet50 (README: 1.56x on a later machine).
  Autograd, tracers, exporters, ``torch.compile``, TorchScript and dispatch modes (FLOP counters) see
  the standard ops instead; ``torch.backends.mkldnn.flags(enabled=False)`` turns the oneDNN path off;
* weights channels-last (oneDNN's preferred layout), or whichever of NCHW and channels-last runs
  faster on an example input (``memory_format='auto'``): on this project's 2-core CPU the two are
  within a few % at batch 1 either way, while NCHW lost a quarter of the throughput at batch 16
  (``bench/bench_deploy.py``), so the timed pick depends on the batch it is timed at.

The training modules are read for their parameters only (``conv*`` / ``bn*`` / ``se.fc1`` /
``se.fc2`` / ``se.squeeze`` / the gate type / ``downsample``): no private method of theirs is
called, so they may change their internals.
"""
import copy
import statistics
import time
from typing import Callable, Dict, Optional, Sequence, Union

import torch
from torch import nn

from .fused import (
    GATES,
    ExcitationGate,
    FusedConv2d,
    GatedPointwiseConv,
    PositionwiseGate,
    ScaleByGate,
    fold_conv_bn,
    fused_conv,
    linear_from_1x1,
    scale_add,
)

__all__ = ['optimize', 'FusedResidualBlock', 'FusedInvertedResidual']


# ---------------------------------------------------------------------------------------------
# SE units -> gates

def _is_squeeze_excite(se: Optional[nn.Module]) -> bool:
    """se_hub's SE unit (read by its parameters): 1x1-conv fc1 / fc2, a squeeze name, a gate."""
    from ..layers import SqueezeExcite
    return (isinstance(se, SqueezeExcite) and isinstance(getattr(se, 'fc1', None), nn.Conv2d)
            and isinstance(getattr(se, 'fc2', None), nn.Conv2d)
            and getattr(se, 'squeeze', 'avg') in ('avg', 'max', 'none'))


def _gate_module(se: nn.Module) -> nn.Module:
    gate = getattr(se, 'gate', 'sigmoid')
    if isinstance(gate, str):
        if gate not in GATES:
            raise ValueError(f'unknown SE gate {gate!r}')
        return GATES[gate]()
    return copy.deepcopy(gate)


def _act_module(se: nn.Module) -> nn.Module:
    act = getattr(se, 'act', None)
    return copy.deepcopy(act) if isinstance(act, nn.Module) else nn.ReLU(inplace=True)


def excitation_gate(se: nn.Module, squeeze_from: Optional[nn.Conv2d] = None) -> nn.Module:
    """The gate of an SE unit; with ``squeeze_from`` (a folded 1x1 conv making the SE's input) the
    squeeze reads that conv's input and the conv is folded into fc1 (in float64)."""
    squeeze = getattr(se, 'squeeze', 'avg')
    act, gate = _act_module(se), _gate_module(se)
    if squeeze == 'none':
        return PositionwiseGate(copy.deepcopy(se.fc1), act, copy.deepcopy(se.fc2), gate)
    fc1, fc2 = linear_from_1x1(se.fc1), linear_from_1x1(se.fc2)
    if squeeze_from is not None:
        w1 = fc1.weight.double()
        b1 = fc1.bias.double() if fc1.bias is not None else torch.zeros(w1.shape[0], dtype=torch.float64)
        wp = squeeze_from.weight.detach().double().flatten(1)
        bp = squeeze_from.bias.detach().double()
        composed = nn.Linear(wp.shape[1], w1.shape[0])
        with torch.no_grad():
            composed.weight.copy_(w1 @ wp)
            composed.bias.copy_(w1 @ bp + b1)
        fc1 = composed.to(se.fc1.weight.dtype)
    return ExcitationGate(fc1, act, fc2, gate, squeeze)


def scale_module(se: Optional[nn.Module]) -> Optional[nn.Module]:
    """An SE unit as ``x * gate(x)`` from its parameters; any other attention module as it is."""
    if se is None or isinstance(se, nn.Identity):
        return None
    if _is_squeeze_excite(se):
        return ScaleByGate(excitation_gate(se))
    return copy.deepcopy(se)


def _returns_gate(se: nn.Module, gate: nn.Module) -> bool:
    """Whether the SE unit's forward returns its gate (the caller scales) or the scaled input:
    probed on a small input, so a block that is kept gets a replacement with its unit's contract."""
    weight = se.fc1.weight
    x = torch.rand(1, weight.shape[1], 3, 3, generator=torch.Generator().manual_seed(0)).to(weight)
    with torch.no_grad():
        out, g = copy.deepcopy(se).eval()(x), gate.eval()(x)
    if out.shape == g.shape and torch.allclose(out, g, atol=1e-5):
        return True
    if out.shape == x.shape and torch.allclose(out, x * g, atol=1e-5):
        return False
    raise ValueError(f'cannot tell what {type(se).__name__} returns (neither its gate nor the scaled input)')


def kept_block_se(se: nn.Module) -> nn.Module:
    """The replacement of an SE unit inside a block whose forward is kept (Inception): the gate
    module if the unit returns its gate, else gate and scale."""
    gate = excitation_gate(se)
    return gate if _returns_gate(se, gate) else ScaleByGate(gate)


def _fold_downsample(ds: Optional[nn.Module]) -> Optional[nn.Module]:
    if ds is None:
        return None
    if type(ds) is nn.Sequential and len(ds) >= 2 and isinstance(ds[-1], nn.BatchNorm2d) \
            and isinstance(ds[-2], nn.Conv2d):
        return nn.Sequential(*[copy.deepcopy(m) for m in ds[:-2]], fold_conv_bn(ds[-2], ds[-1]))
    return copy.deepcopy(ds)


def _pointwise(conv: nn.Conv2d) -> bool:
    return conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.groups == 1 and conv.padding == (0, 0)


# ---------------------------------------------------------------------------------------------
# Fused blocks

class FusedResidualBlock(nn.Module):
    """An SE residual unit (post- or pre-activation, basic or bottleneck, any SE placement), BN
    folded. ``branch``: the convolutions before the last one, each with its ReLU; the last
    convolution is ``conv_pw`` (a 1x1: takes the gate) or ``conv_last`` (a 3x3).
    ``shortcut_in_conv``: nothing scales the last convolution's output, so the residual add (and
    ReLU) run inside it (oneDNN post-ops in eager CPU inference)."""

    # no annotations on the module arguments: TorchScript resolves __init__'s annotations for
    # attributes that are None, and cannot resolve Optional[nn.Module]
    def __init__(self, branch, conv_pw, conv_last, downsample, pre_act=None, shortcut_preact: bool = False,
                 relu_out: bool = True, pre_se_act: bool = False, gate_from_input=None, gate_in=None,
                 gate_out=None, se_out=None, se_pre=None, se_3x3=None, se_identity=None, se_post=None,
                 shortcut_in_conv: bool = False):
        super().__init__()
        self.shortcut_in_conv = shortcut_in_conv
        self.pre_act = pre_act
        self.shortcut_preact = shortcut_preact
        self.se_pre = se_pre
        self.branch = branch
        self.se_3x3 = se_3x3
        self.gate_in = gate_in
        self.gate_from_input = gate_from_input
        self.conv_pw = conv_pw
        self.conv_last = conv_last
        self.pre_se_act = pre_se_act
        self.gate_out = gate_out
        self.se_out = se_out
        self.downsample = downsample
        self.se_identity = se_identity
        self.relu_out = relu_out
        self.se_post = se_post

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        if self.pre_act is not None:
            x = self.pre_act(x)
            if self.shortcut_preact:
                shortcut = x
        if self.se_pre is not None:
            x = self.se_pre(x)
        h = self.branch(x)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        if self.se_identity is not None:
            shortcut = self.se_identity(shortcut)
        if self.se_3x3 is not None:
            h = self.se_3x3(h)
        if self.conv_pw is not None:
            gate: Optional[torch.Tensor] = None
            if self.gate_from_input is not None:  # squeeze from the 1x1's input
                gate = self.gate_from_input(h)
            elif self.gate_in is not None:
                gate = self.gate_in(h)
            if self.shortcut_in_conv:  # gate into the weights or one scale + add pass; add + ReLU inside
                out = self.conv_pw(h, gate, shortcut, self.relu_out)
                return self.se_post(out) if self.se_post is not None else out
            y = self.conv_pw(h, gate)
        elif self.conv_last is not None:
            if self.shortcut_in_conv:  # its activation is the block's ReLU
                out = self.conv_last(h, shortcut)
                return self.se_post(out) if self.se_post is not None else out
            y = self.conv_last(h)
        else:
            raise RuntimeError('FusedResidualBlock has no last convolution')
        if self.pre_se_act:
            y = y.relu()
        if self.gate_out is not None:
            out = scale_add(y, self.gate_out(y), shortcut)
        else:
            if self.se_out is not None:
                y = self.se_out(y)
            out = y + shortcut
        if self.relu_out:
            out = out.relu_()
        if self.se_post is not None:
            out = self.se_post(out)
        return out


def fuse_residual_block(block: nn.Module, preact: bool, fold_gate: bool = False) -> FusedResidualBlock:
    """A post-activation ``BasicBlock`` / ``Bottleneck`` (conv1-bn1[-conv2-bn2]-conv_last-bn_last)
    or a pre-activation CIFAR unit (bn1-relu-conv1[-bn2-relu-conv2]-bn-relu-conv_last), read from
    ``conv1..3`` / ``bn1..3``, ``se`` (None or the unit), ``se_placement``, ``pre_se_act`` and ``downsample``."""
    if preact:
        # bn1 precedes a ReLU and cannot fold; bn2 / bn3 follow conv1 / conv2
        convs = [block.conv1, block.conv2] + ([block.conv3] if hasattr(block, 'conv3') else [])
        bns = [block.bn2] + ([block.bn3] if hasattr(block, 'conv3') else []) + [None]
        pre_act = nn.Sequential(copy.deepcopy(block.bn1), nn.ReLU(inplace=True))
        placement, pre_se_act, relu_out = 'standard', False, False
    else:
        convs = [block.conv1, block.conv2] + ([block.conv3] if hasattr(block, 'conv3') else [])
        bns = [block.bn1, block.bn2] + ([block.bn3] if hasattr(block, 'conv3') else [])
        pre_act = None
        placement = getattr(block, 'se_placement', 'standard')
        pre_se_act = isinstance(getattr(block, 'pre_se_act', None), nn.ReLU)
        relu_out = True
    folded = [fold_conv_bn(c, b) for c, b in zip(convs, bns)]
    branch = nn.Sequential(*[fused_conv(c, nn.ReLU()) for c in folded[:-1]])
    last = folded[-1]
    se = getattr(block, 'se', None)
    se = None if isinstance(se, nn.Identity) else se
    is_se = _is_squeeze_excite(se)
    kw = {}
    conv_pw, conv_last = None, None
    if _pointwise(last):
        gate_input = is_se and placement == '3x3'
        conv_pw = GatedPointwiseConv(last, gate_input=gate_input, fold_gate=fold_gate)
    if se is not None:
        if placement == 'standard':
            if is_se and conv_pw is not None and not pre_se_act and getattr(se, 'squeeze', 'avg') == 'avg':
                kw['gate_from_input'] = excitation_gate(se, squeeze_from=last)
            elif is_se:
                kw['gate_out'] = excitation_gate(se)
            else:
                kw['se_out'] = copy.deepcopy(se)
        elif placement == '3x3':
            if is_se and conv_pw is not None and getattr(se, 'squeeze', 'avg') != 'none':
                kw['gate_in'] = excitation_gate(se)
            else:
                conv_pw = GatedPointwiseConv(last, gate_input=False, fold_gate=fold_gate) if conv_pw else None
                kw['se_3x3'] = scale_module(se)
        elif placement in ('pre', 'identity', 'post'):
            kw[f'se_{placement}'] = scale_module(se)
        else:
            raise ValueError(f'unknown SE placement {placement!r}')
    shortcut_in_conv = not pre_se_act and not any(k in kw for k in ('gate_out', 'se_out'))
    if conv_pw is None:
        conv_last = fused_conv(last, nn.ReLU() if shortcut_in_conv and relu_out else None)
    ds = getattr(block, 'downsample', None)
    return FusedResidualBlock(
        branch, conv_pw, conv_last, _fold_downsample(ds), pre_act=pre_act,
        shortcut_preact=preact and isinstance(ds, nn.Conv2d), relu_out=relu_out, pre_se_act=pre_se_act,
        shortcut_in_conv=shortcut_in_conv, **kw)


class FusedInvertedResidual(nn.Module):
    """MBConv / depthwise-separable block, BN folded, the SE gate folded into the projection 1x1."""

    def __init__(self, conv_pw, conv_dw, gate, se_other, conv_pwl: GatedPointwiseConv, has_skip: bool):
        super().__init__()
        self.conv_pw = conv_pw
        self.conv_dw = conv_dw
        self.se_other = se_other
        self.gate = gate
        self.conv_pwl = conv_pwl
        self.has_skip = has_skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        if self.conv_pw is not None:
            x = self.conv_pw(x)
        x = self.conv_dw(x)
        if self.se_other is not None:
            x = self.se_other(x)
        gate: Optional[torch.Tensor] = None
        if self.gate is not None:
            gate = self.gate(x)
        return self.conv_pwl(x, gate, shortcut if self.has_skip else None)


def fuse_inverted_residual(block: nn.Module, fold_gate: bool = False) -> FusedInvertedResidual:
    """An MBConv (``conv_pw``-``bn1``-``act1``-``conv_dw``-``bn2``-``act2``-``se``-``conv_pwl``-``bn3``) or
    depthwise-separable block (``conv_dw``-``bn1``-``act1``-``se``-``conv_pw``-``bn2``); ``has_skip``."""
    if hasattr(block, 'conv_pwl'):  # MBConv: pw -> dw -> SE -> pwl
        conv_pw = fused_conv(fold_conv_bn(block.conv_pw, block.bn1), copy.deepcopy(block.act1))
        conv_dw = fused_conv(fold_conv_bn(block.conv_dw, block.bn2), copy.deepcopy(block.act2))
        pwl = fold_conv_bn(block.conv_pwl, block.bn3)
    else:  # depthwise-separable: dw -> SE -> pw
        conv_pw = None
        conv_dw = fused_conv(fold_conv_bn(block.conv_dw, block.bn1), copy.deepcopy(block.act1))
        pwl = fold_conv_bn(block.conv_pw, block.bn2)
    se = getattr(block, 'se', None)
    gate, se_other = None, None
    if _is_squeeze_excite(se) and getattr(se, 'squeeze', 'avg') != 'none':
        gate = excitation_gate(se)
    else:
        se_other = scale_module(se)
    conv_pwl = GatedPointwiseConv(pwl, gate_input=True, fold_gate=fold_gate)
    return FusedInvertedResidual(conv_pw, conv_dw, gate, se_other, conv_pwl, bool(getattr(block, 'has_skip', False)))


# ---------------------------------------------------------------------------------------------
# Whole models

def _split_bn(bn: nn.BatchNorm2d, start: int, stop: int) -> nn.BatchNorm2d:
    """Channels ``start:stop`` of an eval BatchNorm as a BatchNorm of their own."""
    part = nn.BatchNorm2d(stop - start, eps=bn.eps).to(bn.weight)
    with torch.no_grad():
        for name in ('weight', 'bias', 'running_mean', 'running_var'):
            getattr(part, name).copy_(getattr(bn, name)[start:stop])
    return part.eval()


def _fold_pair(module: nn.Module, conv_names: Union[str, Sequence[str]], bn_name: str) -> None:
    """Fold ``module.<bn_name>`` into the convolution(s) before it, then make it an Identity. Several
    convolutions: the BN normalises their outputs concatenated in that order (channel slices)."""
    bn = getattr(module, bn_name, None)
    if not isinstance(bn, nn.BatchNorm2d) or type(bn).forward is not nn.BatchNorm2d.forward:
        return
    names = (conv_names,) if isinstance(conv_names, str) else tuple(conv_names)
    convs = [getattr(module, n, None) for n in names]
    if len(convs) > 1:
        if not all(type(c) is nn.Conv2d for c in convs) or sum(c.out_channels for c in convs) != bn.num_features:
            return
        start = 0
        for n, c in zip(names, convs):
            setattr(module, n, fold_conv_bn(c, _split_bn(bn, start, start + c.out_channels)))
            start += c.out_channels
    elif type(convs[0]) is nn.Sequential and isinstance(convs[0][-1], nn.Conv2d):  # deep stem: its last conv
        convs[0][-1] = fold_conv_bn(convs[0][-1], bn)
    elif isinstance(convs[0], nn.Conv2d):
        setattr(module, names[0], fold_conv_bn(convs[0], bn))
    else:
        return
    setattr(module, bn_name, nn.Identity())


def _fold_sequentials(module: nn.Module) -> None:
    """(Conv2d, BatchNorm2d) pairs inside plain ``nn.Sequential`` containers (deep stems)."""
    for m in list(module.modules()):
        if type(m) is not nn.Sequential:
            continue
        for i in range(len(m) - 1):
            if isinstance(m[i], nn.Conv2d) and type(m[i + 1]) is nn.BatchNorm2d:
                m[i] = fold_conv_bn(m[i], m[i + 1])
                m[i + 1] = nn.Identity()


def fuse_conv_bn_act(block: nn.Module, fold_gate: bool = False) -> nn.Module:
    """``conv`` - ``bn`` - ``act`` as one convolution with its activation."""
    return fused_conv(fold_conv_bn(block.conv, block.bn), copy.deepcopy(block.act))


# What a block class declares in its ``fusion`` attribute -> how it is rebuilt (the parameters it must
# hold are in each function's docstring). A new family's block declares one of these; deploy/ need not know it.
FUSIONS: Dict[str, Callable[[nn.Module, bool], nn.Module]] = {
    'residual': lambda block, fold_gate: fuse_residual_block(block, False, fold_gate),
    'preact_residual': lambda block, fold_gate: fuse_residual_block(block, True, fold_gate),
    'inverted_residual': fuse_inverted_residual,
    'conv_bn_act': fuse_conv_bn_act,
}


def _replace_blocks(model: nn.Module, fold_gate: bool) -> None:
    for name, child in list(model.named_children()):
        fusion = getattr(type(child), 'fusion', None)
        if isinstance(fusion, str) and fusion in FUSIONS:
            setattr(model, name, FUSIONS[fusion](child, fold_gate))
        elif _is_squeeze_excite(child):
            setattr(model, name, kept_block_se(child))  # an SE unit whose block is kept (Inception)
        else:
            _replace_blocks(child, fold_gate)


_FORMATS = {'contiguous': torch.contiguous_format, 'channels_last': torch.channels_last}


def _input_size(model: nn.Module) -> Sequence[int]:
    cfg = getattr(model, 'pretrained_cfg', None) or getattr(model, 'default_cfg', None) or {}
    return tuple(cfg.get('input_size', (3, 224, 224)))


def fastest_memory_format(model: nn.Module, example_input: Optional[torch.Tensor] = None,
                          repeats: int = 3) -> str:
    """'contiguous' or 'channels_last': whichever runs ``model`` (eval) faster on ``example_input``
    (default: one random image at the model's input size), median of ``repeats`` calls after one
    warm-up. The model is left in the winning format."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device('cpu')
    x = example_input if example_input is not None else torch.randn(1, *_input_size(model), device=device)

    def sync():
        if x.device.type == 'cuda':
            torch.cuda.synchronize(x.device)

    medians = {}
    with torch.inference_mode():
        for name, fmt in _FORMATS.items():
            model.to(memory_format=fmt)
            try:
                model(x)
            except Exception as e:
                raise ValueError(f"optimize(memory_format='auto') times the model on an input of shape "
                                 f"{tuple(x.shape)}, which it cannot run ({type(e).__name__}: {e}); pass "
                                 f"example_input= or a memory_format") from e
            times = []
            for _ in range(repeats):
                sync()
                start = time.perf_counter()
                model(x)
                sync()
                times.append(time.perf_counter() - start)
            medians[name] = statistics.median(times)
    best = min(medians, key=medians.get)
    model.to(memory_format=_FORMATS[best])
    return best


def optimize(model: nn.Module, memory_format: Union[str, torch.memory_format, None] = torch.channels_last,
             fold_gate: bool = False, example_input: Optional[torch.Tensor] = None) -> nn.Module:
    """An eval-only copy of ``model`` computing the same function faster (see module docstring).

    ``memory_format``: of the weights (activations follow), recorded as ``optimized_memory_format``.
    Channels-last by default: within a few % of NCHW at batch 1 here, and up to a quarter faster at
    batch 16. 'auto' times both on ``example_input`` (default: one random image at the model's input
    size; a few forward passes) and keeps the faster: give it an input of the batch size you will run.
    None keeps the model's. ``fold_gate``: at batch 1, put an SE gate that scales a 1x1 convolution into
    its weights where they are the smaller tensor (off: slower on this project's CPU, see the module
    docstring; exports keep it off, as ONNX / INT8 graphs need static weights). The copy keeps the
    model's attributes (``pretrained_cfg``, ``forward_features``, ...)."""
    if not (memory_format is None or memory_format == 'auto' or isinstance(memory_format, torch.memory_format)):
        raise ValueError(f"memory_format must be 'auto', a torch.memory_format (torch.channels_last, "
                         f"torch.contiguous_format) or None, not {memory_format!r}")
    was_training = model.training
    model.eval()
    try:
        fused = copy.deepcopy(model)
    finally:
        model.train(was_training)
    fused.requires_grad_(False)
    for m in list(fused.modules()):  # the (conv, BN) pairs each module class declares
        for conv_names, bn_name in getattr(type(m), 'fusion_pairs', ()):
            _fold_pair(m, conv_names, bn_name)
    _fold_sequentials(fused)
    _replace_blocks(fused, fold_gate)
    for m in fused.modules():  # stems, shortcuts, heads, kept modules: packed weights, same forward
        if FusedConv2d.convertible(m):
            FusedConv2d.from_conv(m)
    fused.eval()
    if memory_format == 'auto':
        fused.optimized_memory_format = fastest_memory_format(fused, example_input)
    elif memory_format is not None:
        fused = fused.to(memory_format=memory_format)
        fused.optimized_memory_format = 'channels_last' if memory_format == torch.channels_last else 'contiguous'
    else:
        fused.optimized_memory_format = None
    return fused
