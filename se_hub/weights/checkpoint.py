"""Checkpoint layouts: detect which upstream wrote a state dict, convert it to se_hub's keys,
and load it with errors that say what did not fit."""
import os
import re
from typing import Any, Callable, Dict, List, Mapping, Tuple, Union

import torch
from torch import nn

StateDict = Dict[str, torch.Tensor]


class CheckpointLayoutError(ValueError):
    """A checkpoint whose layout is unknown, or whose keys / shapes do not fit the model."""


def _from_se_hub(sd: StateDict) -> StateDict:
    return dict(sd)


_CADENE_STEM = {  # layer0 of the Cadene / Caffe SENets -> timm-style stem
    'deep': {'conv1': 'conv1.0', 'bn1': 'conv1.1', 'conv2': 'conv1.3', 'bn2': 'conv1.4',
             'conv3': 'conv1.6', 'bn3': 'bn1'},
    '7x7': {'conv1': 'conv1', 'bn1': 'bn1'},
}


def _from_cadene(sd: StateDict) -> StateDict:
    stem = _CADENE_STEM['deep' if 'layer0.conv2.weight' in sd else '7x7']
    out = {}
    for key, value in sd.items():
        m = re.match(r'layer0\.(\w+)\.(.+)', key)
        if m:
            key = f'{stem.get(m.group(1), "layer0." + m.group(1))}.{m.group(2)}'
        key = key.replace('.se_module.', '.se.')
        key = re.sub(r'^last_linear\.', 'fc.', key)
        out[key] = value
    return out


# name -> (what wrote it, test on the keys, converter to se_hub keys)
LAYOUTS: Dict[str, Tuple[str, Callable[[Mapping[str, Any]], bool], Callable[[StateDict], StateDict]]] = {
    'cadene': (
        "Cadene pretrainedmodels / timm legacy_se* (layer0.*, se_module, last_linear)",
        lambda sd: any(k.startswith(('layer0.', 'last_linear.')) for k in sd),
        _from_cadene,
    ),
    'se_hub': (
        "se_hub / timm ResNet family (conv1, layerN.M.se, fc)",
        lambda sd: ('conv1.weight' in sd or 'conv1.0.weight' in sd) and any(k.startswith('layer1.') for k in sd),
        _from_se_hub,
    ),
}


def unwrap_state_dict(checkpoint: Mapping[str, Any]) -> StateDict:
    """The tensors of a checkpoint: accepts training checkpoints ({'state_dict': ...},
    {'model': ...}) and DistributedDataParallel's 'module.' prefix."""
    for wrapper in ('state_dict', 'model', 'module'):
        inner = checkpoint.get(wrapper) if isinstance(checkpoint, Mapping) else None
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            checkpoint = inner
            break
    if not isinstance(checkpoint, Mapping) or not checkpoint:
        raise CheckpointLayoutError('the checkpoint holds no state dict (a mapping of names to tensors)')
    sd = {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}
    if sd and all(k.startswith('module.') for k in sd):
        sd = {k[len('module.'):]: v for k, v in sd.items()}
    return sd


def detect_layout(sd: Mapping[str, Any]) -> str:
    for name, (_, matches, _) in LAYOUTS.items():
        if matches(sd):
            return name
    keys = ', '.join(list(sd)[:5])
    known = '; '.join(f'{name}: {desc}' for name, (desc, _, _) in LAYOUTS.items())
    raise CheckpointLayoutError(f'unknown checkpoint layout (first keys: {keys}). Known layouts: {known}')


def convert_state_dict(checkpoint: Mapping[str, Any]) -> Tuple[str, StateDict]:
    """(detected layout, state dict with se_hub's keys)."""
    sd = unwrap_state_dict(checkpoint)
    layout = detect_layout(sd)
    return layout, LAYOUTS[layout][2](sd)


def _fill_bn_counters(sd: StateDict, model: nn.Module) -> StateDict:
    # Caffe ports carry no num_batches_tracked; the counter only matters with momentum=None.
    for key, value in model.state_dict().items():
        if key.endswith('num_batches_tracked') and key not in sd:
            sd[key] = torch.zeros_like(value, device='cpu')
    return sd


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module) -> StateDict:
    """timm's ``pretrained_filter_fn``: any supported layout in, se_hub keys out."""
    _, sd = convert_state_dict(state_dict)
    return _fill_bn_counters(sd, model)


def _mismatch_report(sd: StateDict, model: nn.Module, first: int = 5) -> List[str]:
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [f'{k} {tuple(sd[k].shape)} != {tuple(v.shape)}'
              for k, v in expected.items() if k in sd and sd[k].shape != v.shape]
    problems = []
    for label, items in (('missing keys', missing), ('unexpected keys', unexpected), ('shape mismatches', shapes)):
        if items:
            more = f' (+{len(items) - first} more)' if len(items) > first else ''
            problems.append(f"{len(items)} {label}: {', '.join(items[:first])}{more}")
    return problems


def load_checkpoint(
        model: nn.Module,
        checkpoint: Union[str, os.PathLike, Mapping[str, Any]],
        strict: bool = True,
) -> str:
    """Load a checkpoint in any supported upstream layout into ``model``.

    ``checkpoint`` is a path (``.safetensors``, or a torch file read with ``weights_only=True``)
    or a state dict. The layout is detected from the keys; returns its name. Raises
    ``CheckpointLayoutError`` naming the layout and the first offending keys when it does not fit.
    """
    if isinstance(checkpoint, (str, os.PathLike)):
        checkpoint = read_checkpoint_file(checkpoint)
    layout, sd = convert_state_dict(checkpoint)
    sd = _fill_bn_counters(sd, model)
    problems = _mismatch_report(sd, model)
    if strict and problems or any(p.split(' ', 2)[1:2] == ['shape'] for p in problems):
        name = getattr(getattr(model, 'pretrained_cfg', None) or {}, 'get', lambda *_: None)('architecture')
        target = name or type(model).__name__
        raise CheckpointLayoutError(
            f"checkpoint in layout {layout!r} ({LAYOUTS[layout][0]}) does not fit {target}: " + '; '.join(problems))
    model.load_state_dict(sd, strict=strict)
    return layout


def read_checkpoint_file(path: Union[str, os.PathLike]) -> Mapping[str, Any]:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint file not found: {path}')
    if path.endswith('.safetensors'):
        from safetensors.torch import load_file
        return load_file(path)
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        raise CheckpointLayoutError(
            f'{path} could not be read as a tensors-only torch checkpoint ({type(e).__name__}: '
            f'{str(e).splitlines()[0] if str(e) else ""}). se_hub never unpickles code; '
            'convert the file to safetensors or a plain state dict.') from e
