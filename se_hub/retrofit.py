"""SE retrofit: Squeeze-and-Excitation units added to a pretrained SE-free network so that the
network computes exactly the same function until it is fine-tuned.

The paper's gate is a sigmoid, which is never exactly 1. A retrofitted unit uses the gate
``2 * sigmoid(z)`` (se_hub's ``gate='2sigmoid'``: range (0, 2)) and starts with its last FC (``fc2``)
at zero, so ``z = 0`` and the gate is exactly 1 for every input: the retrofitted network gives
the pretrained network's outputs bit for bit. The gradient reaching ``fc2`` is not zero (the gate's
slope at 0 is 0.5), so the first optimizer step moves ``fc2`` and from then on ``fc1`` learns too.
Every unit added is se_hub's ``SqueezeExcite`` (its forward returns the gate), called as a module
by its block: forward hooks, the excitation analysis and ``se_hub.deploy.optimize`` see it.

What can be retrofitted (``placement`` as in the paper's integration study, Fig. 5):

* se_hub's own models built SE-free (``se_layer='none'``, e.g. ``se_tf_efficientnet_lite0``,
  ``se_resnet50_none``): rebuilt by their family with ``se_layer='se'`` and the identity-init
  gate in ``se_args`` (and ``se_placement`` / ``se_stages`` where the family has them), the pretrained
  weights copied over. The recorded model arguments say so, so an export reloads as the
  retrofitted architecture (``timm.create_model('local-dir:OUT')``).
* timm ResNet / ResNeXt (``timm.models.resnet.ResNet``): the SE unit goes into each block's ``se``
  slot ('standard' placement only, the slot's place), wrapped so that the slot returns the scaled input.
* torchvision ResNet / ResNeXt / Wide ResNet: no slot, so each block's class becomes an SE subclass
  of it (same attributes, so the pretrained keys stay; new ``se.*`` keys); placements 'standard',
  'pre', 'post', 'identity' and, for bottlenecks, '3x3'.
* timm EfficientNet / MobileNetV2 / MobileNetV3-style MBConv networks (``InvertedResidual``,
  ``DepthwiseSeparableConv``, ``EdgeResidual`` blocks): the unit goes into each block's ``se`` slot,
  after the depthwise convolution, its width ``rd_ratio`` (default 0.25) x the block's *input*
  channels (timm's and se_hub's EfficientNet convention), the block's activation between the FCs.

``stages`` restricts SE to some stages: the residual networks' layer1-4 are stages 0-3; the MBConv
networks' stages are the entries of ``model.blocks``.
"""
import copy
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torchvision.models import resnet as tv_resnet

from .layers import SqueezeExcite, reduced_channels
from .layers.factory import SE_ARGS

__all__ = ['IDENTITY_GATE', 'PLACEMENTS', 'SEBasicBlock', 'SEBottleneck', 'SEScale', 'retrofit']

IDENTITY_GATE = '2sigmoid'  # exactly 1 where its input is 0 (se_hub/layers/se_block.py)
PLACEMENTS = ('standard', 'pre', 'post', 'identity', '3x3')
_RESIDUAL_STAGES = ('layer1', 'layer2', 'layer3', 'layer4')


class SEScale(nn.Module):
    """``x * excite(x)``: se_hub's SE unit (which returns its gate) in a slot whose caller expects the
    scaled input, as timm's blocks call their ``se``."""

    def __init__(self, excite: SqueezeExcite):
        super().__init__()
        self.excite = excite

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.excite(x)


def _identity_init(se: SqueezeExcite) -> SqueezeExcite:
    """fc2 = 0: the gate's input is 0 whatever the unit sees, and 2 * sigmoid(0) = 1 exactly."""
    with torch.no_grad():
        se.fc2.weight.zero_()
        if se.fc2.bias is not None:
            se.fc2.bias.zero_()
    return se


