"""The timm and huggingface_hub APIs se_hub uses that are newer than its declared floors
(timm 1.0.15, huggingface-hub 0.23), each with a fall-back for the older releases. Everything
else se_hub imports from timm exists, public, in every release of the range.

Where each API appeared (read from timm's release tags and huggingface_hub's wheels):

- ``timm.layers.get_device_dtype``: timm 1.0.29.
- ``create_classifier(..., device=, dtype=)``: timm 1.0.21.
- ``timm.models.save_for_hf``: exported from timm 1.0.16 (``timm.models._hub`` before).
- ``feature_take_indices``: only ever in the private ``timm.models._features`` (every 1.0.x).
- timm's MBConv block classes (``InvertedResidual``, ``DepthwiseSeparableConv``, ``EdgeResidual``,
  ``ConvBnAct``, ``SqueezeExcite``): only ever in the private ``timm.models._efficientnet_blocks``
  (every 1.0.x); ``efficientnet_blocks`` is that module, for the analysis tools that recognise them.
- ``local-dir:`` model names in ``timm.create_model``: timm 1.0.16.
- ``huggingface_hub.errors.LocalEntryNotFoundError``: huggingface_hub 0.24
  (``huggingface_hub.utils`` has it in every release).
- ``torch.serialization.safe_globals`` (a scoped allow-list for ``weights_only`` loads): torch 2.5.
- ``torch._C._autograd._top_saved_tensors_default_hooks`` (the active saved-tensor hooks; private in
  every release): torch 2.8.
"""
import argparse
import inspect
import json
import pickle
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import timm
import torch
from timm.layers import create_classifier as _timm_create_classifier
from torch import nn

try:
    from timm.layers import get_device_dtype
except ImportError:  # timm < 1.0.29
    def get_device_dtype(module: nn.Module, device=None, dtype=None) -> Dict[str, Any]:
        """``device=`` / ``dtype=`` factory kwargs: the explicit ones, else those of ``module``'s
        first parameter."""
        parameter = next(module.parameters(), None)
        if parameter is not None:
            device = parameter.device if device is None else device
            dtype = parameter.dtype if dtype is None else dtype
        return {'device': device, 'dtype': dtype}

_CLASSIFIER_TAKES_DD = 'dtype' in inspect.signature(_timm_create_classifier).parameters


def create_classifier(num_features: int, num_classes: int, pool_type: str = 'avg', device=None, dtype=None,
                      **kwargs) -> Tuple[nn.Module, ...]:
    """timm's ``create_classifier``, with ``device=`` / ``dtype=`` on every release (timm < 1.0.21
    builds on the default device and the result is moved)."""
    if _CLASSIFIER_TAKES_DD:
        return _timm_create_classifier(num_features, num_classes, pool_type=pool_type, device=device, dtype=dtype,
                                       **kwargs)
    modules = _timm_create_classifier(num_features, num_classes, pool_type=pool_type, **kwargs)
    if device is None and dtype is None:
        return modules
    return tuple(m.to(device=device, dtype=dtype) for m in modules)


try:
    from timm.models import save_for_hf
except ImportError:  # timm < 1.0.16
    from timm.models._hub import save_for_hf

from timm.models import _efficientnet_blocks as efficientnet_blocks  # noqa: E402,F401  (private: see above)

try:  # no public home in any timm release; the fall-back is for when the private module changes
    from timm.models._features import feature_take_indices
except ImportError:
    def feature_take_indices(num_features: int, indices: Optional[Union[int, List[int]]] = None,
                             as_set: bool = False) -> Tuple[List[int], int]:
        """``(absolute indices, largest index)`` of the features to take: all when ``indices`` is
        None, the last ``n`` for an int, else the listed ones (negative counts from the end)."""
        if indices is None:
            indices = num_features
        if isinstance(indices, int):
            torch._assert(0 < indices <= num_features, f'last-n ({indices}) is out of range (1 to {num_features})')
            take = [num_features - indices + i for i in range(indices)]
        else:
            take: List[int] = []
            for i in indices:
                idx = num_features + i if i < 0 else i
                torch._assert(0 <= idx < num_features, f'feature index {idx} is out of range (0 to {num_features - 1})')
                take.append(idx)
        if not torch.jit.is_scripting() and as_set:
            return set(take), max(take)
        return take, max(take)

try:
    from huggingface_hub.errors import LocalEntryNotFoundError
except ImportError:  # huggingface_hub < 0.24
    from huggingface_hub.utils import LocalEntryNotFoundError


def _timm_reads_local_dir() -> bool:
    try:
        return timm.models.parse_model_name('local-dir:x')[0] == 'local-dir'
    except AssertionError:  # timm < 1.0.16 asserts the source is '' / 'timm' / 'hf-hub'
        return False


TIMM_HAS_LOCAL_DIR = _timm_reads_local_dir()
LOCAL_DIR = 'local-dir:'


