"""Research tools on SE networks: excitation statistics (:mod:`.excitations`) and design-space sweeps
(:mod:`.ablate`). SE retrofit onto pretrained SE-free networks is a model transform: :mod:`se_hub.retrofit`."""

_EXPORTS = {
    'collect_excitations': 'excitations', 'ExcitationStats': 'excitations', 'find_gates': 'excitations',
    'ablate': 'ablate',
}


def __getattr__(name):  # the tools import torch and timm: only when used
    if name in _EXPORTS:
        import importlib
        return getattr(importlib.import_module(f'.{_EXPORTS[name]}', __name__), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
