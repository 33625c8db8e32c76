"""SE-VGG-16: VGG-16 with batch normalisation (as the paper trains it) and an SE block after the
non-linearity following each of the 13 convolutions (paper, Sec. 3.3: "The SE block can be
integrated into standard architectures such as VGGNet by insertion after the non-linearity
following each convolution"; Sec. 5.1: "we add Batch Normalization layers after each
convolution"). Table 2 of the TPAMI version: VGG-16 15.47 GFLOPs, 27.02 / 8.81 top-1 / top-5
error (re-implementation) -> SE-VGG-16 15.48 GFLOPs, 25.22 / 7.70.

The SE-free network (``se_layer='none'``) is torchvision's ``vgg16_bn``: conv (with bias) -> BN ->
ReLU, 2x2 max-pools, an adaptive average pool to 7x7 and the fc6 / fc7 / fc8 classifier with
dropout 0.5. fc6 and fc7 are stored as convolutions (fc6 a 7x7 conv over the 7x7 map, fc7 a
1x1 conv), which compute exactly torchvision's flatten + linear layers: the 'torchvision_vgg'
checkpoint layout reshapes their weights. They run in ``forward_features`` (``final``), so the
features have 4096 channels on a 1x1 map and fc8 is the classifier; the feature taps are the
ReLU (+ SE) outputs before each max-pool, at strides 1-16.
"""
import re
import warnings
from typing import Any, Dict, Optional, Sequence

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from ..layers import AttentionSlot, SeLayer, resolve_se_layer
from ..weights.checkpoint import StateDict, checkpoint_filter_fn, register_layout
from .catalog import Family, arch
from .staged import StagedNet, build_on, init_conv_weights, stage_paths

__all__ = ['SEVGG', 'VGG16_STAGES', 'adaptive_avg_pool_matmul']

# VGG-16 (configuration "D" of Simonyan & Zisserman): output channels of the convs of each stage.
VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