def _check_se_args(se_args: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    if se_args is None:
        se_args = {}
    if not isinstance(se_args, dict):
        raise TypeError(f'se_args must be a dict of SqueezeExcite options, not {type(se_args).__name__} ({se_args!r})')
    unknown = sorted(set(se_args) - SE_ARGS)
    if unknown:
        raise ValueError(f'se_args keys {unknown} are not options of SqueezeExcite; it takes {sorted(SE_ARGS)}')
    gate = se_args.get('gate', IDENTITY_GATE)
    if gate != IDENTITY_GATE:
        raise ValueError(
            f"se_args gate={gate!r}: a retrofitted SE unit must be exactly 1 at initialisation to leave the "
            f"pretrained network's output unchanged, which only gate={IDENTITY_GATE!r} (2 * sigmoid, range (0, 2)) "
            "is; drop 'gate' from se_args")
    return dict(se_args, gate=IDENTITY_GATE)


def _check_stages(stages: Optional[Iterable[int]], count: int, what: str) -> Tuple[int, ...]:
    if stages is None:
        return tuple(range(count))
    if isinstance(stages, int):
        stages = (stages,)
    try:
        stages = tuple(stages)
    except TypeError:
        raise TypeError(f'stages must be a sequence of stage indices, not {stages!r}') from None
    bad = [s for s in stages if not isinstance(s, int) or isinstance(s, bool) or not 0 <= s < count]
    if bad or not stages:
        raise ValueError(f'stages={stages!r}: {what} has stages 0-{count - 1}; give a non-empty subset of them')
    return tuple(sorted(set(stages)))


def retrofit(
        model: nn.Module,
        se_args: Optional[Dict[str, Any]] = None,
        placement: str = 'standard',
        stages: Optional[Sequence[int]] = None,
) -> nn.Module:
    """A copy of the SE-free ``model`` with SE units added, computing the same function as ``model``
    until it is trained (``model`` itself is left as it was).

    ``se_args``: options of se_hub's ``SqueezeExcite`` (``rd_ratio``, ``rd_channels``, ``rd_divisor``,
    ``squeeze``, ``act_layer``, ``bias``); the gate is always '2sigmoid' and the last FC starts at zero.
    ``placement``: 'standard' (on the residual branch before the addition), 'pre', 'post', 'identity'
    or '3x3' where the network supports it. ``stages``: indices of the stages that get SE (default:
    all). See the module's docstring for the supported networks; anything else is refused with a
    ValueError / TypeError saying why.
    """
    if placement not in PLACEMENTS:
        raise ValueError(f'placement={placement!r} is not one of {PLACEMENTS}')
    se_args = _check_se_args(se_args)
    if _is_se_hub_model(model):
        return _retrofit_se_hub(model, se_args, placement, stages)
    for matches, apply in _RETROFITS:
        if matches(model):
            new = copy.deepcopy(model)
            apply(new, se_args, placement, stages)
            return new
    if type(model).__name__ in ('FeatureListNet', 'FeatureDictNet', 'FeatureHookNet', 'FeatureGetterNet'):
        raise TypeError('retrofit the classification model, then extract features from it (features_only / '
                        'forward_intermediates): a features_only wrapper cannot be rebuilt')
    raise TypeError(
        f'retrofit does not know {type(model).__module__}.{type(model).__name__}; it supports se_hub models built '
        "SE-free (se_layer='none'), timm ResNet / ResNeXt, torchvision ResNet / ResNeXt and timm EfficientNet / "
        'MobileNet-style MBConv networks')


# --------------------------------------------------------------------------------- se_hub models

def _is_se_hub_model(model: nn.Module) -> bool:
    from .models.catalog import MODELS
    arch = (getattr(model, 'pretrained_cfg', None) or {}).get('architecture')
    return arch in MODELS and type(model).__module__.startswith('se_hub.models.')


def _se_slots(model: nn.Module) -> Iterator[Tuple[str, nn.Module]]:
    """(block name, attention unit) of every se_hub block holding one (a ``se_gates`` block whose ``se``
    is neither None nor an identity)."""
    for name, m in model.named_modules():
        if hasattr(m, 'se_gates') and not isinstance(getattr(m, 'se', None), (type(None), nn.Identity)):
            yield name, m.se


def _retrofit_se_hub(model: nn.Module, se_args: Dict[str, Any], placement: str,
                     stages: Optional[Sequence[int]]) -> nn.Module:
    import inspect

    from ._compat import create_model
    arch = model.pretrained_cfg['architecture']
    present = list(_se_slots(model))
    if present:
        name, unit = present[0]
        raise ValueError(f'{arch} already has attention units ({len(present)}, e.g. {type(unit).__name__} in '
                         f"{name}): retrofit adds SE to an SE-free network; build it with se_layer='none' (or use "
                         'it as it is)')
    built_with = getattr(model, '_model_args', None)
    if built_with is None:
        raise ValueError(f'{arch} was not built by its entrypoint (timm.create_model, torch.hub or se_hub), so its '
                         f"arguments are unknown: build it with timm.create_model('{arch}', se_layer='none', ...)")
    params = inspect.signature(type(model)).parameters
    if 'se_layer' not in params:
        raise TypeError(f'{arch} has no SE slots to fill')
    args = dict(built_with, se_layer='se', se_args=se_args, num_classes=model.num_classes)
    if placement != 'standard':
        if 'se_placement' not in params:
            raise ValueError(f"placement={placement!r}: {arch}'s family has one SE position per block ('standard', "
                             "the paper's); other placements need the residual family (SEResNet)")
        args['se_placement'] = placement
    if stages is not None:
        if 'se_stages' not in params:
            raise ValueError(f"stages={stages!r}: {arch}'s family puts SE in every block (no se_stages); "
                             'stages are for the residual family (SEResNet, stages 0-3)')
        args['se_stages'] = _check_stages(stages, 4, arch)
    try:
        new = create_model(arch, pretrained=False, **args)
    except (TypeError, ValueError) as e:
        raise ValueError(f'cannot add SE to {arch} with se_args={se_args}, placement={placement!r}, '
                         f'stages={stages!r}: {e}') from None
    missing, unexpected = new.load_state_dict(model.state_dict(), strict=False)
    stray = [k for k in missing if '.se.' not in f'.{k}'] + list(unexpected)
    if stray:  # the rebuild must differ from the model by its SE units only
        raise RuntimeError(f'retrofitting {arch} changed more than its SE units: {stray[:5]}')
    for module in new.modules():
        if isinstance(module, SqueezeExcite):
            _identity_init(module)
    for name, p in model.named_parameters():
        new.get_parameter(name).requires_grad_(p.requires_grad)
    ref = next(iter(model.parameters()), None)
    if ref is not None:
        new.to(device=ref.device, dtype=ref.dtype)
    new.train(model.training)
    new.pretrained_cfg = dict(model.pretrained_cfg)
    new.default_cfg = new.pretrained_cfg
    new.loaded_weights = getattr(model, 'loaded_weights', None)
    # what rebuilds this model: the export writes these, so local-dir:OUT reloads the retrofitted network
    new._model_args = dict(built_with, se_layer='se', se_args=se_args,
                           **{k: args[k] for k in ('se_placement', 'se_stages') if k in args})
    return new


# -------------------------------------------------------------------------- timm / torchvision

def _new_se(channels: int, se_args: Dict[str, Any], ref: nn.Module, **defaults) -> SqueezeExcite:
    """An identity-initialised SE unit on the device / dtype of ``ref``'s parameters."""
    se = _identity_init(SqueezeExcite(channels, **dict(defaults, **se_args)))
    p = next(ref.parameters(), None)
    return se.to(device=p.device, dtype=p.dtype) if p is not None else se


def _stage_blocks(model: nn.Module, names: Sequence[str], stages: Optional[Sequence[int]],
                  what: str) -> List[Tuple[str, nn.Module]]:
    chosen = _check_stages(stages, len(names), what)
    return [(f'{names[s]}.{i}', block) for s in chosen
            for i, block in enumerate(model.get_submodule(names[s]))]


def _is_timm_resnet(model: nn.Module) -> bool:
    from timm.models.resnet import ResNet
    return isinstance(model, ResNet)


def _retrofit_timm_resnet(model: nn.Module, se_args: Dict[str, Any], placement: str,
                          stages: Optional[Sequence[int]]) -> None:
    from timm.models.resnet import BasicBlock, Bottleneck
    if placement != 'standard':
        raise ValueError(f"placement={placement!r}: timm's ResNet blocks have one SE slot, on the residual branch "
                         "before the addition ('standard'); other placements are supported on torchvision ResNets "
                         "and se_hub's SEResNet family")
    blocks = _stage_blocks(model, _RESIDUAL_STAGES, stages, 'a ResNet')
    for name, block in blocks:
        if type(block) not in (BasicBlock, Bottleneck):
            raise TypeError(f'{name} is a {type(block).__name__}; retrofit knows timm\'s BasicBlock and Bottleneck')
        if block.se is not None:
            raise ValueError(f'{name} already has an attention unit ({type(block.se).__name__}): retrofit adds SE to '
                             'SE-free networks')
    for _, block in blocks:
        last_conv = block.conv3 if isinstance(block, Bottleneck) else block.conv2
        block.se = SEScale(_new_se(last_conv.out_channels, se_args, block))


def _is_torchvision_resnet(model: nn.Module) -> bool:
    return isinstance(model, tv_resnet.ResNet)


class SEBasicBlock(tv_resnet.BasicBlock):
    """torchvision's BasicBlock with an SE unit (``se``) at ``se_placement``."""
    se_placement: str

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        if self.se_placement == 'pre':
            x = x * self.se(x)
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return _torchvision_tail(self, out, shortcut)


class SEBottleneck(tv_resnet.Bottleneck):
    """torchvision's Bottleneck (ResNet-50 and up, ResNeXt, Wide ResNet) with an SE unit (``se``) at
    ``se_placement``."""
    se_placement: str

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        if self.se_placement == 'pre':
            x = x * self.se(x)
        out = self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))
        if self.se_placement == '3x3':
            out = out * self.se(out)
        out = self.bn3(self.conv3(out))
        return _torchvision_tail(self, out, shortcut)


