"""Checkpoint layouts: detect which upstream wrote a state dict, convert it to se_hub's keys,
and load it with errors that say what did not fit.

Model families register the upstream layouts they can convert (``register_layout``). A
checkpoint whose keys are the model's own is layout 'se_hub' (timm's own models of the same
function share these keys).
"""
import os
from dataclasses import dataclass
from typing import Any, Callable, Collection, Dict, List, Mapping, Tuple, Union

import torch
from torch import nn

from .._compat import load_tensors_only, not_a_tensor_file

StateDict = Dict[str, torch.Tensor]


class CheckpointLayoutError(ValueError):
    """A checkpoint whose layout is unknown, or whose keys / shapes do not fit the model."""


@dataclass(frozen=True)
class Layout:
    name: str
    description: str
    matches: Callable[[Collection[str]], bool]  # on the checkpoint's keys
    convert: Callable[[StateDict], StateDict]  # to se_hub keys


LAYOUTS: Dict[str, Layout] = {}


def register_layout(name: str, description: str, matches: Callable[[Collection[str]], bool],
                    convert: Callable[[StateDict], StateDict]) -> None:
    LAYOUTS[name] = Layout(name, description, matches, convert)


NATIVE = Layout('se_hub', "se_hub's own keys (and timm's, for timm models of the same function)",
                lambda keys: False, dict)


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


def detect_layout(sd: Mapping[str, Any], model: nn.Module) -> Layout:
    """The first registered upstream layout whose (distinctive) key test accepts the keys, else
    the model's own layout when most of the model's keys are there."""
    for layout in LAYOUTS.values():
        if layout.matches(sd.keys()):
            return layout
    model_keys = set(model.state_dict())
    if model_keys and len(model_keys & set(sd)) >= len(model_keys) // 2:
        return NATIVE
    known = '; '.join(f'{lay.name}: {lay.description}' for lay in (NATIVE, *LAYOUTS.values()))
    raise CheckpointLayoutError(
        f"unknown checkpoint layout for {_model_name(model)} (first keys: {', '.join(list(sd)[:5])}). "
        f'Known layouts: {known}')


def convert_state_dict(checkpoint: Mapping[str, Any], model: nn.Module) -> Tuple[str, StateDict]:
    """(detected layout name, state dict with se_hub's keys)."""
    sd = unwrap_state_dict(checkpoint)
    layout = detect_layout(sd, model)
    return layout.name, _fill_bn_counters(layout.convert(sd), model)


def _fill_bn_counters(sd: StateDict, model: nn.Module) -> StateDict:
    # Caffe ports carry no num_batches_tracked; the counter only matters with momentum=None.
    for key, value in model.state_dict().items():
        if key.endswith('num_batches_tracked') and key not in sd:
            sd[key] = torch.zeros_like(value, device='cpu')
    return sd


# The key of a one-entry "state dict" that stands for a verified weight file (see verified_file_ref).
_VERIFIED_FILE = '__se_hub_verified_file__'


def verified_file_ref(path: Union[str, os.PathLike]) -> Dict[str, str]:
    """A stand-in for a state dict that timm carries through its pretrained cfg to the family's
    filter function, which reads the file then. timm deep-copies cfg values (``PretrainedCfg.to_dict``);
    a path costs nothing to copy, a real state dict would be held two or three times over."""
    return {_VERIFIED_FILE: os.fspath(path)}


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module) -> StateDict:
    """timm's ``pretrained_filter_fn``: any supported layout in, se_hub keys out. A
    ``verified_file_ref`` is read here, so the file's tensors are the only copy besides the model's."""
    if isinstance(state_dict, Mapping) and set(state_dict) == {_VERIFIED_FILE}:
        state_dict = read_checkpoint_file(state_dict[_VERIFIED_FILE])
    return convert_state_dict(state_dict, model)[1]


def _model_name(model: nn.Module) -> str:
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    return cfg.get('architecture') or type(model).__name__


def _mismatches(sd: StateDict, model: nn.Module, first: int = 5) -> Tuple[List[str], bool]:
    """Readable problems, and whether any is a shape mismatch (fatal even when not strict)."""
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
    return problems, bool(shapes)


def _select_state_dict(checkpoint: Mapping[str, Any], use_ema: bool, where: str) -> Mapping[str, Any]:
    """The weights of a training checkpoint, as timm's ``load_state_dict`` picks them (EMA weights
    first when asked, then ``state_dict``, then ``model``), but an EMA request that the checkpoint
    cannot serve is an error rather than a silent fall back to the raw weights."""
    from timm.models import clean_state_dict
    if not isinstance(checkpoint, Mapping):
        raise CheckpointLayoutError(f'{where} holds a {type(checkpoint).__name__}, not a checkpoint dict')
    if use_ema:
        key = next((k for k in ('state_dict_ema', 'model_ema') if checkpoint.get(k) is not None), None)
        if key is None:
            raise CheckpointLayoutError(
                f'{where} has no EMA weights (no state_dict_ema / model_ema; keys: {", ".join(map(str, checkpoint))}); '
                'load it with use_ema=False')
    else:
        key = next((k for k in ('state_dict', 'model') if isinstance(checkpoint.get(k), Mapping)), None)
    # DDP 'module.' and torch.compile '_orig_mod.' prefixes, as timm strips them
    return clean_state_dict(checkpoint[key]) if key else checkpoint


def load_checkpoint(
        model: nn.Module,
        checkpoint: Union[str, os.PathLike, Mapping[str, Any]],
        strict: bool = True,
        use_ema: bool = False,
) -> str:
    """Load a checkpoint in any supported upstream layout into ``model``.

    ``checkpoint`` is a path (``.safetensors``, or a torch file read with ``weights_only=True``,
    e.g. what timm's ``train.py`` / ``CheckpointSaver`` writes: ``state_dict``, ``state_dict_ema``,
    ``optimizer``, ``args`` as an ``argparse.Namespace``) or a (training checkpoint) dict.
    ``use_ema=True`` loads the EMA weights of a training checkpoint. The layout is detected from
    the keys; returns its name. Raises ``CheckpointLayoutError`` naming the layout and the first
    offending keys when it does not fit.
    """
    where = os.fspath(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else 'the checkpoint'
    if isinstance(checkpoint, (str, os.PathLike)):
        checkpoint = read_checkpoint_file(checkpoint)
    layout, sd = convert_state_dict(_select_state_dict(checkpoint, use_ema, where), model)
    problems, bad_shapes = _mismatches(sd, model)
    if problems and (strict or bad_shapes):
        description = LAYOUTS[layout].description if layout in LAYOUTS else NATIVE.description
        raise CheckpointLayoutError(
            f"checkpoint in layout {layout!r} ({description}) does not fit {_model_name(model)}: "
            + '; '.join(problems))
    model.load_state_dict(sd, strict=strict)
    model.loaded_weights = f'checkpoint:{where}' + (' (EMA)' if use_ema else '')
    return layout


def read_checkpoint_file(path: Union[str, os.PathLike]) -> Mapping[str, Any]:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint file not found: {path}')
    if path.endswith('.safetensors'):
        from safetensors.torch import load_file
        return load_file(path)
    try:
        return load_tensors_only(path)
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        raise CheckpointLayoutError(not_a_tensor_file(path, e)) from e