class ConvBnReluSE(AttentionSlot):
    """3x3 conv (with bias, as torchvision's VGG) -> BN -> ReLU -> SE."""
    fusion_pairs = (('conv', 'bn'),)  # (conv, BN) pairs se_hub.deploy.optimize folds

    def __init__(self, in_chs: int, out_chs: int, attn_layer):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, 3, padding=1)
        self.bn = nn.BatchNorm2d(out_chs)
        self.act = nn.ReLU(inplace=True)
        self._init_attention(attn_layer(out_chs) if attn_layer is not None else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._attend(self.act(self.bn(self.conv(x))))


def _bin_matrix(n_in: int, n_out: int, like: torch.Tensor) -> torch.Tensor:
    """(n_out, n_in): row i averages input positions floor(i * n_in / n_out) to ceil((i + 1) * n_in / n_out) - 1,
    the bins of adaptive average pooling. Built from Python numbers: a constant in a traced graph."""
    rows = []
    for i in range(n_out):
        start, end = (i * n_in) // n_out, -(-(i + 1) * n_in // n_out)
        rows.append([1.0 / (end - start) if start <= j < end else 0.0 for j in range(n_in)])
    return torch.tensor(rows, dtype=like.dtype, device=like.device)


def adaptive_avg_pool_matmul(x: torch.Tensor, size: int) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, size)`` as two matrix products (bins along H, then W): ONNX exports
    adaptive pooling only where the map is a multiple of ``size``; this form exports at any size."""
    with warnings.catch_warnings():  # the tracer's notes that the matrices are constants: they are
        warnings.simplefilter('ignore', torch.jit.TracerWarning)
        rows, cols = _bin_matrix(int(x.shape[-2]), size, x), _bin_matrix(int(x.shape[-1]), size, x)
    return rows @ x @ cols.t()


class VGGClassifierMLP(nn.Module):
    """fc6 / fc7 of VGG: max-pool -> adaptive avg-pool to ``pool`` -> fc6 (as a conv over the whole
    pooled map) -> ReLU -> dropout -> fc7 (1x1 conv) -> ReLU -> dropout."""

    def __init__(self, in_chs: int, hidden: int = 4096, pool: int = 7, drop_rate: float = 0.5):
        super().__init__()
        self.pool = nn.MaxPool2d(2, 2)
        self.pool_size = pool
        self.avgpool = nn.AdaptiveAvgPool2d(pool)
        self.fc6 = nn.Conv2d(in_chs, hidden, pool)
        self.act6 = nn.ReLU(inplace=True)
        self.drop6 = nn.Dropout(drop_rate)
        self.fc7 = nn.Conv2d(hidden, hidden, 1)
        self.act7 = nn.ReLU(inplace=True)
        self.drop7 = nn.Dropout(drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x)
        x = self.avgpool(x) if torch.jit.is_scripting() else self._avgpool_exportable(x)
        x = self.drop6(self.act6(self.fc6(x)))
        return self.drop7(self.act7(self.fc7(x)))

    @torch.jit.unused
    def _avgpool_exportable(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export() and (x.shape[-2] % self.pool_size or x.shape[-1] % self.pool_size):
            return adaptive_avg_pool_matmul(x, self.pool_size)  # the same average, in a form ONNX has
        return self.avgpool(x)


class SEVGG(StagedNet):
    """VGG with BN and SE after each conv's ReLU. Keys: ``stages.<s>.<i>.conv / bn / se`` (each
    stage after the first starts with its max-pool, ``stages.<s>.0``), ``final.fc6 / fc7``, ``fc``."""

    def __init__(
            self,
            stages: Sequence[Sequence[int]] = VGG16_STAGES,
            mlp_hidden: int = 4096,
            mlp_drop_rate: float = 0.5,
            se_layer: SeLayer = 'se',
            se_args: Optional[Dict[str, Any]] = None,
            num_classes: int = 1000,
            in_chans: int = 3,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            device=None,
            dtype=None,
    ):
        super().__init__()
        with build_on(self, device, dtype):
            attn_layer = resolve_se_layer(se_layer, se_args)
            self._init_net(num_classes, in_chans, drop_rate)
            self.stem_pool = nn.Identity()
            in_chs, blocks, reduction = in_chans, [], 1
            self.feature_info = []
            for stage_idx, widths in enumerate(stages):
                layers = [nn.MaxPool2d(2, 2)] if stage_idx else []
                reduction *= 2 if stage_idx else 1
                for width in widths:
                    layers.append(ConvBnReluSE(in_chs, width, attn_layer))
                    in_chs = width
                blocks.append(nn.Sequential(*layers))
                self.feature_info.append(dict(num_chs=in_chs, reduction=reduction, module=f'stages.{stage_idx}'))
            self.stages = nn.Sequential(*blocks)
            self.final = VGGClassifierMLP(in_chs, mlp_hidden, drop_rate=mlp_drop_rate)
            self._init_trunk(stem=('stem_pool',), stages=stage_paths('stages', len(blocks)), final=('final',))
            self._init_head(mlp_hidden, num_classes, global_pool)
            self.init_weights()

    @torch.jit.ignore
    def init_weights(self) -> None:
        # torchvision's VGG initialisation
        init_conv_weights(self, zero_bias=True)
        for m in self.final.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, 0.01)
        if isinstance(self.fc, nn.Linear):
            nn.init.normal_(self.fc.weight, 0, 0.01)
            nn.init.zeros_(self.fc.bias)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r'^stages\.0\.0\.', blocks=[
            (r'^stages\.(\d+)' if coarse else r'^stages\.(\d+)\.(\d+)', None), (r'^final', (99999,))])


ARCHS: Dict[str, Dict[str, Any]] = {
    'se_vgg16': arch(
        'SE-VGG-16: VGG-16 with BN, SE after each convolution\'s ReLU',
        dict(row='TPAMI Table 2: SE-VGG-16 (VGG-16 with BN)', gmacs=15.48, top1_err=25.22, top5_err=7.70,
             baseline=dict(gmacs=15.47, top1_err=27.02, top5_err=8.81)),
        upstream='', se_args=dict(rd_ratio=1 / 16, rd_divisor=1)),
}


def _cfg(name: str) -> Dict[str, Any]:
    return {
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (1, 1),
        'crop_pct': 0.875, 'interpolation': 'bilinear',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stages.0.0.conv', 'classifier': 'fc', 'license': 'apache-2.0',
        'description': ARCHS[name]['description'],
        'paper_ids': 'arXiv:1709.01507', 'paper_name': 'Squeeze-and-Excitation Networks',
    }


_family = Family(__name__, ARCHS, SEVGG, _cfg, checkpoint_filter_fn, feature_cfg=dict(flatten_sequential=True))


@_family.register
def se_vgg16(pretrained: bool = False, **kwargs) -> SEVGG:
    return _family.create('se_vgg16', pretrained, **kwargs)


# ---------------------------------------------------------------------------------------------
# torchvision's VGG layout: features.<n> (conv, BN, ReLU and max-pool layers numbered in one
# sequence), classifier.0 / .3 / .6 (fc6, fc7, fc8 as linear layers).

def _from_torchvision_vgg(sd: StateDict) -> StateDict:
    # The conv layers in order of their index in `features`, each followed by its BN.
    conv_idx = sorted({int(m.group(1)) for m in (re.match(r'features\.(\d+)\.weight$', k) for k in sd)
                       if m and sd[m.group(0)].ndim == 4})
    names, stage, pos = {}, 0, 0
    prev = None
    for n in conv_idx:
        if prev is not None and n - prev > 3:  # a max-pool between them: next stage (its pool is position 0)
            stage, pos = stage + 1, 1
        names[n], names[n + 1] = f'stages.{stage}.{pos}.conv', f'stages.{stage}.{pos}.bn'
        pos, prev = pos + 1, n
    out = {}
    for key, value in sd.items():
        m = re.match(r'features\.(\d+)\.(.+)', key)
        if m:
            out[f'{names[int(m.group(1))]}.{m.group(2)}'] = value
            continue
        m = re.match(r'classifier\.(\d+)\.(weight|bias)', key)
        if m:
            layer = {'0': 'final.fc6', '3': 'final.fc7', '6': 'fc'}[m.group(1)]
            if layer == 'final.fc6' and m.group(2) == 'weight':
                value = value.reshape(value.shape[0], -1, 7, 7)  # flatten order (C, H, W) of the 7x7 map
            elif layer == 'final.fc7' and m.group(2) == 'weight':
                value = value.reshape(*value.shape, 1, 1)
            out[f'{layer}.{m.group(2)}'] = value
            continue
        out[key] = value
    return out


register_layout(
    'torchvision_vgg', "torchvision's VGG (features.<n> conv / BN layers, classifier.0 / 3 / 6)",
    lambda keys: 'features.0.weight' in keys and 'classifier.6.weight' in keys, _from_torchvision_vgg)
