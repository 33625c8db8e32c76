"""Resolve a model's ``se_layer=`` argument into a module factory ``f(channels) -> nn.Module``."""
import inspect
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

# what se_args may set on se_hub's SE unit (the channel count comes from the block)
SE_ARGS = frozenset(inspect.signature(SqueezeExcite).parameters) - {'channels'}

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
    taking the channel count. ``se_args`` with any other ``se_layer`` is an error (nothing would
    use them)."""
    if se_args and not (isinstance(se_layer, str) and se_layer == 'se'):
        raise ValueError(
            f"se_args={dict(se_args)!r} configure se_hub's SE unit (se_layer='se'), but se_layer={se_layer!r} "
            f"takes no se_args: drop {', '.join(map(repr, se_args))} or use se_layer='se'")
    if any(se_layer is v or (isinstance(v, str) and se_layer == v) for v in NO_SE):
        return None
    if isinstance(se_layer, str):
        if se_layer not in ATTENTION_LAYERS:
            raise ValueError(
                f"se_layer={se_layer!r} is not a known attention layer; use 'none', one of "
                f"{sorted(ATTENTION_LAYERS)}, or a callable taking the channel count")
        if se_layer == 'se':
            unknown = sorted(set(se_args or {}) - SE_ARGS)
            if unknown:
                raise ValueError(f"se_args keys {unknown} are not options of se_layer='se' (SqueezeExcite); "
                                 f"it takes {sorted(SE_ARGS)}")
            return partial(SqueezeExcite, **(se_args or {}))
        return ATTENTION_LAYERS[se_layer]
    if callable(se_layer):
        return se_layer
    raise TypeError(f"se_layer must be None, a name or a callable, not {type(se_layer).__name__}")
