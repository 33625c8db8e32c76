"""What se_hub knows about each registered model beyond its architecture: a description, the
paper row it reproduces (with the paper's figures), and the timm model computing the same
function. Family modules register their models here and with timm in one step."""
import copy
import inspect
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Tuple

from timm.models import PretrainedCfg, build_model_with_cfg, generate_default_cfgs, register_model

from ..weights.pretrained import tagged_cfgs, with_pretrained_source


@dataclass(frozen=True)
class ModelInfo:
    name: str
    family: str
    description: str
    paper: Dict[str, Any] = field(default_factory=dict)  # row, params (M), gmacs, top1_err, top5_err
    upstream: str = ''  # timm model with the same function (and key layout after conversion)


MODELS: Dict[str, ModelInfo] = {}


def split_model_name(spec: str) -> Tuple[str, str]:
    """'model.tag' -> (model, tag); a clear error naming close matches when the model is unknown."""
    model, _, tag = spec.partition('.')
    if model not in MODELS:
        close = [m for m in MODELS if model in m][:5]
        hint = f" (did you mean {', '.join(close)}?)" if close else ' (see `se-hub list`)'
        raise ValueError(f'unknown model {model!r}{hint}')
    return model, tag


def arch(description: str, paper: Dict[str, Any] = None, upstream: str = '', **args) -> Dict[str, Any]:
    """One configuration: model-class kwargs plus what the paper / upstream say about it."""
    return dict(args=args, description=description, paper=paper or {}, upstream=upstream)


# create_model/entrypoint kwargs that say how to build or load, not what the model computes (timm's
# create_model leaves the same ones out of model._model_args)
NOT_MODEL_ARGS = ('pretrained_cfg', 'pretrained_cfg_overlay', 'cache_dir', 'device', 'dtype', 'pretrained_model_args')

# The keyword arguments an entrypoint docstring may list, with what they do. Each model lists
# those its class takes and its configuration can honour (``documented_kwargs``).
MODEL_KWARGS: Dict[str, str] = {
    'num_classes': 'classifier width; 0 for none',
    'in_chans': 'input channels',
    'global_pool': "'avg', 'max', 'avgmax', ...",
    'drop_rate': 'dropout before the classifier',
    'drop_path_rate': 'stochastic depth of the residual branches',
    'features_only': "timm's feature extraction (with out_indices)",
    'se_layer': "'se', 'eca', 'cbam', 'none' or a callable taking the channel count",
    'se_args': "options of se_layer='se': rd_ratio, rd_channels, rd_divisor, squeeze, gate, bias, act_layer",
    'se_ratio': "SE width as a fraction of the block's input channels",
    'se_placement': "'standard', 'pre', 'post', 'identity' or '3x3'",
    'se_stages': 'the stages (0-3) that get SE',
}
_SE_ONLY = ('se_args', 'se_ratio', 'se_placement', 'se_stages')  # meaningless without SE


def documented_kwargs(model_cls: type, config: Dict[str, Any]) -> Tuple[str, ...]:
    """The ``MODEL_KWARGS`` a model of class ``model_cls`` built from ``config`` accepts and honours:
    the class's own parameters (``features_only`` is timm's), minus the class's
    ``unsupported_kwargs(config)``; the SE options only where the configuration has SE."""
    params = inspect.signature(model_cls).parameters
    unsupported = set(getattr(model_cls, 'unsupported_kwargs', lambda c: ())(config))
    se_layer = config.get('se_layer', params['se_layer'].default if 'se_layer' in params else None)
    has_se = isinstance(se_layer, str) and se_layer == 'se'
    return tuple(k for k in MODEL_KWARGS
                 if (k in params or k == 'features_only') and k not in unsupported
                 and (has_se or k not in _SE_ONLY))


def _entrypoint(create: Callable[..., Any], name: str) -> Callable[..., Any]:
    def entrypoint(pretrained: bool = False, **kwargs):
        model_args = {k: v for k, v in kwargs.items() if k not in NOT_MODEL_ARGS and v is not None}
        loaded = None
        if pretrained:
            kwargs, loaded = with_pretrained_source(name, kwargs)
        model = create(name, pretrained, **kwargs)
        # what rebuilds this model (exports write it as model_args), whether it came through
        # timm.create_model, torch.hub or this entrypoint; create_model adds the same keys later
        model._model_args = dict(getattr(model, '_model_args', None) or {}, **model_args)
        model.loaded_weights = loaded  # 'model.tag' from the manifest, the caller's source, or None: random
        for cfg in (getattr(model, 'pretrained_cfg', None), getattr(model, 'default_cfg', None)):
            if isinstance(cfg, dict):
                cfg.pop('state_dict', None)  # loaded; don't keep a reference to the weights alive
        return model
    return entrypoint


def register_family(module_name: str, archs: Dict[str, Dict[str, Any]], model_cls: type,
                    cfg: Callable[[str], Dict[str, Any]], checkpoint_filter_fn: Callable[..., Any],
                    **build_kwargs) -> None:
    """Register a thin timm entrypoint per configuration of ``archs`` in module ``module_name``,
    building ``model_cls`` with that configuration's kwargs, and record each model's ModelInfo.
    ``cfg(name)`` is the model's untagged pretrained cfg; the manifest's weights become its tags.
    ``build_kwargs`` go to timm's ``build_model_with_cfg`` (e.g. ``feature_cfg``)."""
    module = sys.modules[module_name]

    def create(variant: str, pretrained: bool = False, **kwargs):
        model_args = dict(archs[variant]['args'])
        se_layer = kwargs.get('se_layer', model_args.get('se_layer', 'se'))
        if not (isinstance(se_layer, str) and se_layer == 'se'):
            model_args.pop('se_args', None)  # the configuration's SE-unit options; the caller's still reach the check
        elif 'se_args' in kwargs:  # merge, so se_args=dict(gate='tanh') keeps the configuration's rounding rule
            model_args['se_args'] = dict(model_args.get('se_args') or {}, **kwargs.pop('se_args'))
        # a fresh copy per call: timm writes the caller's out_indices into feature_cfg
        return build_model_with_cfg(model_cls, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                                    **copy.deepcopy(build_kwargs), **dict(model_args, **kwargs))

    module.default_cfgs = {}
    for name, spec in archs.items():
        base = PretrainedCfg(**cfg(name)).to_dict()
        module.default_cfgs.update(generate_default_cfgs(tagged_cfgs(name, base)))
        info = ModelInfo(name, module_name.rsplit('.', 1)[-1], spec['description'], spec['paper'], spec['upstream'])
        entrypoint = _entrypoint(create, name)
        entrypoint.__name__ = entrypoint.__qualname__ = name
        entrypoint.__module__ = module_name
        entrypoint.__doc__ = (
            f'{info.description}.\n\n'
            + (f"Paper row: {info.paper['row']}.\n" if info.paper.get('row') else '')
            + (f"Same function as timm's `{info.upstream}`.\n" if info.upstream else '')
            + 'Keyword arguments: ' + ', '.join(
                f'`{k}` ({MODEL_KWARGS[k]})' for k in documented_kwargs(model_cls, spec['args'])) + '.'
        )
        setattr(module, name, register_model(entrypoint))
        MODELS[name] = info
