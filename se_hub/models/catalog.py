"""What se_hub knows about each registered model beyond its architecture: a description, the
paper row it reproduces (with the paper's figures), and the timm model computing the same
function. Family modules register their models here and with timm in one step."""
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Dict

from timm.models import generate_default_cfgs, register_model

from ..weights.pretrained import tagged_cfgs, with_pretrained_state


@dataclass(frozen=True)
class ModelInfo:
    name: str
    family: str
    description: str
    paper: Dict[str, Any] = field(default_factory=dict)  # row, params (M), gmacs, top1_err, top5_err
    upstream: str = ''  # timm model with the same function (and key layout after conversion)


MODELS: Dict[str, ModelInfo] = {}


def arch(description: str, paper: Dict[str, Any] = None, upstream: str = '', **args) -> Dict[str, Any]:
    """One configuration: model-class kwargs plus what the paper / upstream say about it."""
    return dict(args=args, description=description, paper=paper or {}, upstream=upstream)


def _entrypoint(create: Callable[..., Any], name: str) -> Callable[..., Any]:
    def entrypoint(pretrained: bool = False, **kwargs):
        if not pretrained:
            return create(name, pretrained, **kwargs)
        kwargs, loaded = with_pretrained_state(name, kwargs)
        model = create(name, pretrained, **kwargs)
        if loaded:
            model.loaded_weights = loaded
        for cfg in (getattr(model, 'pretrained_cfg', None), getattr(model, 'default_cfg', None)):
            if isinstance(cfg, dict):
                cfg.pop('state_dict', None)  # loaded; don't keep a second copy of the weights alive
        return model
    return entrypoint


def register_family(module_name: str, archs: Dict[str, Dict[str, Any]], create: Callable[..., Any]) -> None:
    """Register a thin timm entrypoint per configuration of ``archs`` in module ``module_name``
    (which must already define ``default_cfgs``, one untagged cfg per model) and record each
    model's ModelInfo. The manifest's weights become the models' pretrained tags."""
    module = sys.modules[module_name]
    for name, spec in archs.items():
        base = module.default_cfgs[name].cfgs[''].to_dict()
        module.default_cfgs.update(generate_default_cfgs(tagged_cfgs(name, base)))
        info = ModelInfo(name, module_name.rsplit('.', 1)[-1], spec['description'], spec['paper'], spec['upstream'])
        entrypoint = _entrypoint(create, name)
        entrypoint.__name__ = entrypoint.__qualname__ = name
        entrypoint.__module__ = module_name
        entrypoint.__doc__ = (
            f'{info.description}.\n\n'
            + (f"Paper row: {info.paper['row']}.\n" if info.paper.get('row') else '')
            + (f"Same function as timm's `{info.upstream}`.\n" if info.upstream else '')
            + "Accepts timm's create_model kwargs (num_classes, in_chans, global_pool, drop_rate, "
              "drop_path_rate, features_only, ...) and se_layer= ('none', 'se', 'eca', 'cbam' or a callable)."
        )
        setattr(module, name, register_model(entrypoint))
        MODELS[name] = info
