"""What se_hub knows about each registered model beyond its architecture: a description, the
paper row it reproduces (with the paper's figures), and the timm model computing the same
function. Each family module declares its configurations as data in a ``Family`` and writes one
thin entrypoint per model (``def se_resnet50(pretrained=False, **kwargs)``), so grep and an IDE find it."""
import copy
import inspect
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Tuple

from timm.models import PretrainedCfg, build_model_with_cfg, generate_default_cfgs, register_model

from .._compat import LocalEntryNotFoundError
from ..weights.pretrained import tagged_cfgs, with_pretrained_source
from ..weights.sources import hub_weights_unavailable


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


class Family:
    """The registered models of one family module: ``archs`` (name -> ``arch(...)``) built as
    ``model_cls``. Created before the module's entrypoints, it records each model's ModelInfo and
    pretrained cfgs (``cfg(name)`` is the untagged cfg; the manifest's weights become its tags) in the
    module's ``default_cfgs``, where timm's ``register_model`` reads them. Each entrypoint is a thin
    ``def <name>(pretrained=False, **kwargs)`` under ``@family.register`` that calls ``family.create``.
    ``build_kwargs`` go to timm's ``build_model_with_cfg`` (e.g. ``feature_cfg``)."""

    def __init__(self, module_name: str, archs: Dict[str, Dict[str, Any]], model_cls: type,
                 cfg: Callable[[str], Dict[str, Any]], checkpoint_filter_fn: Callable[..., Any], **build_kwargs):
        self.module_name = module_name
        self.archs = archs
        self.model_cls = model_cls
        self.checkpoint_filter_fn = checkpoint_filter_fn
        self.build_kwargs = build_kwargs
        module = sys.modules[module_name]
        if not hasattr(module, 'default_cfgs'):
            module.default_cfgs = {}
        for name, spec in archs.items():
            base = PretrainedCfg(**cfg(name)).to_dict()
            module.default_cfgs.update(generate_default_cfgs(tagged_cfgs(name, base)))
            MODELS[name] = ModelInfo(name, module_name.rsplit('.', 1)[-1], spec['description'], spec['paper'],
                                     spec['upstream'])

    def register(self, entrypoint: Callable[..., Any]) -> Callable[..., Any]:
        """Register ``entrypoint`` (named as its configuration) with timm, documented from the catalog."""
        name = entrypoint.__name__
        if name not in self.archs or entrypoint.__module__ != self.module_name:
            raise ValueError(f'{self.module_name}.{name} is not a configuration of this family')
        info, spec = MODELS[name], self.archs[name]
        entrypoint.__doc__ = (
            f'{info.description}.\n\n'
            + (f"Paper row: {info.paper['row']}.\n" if info.paper.get('row') else '')
            + (f"Same function as timm's `{info.upstream}`.\n" if info.upstream else '')
            + 'Keyword arguments: ' + ', '.join(
                f'`{k}` ({MODEL_KWARGS[k]})' for k in documented_kwargs(self.model_cls, spec['args'])) + '.'
        )
        return register_model(entrypoint)

    def create(self, name: str, pretrained: bool = False, **kwargs):
        """Model ``name`` with the caller's kwargs over its configuration's; pretrained weights from
        the manifest or the caller's source."""
        if 'se_layer' in kwargs and kwargs['se_layer'] is None:
            # None means "no SE" here but "the default" to timm (create_model and a config's model_args drop
            # None): the model is built, and recorded, with the value that means the same everywhere
            kwargs['se_layer'] = 'none'
        model_args = {k: v for k, v in kwargs.items() if k not in NOT_MODEL_ARGS and v is not None}
        loaded = None
        if pretrained:
            kwargs, loaded = with_pretrained_source(name, kwargs)
        try:
            model = self._build(name, pretrained, **kwargs)
        except LocalEntryNotFoundError as e:  # timm reading an hf-hub: repo's weights
            if not (loaded or '').startswith('hf-hub:'):
                raise
            raise hub_weights_unavailable(loaded, e) from None
        # what rebuilds this model (exports write it as model_args), whether it came through
        # timm.create_model, torch.hub or this entrypoint; create_model adds the same keys later
        model._model_args = dict(getattr(model, '_model_args', None) or {}, **model_args)
        model.loaded_weights = loaded  # 'model.tag' from the manifest, the caller's source, or None: random
        for cfg in (getattr(model, 'pretrained_cfg', None), getattr(model, 'default_cfg', None)):
            if isinstance(cfg, dict):
                cfg.pop('state_dict', None)  # loaded; don't keep a reference to the weights alive
        return model

    def _build(self, name: str, pretrained: bool, **kwargs):
        model_args = dict(self.archs[name]['args'])
        se_layer = kwargs.get('se_layer', model_args.get('se_layer', 'se'))
        if not (isinstance(se_layer, str) and se_layer == 'se'):
            model_args.pop('se_args', None)  # the configuration's SE-unit options; the caller's still reach the check
        elif 'se_args' in kwargs:  # merge, so se_args=dict(gate='tanh') keeps the configuration's rounding rule
            model_args['se_args'] = dict(model_args.get('se_args') or {}, **kwargs.pop('se_args'))
        # a fresh copy per call: timm writes the caller's out_indices into feature_cfg
        return build_model_with_cfg(self.model_cls, name, pretrained, pretrained_filter_fn=self.checkpoint_filter_fn,
                                    **copy.deepcopy(self.build_kwargs), **dict(model_args, **kwargs))
