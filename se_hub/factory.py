"""Models for the tasks, the analysis tools and the exports: built from a spec (a registered name
``se_resnet50``, a pretrained tag ``se_resnet50b.ra2_in1k``, ``local-dir:DIR``, ``hf-hub:OWNER/REPO``
or a directory), with architecture arguments, optionally over pretrained weights with fresh SE units;
and the data config a model's inputs need."""
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from torch import nn

from .hub import architecture

# the architecture arguments of a model's SE design: what may differ from its pretrained weights' shapes
SE_DESIGN_KEYS = ('se_layer', 'se_args', 'se_ratio', 'se_placement', 'se_stages')


def model_spec(spec: str) -> str:
    """A directory is a ``local-dir:`` model; anything else is passed on as it is."""
    return f'local-dir:{spec}' if Path(spec).is_dir() else spec


def create_model(spec: str, pretrained: bool, model_kwargs: Optional[Mapping[str, Any]] = None,
                 fresh_se: bool = False, log=print, **kwargs) -> nn.Module:
    """The se_hub model ``spec`` names. ``kwargs`` left at 0 / None are timm's defaults and not passed;
    ``model_kwargs`` always are (``se_layer=None`` means the SE-free network). ``fresh_se``: pretrained
    weights for all but the SE units, which start fresh (their shapes may differ from the weights')."""
    from ._compat import create_model as timm_create_model
    from .models.catalog import split_model_name
    if pretrained and fresh_se:
        return create_with_fresh_se(spec, model_kwargs, log=log, **kwargs)
    if isinstance(spec, str) and not spec.startswith(('local-dir:', 'hf-hub:')):
        split_model_name(spec)
    model_kwargs = dict(model_kwargs or {})  # se_layer=None reaches the model as 'none' (_compat.create_model)
    try:
        model = timm_create_model(spec, pretrained=pretrained, **{k: v for k, v in kwargs.items() if v},
                                  **model_kwargs)
    except RuntimeError as e:
        se_design = sorted(set(SE_DESIGN_KEYS) & set(model_kwargs))
        if pretrained and se_design and 'state_dict' in str(e):
            raise ValueError(f"the pretrained weights do not fit the SE design asked for ({', '.join(se_design)}): "
                             'add --fresh-se (fresh_se=True) to load every other tensor and start the SE units '
                             'fresh') from None
        raise
    architecture(model)  # a local-dir: / hf-hub: model must be an se_hub one too
    return model


def data_config(model: nn.Module, img_size: Optional[int] = None) -> Dict[str, Any]:
    """timm's data config of ``model`` (mean, std, crop, ...) at ``img_size`` x ``img_size`` if given."""
    from timm.data import resolve_data_config
    cfg = resolve_data_config({}, model=model)
    if img_size:
        cfg['input_size'] = (cfg['input_size'][0], img_size, img_size)
    return cfg


def describe_change(change: Mapping[str, Any]) -> str:
    """``se_args.rd_ratio=0.25, se_layer=eca``: the architecture arguments ``change`` sets."""
    parts = []
    for key, value in change.items():
        if isinstance(value, dict):
            parts += [f'{key}.{k}={_short(v)}' for k, v in value.items()]
        else:
            parts.append(f'{key}={_short(value)}')
    return ', '.join(parts) or '(unchanged)'


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f'{value:.6g}'
    if isinstance(value, (list, tuple)):
        return '(' + ','.join(_short(v) for v in value) + (',)' if len(value) == 1 else ')')
    return str(value)


def se_tensor_names(model: nn.Module) -> List[str]:
    """State-dict keys of the model's SE units: the attention module each block holds as ``se``
    (se_hub's SqueezeExcite, timm's ECA / CBAM, or a callable's module)."""
    from .layers.factory import ATTENTION_LAYERS
    kinds = tuple(ATTENTION_LAYERS.values())
    prefixes = tuple(f'{name}.' for name, m in model.named_modules()
                     if name and (name.rsplit('.', 1)[-1] == 'se' or isinstance(m, kinds)))
    return [k for k in model.state_dict() if k.startswith(prefixes)]


def create_with_fresh_se(spec: str, model_kwargs: Optional[Mapping[str, Any]] = None, log=print,
                         **kwargs) -> nn.Module:
    """``spec`` built with ``model_kwargs``, its weights from ``spec``'s pretrained weights for every
    tensor but the SE units', which keep their fresh initialisation (``se_layer`` / ``se_args`` /
    ``se_placement`` / ... may change the SE shapes, or add or remove SE, without the pretrained load
    failing). Every other tensor must exist in the weights with the same shape: a clear error
    otherwise. The classifier is the pretrained one when ``num_classes`` equals the weights', else
    fresh (timm's rule). Logs what started fresh; ``model.fresh_tensors`` lists it."""
    model_kwargs = dict(model_kwargs or {})
    shared_kwargs = {k: v for k, v in model_kwargs.items() if k not in SE_DESIGN_KEYS}
    donor = create_model(spec, pretrained=True, model_kwargs=shared_kwargs, **kwargs)
    model = create_model(spec, pretrained=False, model_kwargs=model_kwargs, **kwargs)
    theirs, ours = donor.state_dict(), model.state_dict()
    fresh, unused = set(se_tensor_names(model)), set(se_tensor_names(donor))
    shared = [k for k in ours if k not in fresh]
    missing = [k for k in shared if k not in theirs]
    mismatched = [f'{k} {tuple(ours[k].shape)} vs {tuple(theirs[k].shape)}' for k in shared
                  if k in theirs and ours[k].shape != theirs[k].shape]
    extra = [k for k in theirs if k not in unused and k not in ours]
    if missing or mismatched or extra:
        what = '; '.join(f'{label}: {", ".join(keys[:4])}{", ..." if len(keys) > 4 else ""}' for label, keys in
                         (('not in the weights', missing), ('other shapes', mismatched),
                          ('only in the weights', extra)) if keys)
        raise ValueError(f'{spec} with {describe_change(model_kwargs)} changes more than the SE units ({what}): '
                         'only SE options (se_layer, se_args, se_ratio, se_placement, se_stages) may differ from the '
                         'pretrained network')
    model.load_state_dict({**{k: theirs[k] for k in shared}, **{k: ours[k] for k in fresh}})
    cfg_classes = (donor.pretrained_cfg or {}).get('num_classes')
    head = [k for k, _ in model.get_classifier().named_parameters()] if cfg_classes != model.num_classes else []
    classifier = model.pretrained_cfg.get('classifier', 'fc')
    model.fresh_tensors = sorted(fresh) + [f'{classifier}.{k}' for k in head]
    model.loaded_weights = f'{donor.loaded_weights} (SE units fresh)'
    log(f'{spec}: {len(shared) - len(head)} tensors from {donor.loaded_weights}; '
        f'fresh: {len(fresh)} SE tensors' + (', the classifier' if head else '')
        + (f'; {len(unused)} SE tensors of the weights unused' if unused else ''))
    return model
