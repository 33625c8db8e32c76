"""Glue between the manifest and timm's pretrained machinery.

Each manifest entry becomes a timm pretrained tag (``timm.list_pretrained('se_*')``) whose cfg
carries the entry's preprocessing, Hub id and URL. When a model is created with
``pretrained=True``, se_hub resolves, verifies and reads the file itself (sources.py) and hands
timm the state dict, so timm's own code converts the layout (the family's filter function),
re-initialises a head of another size and adapts ``in_chans``.
"""
from typing import Any, Dict, Optional, Tuple

from .checkpoint import read_checkpoint_file
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


def with_pretrained_state(model: str, kwargs: Dict[str, Any]) -> Tuple[Dict[str, Any], Optional[str]]:
    """Model kwargs for ``pretrained=True``: the verified state dict of the requested tag in
    ``pretrained_cfg_overlay`` (unless the caller already points timm at a file or state dict),
    and the 'model.tag' loaded (None when timm loads what the caller named)."""
    overlay = dict(kwargs.get('pretrained_cfg_overlay') or {})
    cfg = kwargs.get('pretrained_cfg')
    if isinstance(cfg, str):  # timm passes the tag of 'model.tag' as a string
        cfg = {'tag': cfg}
    cfg = cfg if isinstance(cfg, dict) else (cfg.to_dict() if cfg is not None else {})
    if overlay.get('file') or overlay.get('state_dict') or cfg.get('source') in ('hf-hub', 'local-dir'):
        return kwargs, None  # timm loads what the caller pointed it at (exports, explicit files)
    tag = cfg.get('tag') or ''
    try:
        entry, tag = find_weights(model, tag)
    except UnknownWeightsError as e:
        raise UnknownWeightsError(f'{e}; create it with pretrained=False, or load a checkpoint with '
                           'se_hub.load_checkpoint') from None
    overlay['state_dict'] = read_checkpoint_file(resolve_weight_file(entry))
    return dict(kwargs, pretrained_cfg_overlay=overlay), f'{model}.{tag}'