def create_model(model_name: str, pretrained: bool = False, **kwargs) -> nn.Module:
    """``timm.create_model``; on timm < 1.0.16, which has no ``local-dir:`` source, a
    ``local-dir:PATH`` name is read here the way later timm reads it: ``PATH/config.json`` names
    the architecture, its pretrained cfg (label names included) and model args, and
    ``PATH/model.safetensors`` (or ``pytorch_model.bin``) holds the weights.

    ``se_layer=None`` is passed as ``'none'``: timm drops None-valued kwargs, so None would
    silently build the default SE network instead of the SE-free one."""
    if 'se_layer' in kwargs and kwargs['se_layer'] is None:
        kwargs['se_layer'] = 'none'
    if TIMM_HAS_LOCAL_DIR or not model_name.startswith(LOCAL_DIR):
        return timm.create_model(model_name, pretrained=pretrained, **kwargs)
    path = Path(model_name[len(LOCAL_DIR):])
    config_file = path / 'config.json'
    if not config_file.is_file():
        raise FileNotFoundError(f'{model_name}: no config.json in {path} (a directory written by '
                                'se_hub.save_pretrained or timm.models.save_for_hf is expected)')
    config = json.loads(config_file.read_text(encoding='utf-8'))
    cfg = dict(config.get('pretrained_cfg') or {})
    for key in ('num_classes', 'label_names', 'label_descriptions'):
        if key in config:
            cfg[key] = config[key]
    if pretrained:
        weights = next((path / f for f in ('model.safetensors', 'pytorch_model.bin') if (path / f).is_file()), None)
        if weights is None:
            raise FileNotFoundError(f'{model_name}: no model.safetensors or pytorch_model.bin in {path}')
        # an overlay's file is what timm loads first, on every release
        kwargs['pretrained_cfg_overlay'] = dict(kwargs.get('pretrained_cfg_overlay') or {}, file=str(weights))
    for key, value in (config.get('model_args') or {}).items():
        kwargs.setdefault(key, value)
    model = timm.create_model(config['architecture'], pretrained=pretrained, pretrained_cfg=cfg, **kwargs)
    if pretrained and hasattr(model, 'loaded_weights'):
        model.loaded_weights = model_name  # the export's weights, as timm's own reader reports them: its tag holds
    return model


def load_tensors_only(file: Any, map_location: Any = 'cpu') -> Any:
    """``torch.load(file, weights_only=True)``: tensors and plain data only, plus the ``argparse.Namespace``
    that timm's training checkpoints carry in ``args`` (a plain attribute bag; nothing else is allowed)."""
    serialization = torch.serialization
    if hasattr(serialization, 'safe_globals'):  # torch >= 2.5
        with serialization.safe_globals([argparse.Namespace]):
            return torch.load(file, map_location=map_location, weights_only=True)
    # torch 2.4: only a process-wide allow-list; Namespace is on it for this load only
    allowed = serialization.get_safe_globals()
    serialization.add_safe_globals([argparse.Namespace])
    try:
        return torch.load(file, map_location=map_location, weights_only=True)
    finally:
        serialization.clear_safe_globals()
        serialization.add_safe_globals(allowed)


def not_a_tensor_file(where: Any, error: BaseException) -> str:
    """One line for a torch file that ``load_tensors_only`` could not read. torch's own message advises
    retrying with ``weights_only=False`` (running whatever the file holds): it is never repeated."""
    if isinstance(error, pickle.UnpicklingError):
        found = re.search(r'GLOBAL (\S+)', str(error))
        held = f'it refers to the Python object {found.group(1)}' if found else 'it holds Python objects'
        return (f'{where} is not a plain tensor checkpoint: {held}, and se_hub never unpickles code; save the '
                'state dict of tensors alone, or convert the file to safetensors')
    first = str(error).strip().split('. ')[0].splitlines()[0] if str(error).strip() else ''
    detail = f' ({first})' if first and 'weights_only' not in first else ''
    return (f'{where} is not a plain tensor checkpoint: not a torch file, or a damaged one{detail}; '
            'save the state dict of tensors alone, or convert the file to safetensors')


__all__ = ['LOCAL_DIR', 'TIMM_HAS_LOCAL_DIR', 'LocalEntryNotFoundError', 'create_classifier', 'create_model',
           'feature_take_indices', 'get_device_dtype', 'load_tensors_only', 'not_a_tensor_file', 'save_for_hf']


def innermost_saved_tensors_hooks() -> Tuple[bool, Optional[Tuple[Any, Any]]]:
    """``(known, hooks)``: ``hooks`` is the ``(pack, unpack)`` pair of the innermost active
    ``torch.autograd.graph.saved_tensors_hooks`` (None when none is active); ``known`` is False where
    torch cannot tell (before 2.8, which added ``_top_saved_tensors_default_hooks``, private in every
    release)."""
    top = getattr(torch._C._autograd, '_top_saved_tensors_default_hooks', None)
    if top is None:
        return False, None
    return True, top(False)
