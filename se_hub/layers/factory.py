"""Resolve a model's ``se_layer=`` argument into a module factory ``f(channels) -> nn.Module``."""
from functools import partial
from typing import Any, Callable, Dict, Optional, Union

from timm.layers.cbam import CbamModule
from timm.layers.eca import EcaModule
from torch import nn

from .se_block import SqueezeExcite

SeLayer = Union[None, bool, str, Callable[[int], nn.Module]]
# timm.create_model drops keyword arguments whose value is None, so `se_layer=None` cannot reach
# a model through it: 'none' (or False) says "no SE" on every path.
NO_SE = (None, False, 'none')

# ECA and CBAM compute the same function as timm's modules (and keep their checkpoint keys).
ATTENTION_LAYERS: Dict[str, Callable[..., nn.Module]] = {
    'se': SqueezeExcite,
    'eca': EcaModule,
    'cbam': CbamModule,
}


def resolve_se_layer(
        se_layer: SeLayer, se_args: Optional[Dict[str, Any]] = None) -> Optional[Callable[[int], nn.Module]]:
    """``None`` / ``'none'`` / ``False`` -> no attention (the plain baseline); a name from
    ``ATTENTION_LAYERS``, built with the model's ``se_args`` when it is ``'se'``; or any callable
    taking the channel count."""
    if any(se_layer is v or (isinstance(v, str) and se_layer == v) for v in NO_SE):
        return None
    if isinstance(se_layer, str):
        if se_layer not in ATTENTION_LAYERS:
            raise ValueError(
                f"se_layer={se_layer!r} is not a known attention layer; use 'none', one of "
                f"{sorted(ATTENTION_LAYERS)}, or a callable taking the channel count")
        if se_layer == 'se':
            return partial(SqueezeExcite, **(se_args or {}))
        return ATTENTION_LAYERS[se_layer]
    if callable(se_layer):
        return se_layer
    raise TypeError(f"se_layer must be None, a name or a callable, not {type(se_layer).__name__}")
