"""Research tools on SE networks: excitation statistics (:mod:`.excitations`), design-space sweeps
(:mod:`.ablate`) and SE retrofit onto pretrained SE-free networks (:mod:`.retrofit`)."""

_EXPORTS = {
    'collect_excitations': 'excitations', 'ExcitationStats': 'excitations', 'find_gates': 'excitations',
    'ablate': 'ablate',
    'retrofit': 'retrofit',
}


def __getattr__(name):  # the tools import torch and timm: only when used
    if name in _EXPORTS:
        import importlib
        return getattr(importlib.import_module(f'.{_EXPORTS[name]}', __name__), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