def _torchvision_tail(block: nn.Module, out: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
    """Shortcut, 'standard' / 'identity' SE, addition, ReLU, 'post' SE: torchvision's block tail."""
    if block.downsample is not None:
        shortcut = block.downsample(shortcut)
    if block.se_placement == 'standard':
        out = out * block.se(out)
    elif block.se_placement == 'identity':
        shortcut = shortcut * block.se(shortcut)
    out = block.relu(out + shortcut)
    if block.se_placement == 'post':
        out = out * block.se(out)
    return out


_TORCHVISION_SE_BLOCKS = {tv_resnet.BasicBlock: SEBasicBlock, tv_resnet.Bottleneck: SEBottleneck}


def _retrofit_torchvision_resnet(model: nn.Module, se_args: Dict[str, Any], placement: str,
                                 stages: Optional[Sequence[int]]) -> None:
    blocks = _stage_blocks(model, _RESIDUAL_STAGES, stages, 'a ResNet')
    for name, block in blocks:
        if type(block) in _TORCHVISION_SE_BLOCKS.values() or hasattr(block, 'se'):
            raise ValueError(f'{name} already has an SE unit: retrofit adds SE to SE-free networks')
        if type(block) not in _TORCHVISION_SE_BLOCKS:
            raise TypeError(f"{name} is a {type(block).__name__}; retrofit knows torchvision's BasicBlock and "
                            'Bottleneck')
        if placement == '3x3' and not hasattr(block, 'conv3'):
            raise ValueError("placement='3x3' (SE after a bottleneck's 3x3 convolution) needs bottleneck blocks; "
                             f'{name} is a {type(block).__name__}')
    for _, block in blocks:
        last_bn = block.bn3 if hasattr(block, 'bn3') else block.bn2
        channels = {'pre': block.conv1.in_channels, '3x3': block.conv2.out_channels}.get(
            placement, last_bn.num_features)
        block.se = _new_se(channels, se_args, block)
        block.se_placement = placement
        block.__class__ = _TORCHVISION_SE_BLOCKS[type(block)]


def _is_timm_mbconv(model: nn.Module) -> bool:
    from timm.models.efficientnet import EfficientNet
    from timm.models.mobilenetv3 import MobileNetV3
    return isinstance(model, (EfficientNet, MobileNetV3))


def _mbconv_widths(block: nn.Module) -> Optional[Tuple[int, int]]:
    """(channels at the SE slot, the block's input channels) of a timm MBConv block with an SE slot."""
    from ._compat import efficientnet_blocks
    blocks = efficientnet_blocks
    InvertedResidual, DepthwiseSeparableConv, EdgeResidual = (
        blocks.InvertedResidual, blocks.DepthwiseSeparableConv, blocks.EdgeResidual)
    if isinstance(block, InvertedResidual):  # CondConvResidual too
        return block.conv_pwl.in_channels, block.conv_pw.in_channels
    if isinstance(block, DepthwiseSeparableConv):
        first = block.conv_s2d if getattr(block, 'conv_s2d', None) is not None else block.conv_dw
        return block.conv_pw.in_channels, first.in_channels
    if isinstance(block, EdgeResidual):
        return block.conv_pwl.in_channels, block.conv_exp.in_channels
    return None


def _block_act(block: nn.Module) -> Callable[..., nn.Module]:
    """The activation class of the block's first norm-act layer (timm's SE uses the block's)."""
    act = getattr(getattr(block, 'bn1', None), 'act', None)
    return type(act) if isinstance(act, nn.Module) and not isinstance(act, nn.Identity) else nn.ReLU


def _retrofit_timm_mbconv(model: nn.Module, se_args: Dict[str, Any], placement: str,
                          stages: Optional[Sequence[int]]) -> None:
    from ._compat import efficientnet_blocks
    ConvBnAct = efficientnet_blocks.ConvBnAct
    if placement != 'standard':
        raise ValueError(f"placement={placement!r}: MBConv blocks have one SE slot, after the depthwise convolution "
                         "('standard')")
    names = [f'blocks.{i}' for i in range(len(model.blocks))]
    blocks = _stage_blocks(model, names, stages, f'{type(model).__name__} (model.blocks)')
    targets = []
    for name, block in blocks:
        widths = _mbconv_widths(block)
        if widths is None:
            if isinstance(block, ConvBnAct):
                continue  # a plain conv stage (MobileNetV3's last): no SE position
            raise TypeError(f'{name} is a {type(block).__name__}; retrofit knows timm\'s InvertedResidual, '
                            'DepthwiseSeparableConv and EdgeResidual blocks (pick other stages with stages=)')
        if not isinstance(block.se, nn.Identity):
            raise ValueError(f'{name} already has an SE unit ({type(block.se).__name__}): retrofit adds SE where there '
                             'is none (pick other stages with stages=)')
        targets.append((block, widths))
    if not targets:
        raise ValueError(f'the chosen stages {stages!r} hold no block with an SE slot')
    args = dict(se_args)
    ratio = args.pop('rd_ratio', 0.25)
    divisor = args.pop('rd_divisor', 1)
    for block, (channels, in_chs) in targets:
        width = {} if 'rd_channels' in args else {'rd_channels': reduced_channels(in_chs, ratio, divisor)}
        block.se = SEScale(_new_se(channels, dict(args, **width), block, act_layer=_block_act(block)))


_RETROFITS: Tuple[Tuple[Callable[[nn.Module], bool], Callable[..., None]], ...] = (
    (_is_timm_resnet, _retrofit_timm_resnet),
    (_is_torchvision_resnet, _retrofit_torchvision_resnet),
    (_is_timm_mbconv, _retrofit_timm_mbconv),
)
