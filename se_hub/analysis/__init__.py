"""Research tools on SE networks: excitation statistics (:mod:`.excitations`), design-space sweeps
(:mod:`.ablate`) and SE retrofit onto pretrained SE-free networks (:mod:`.retrofit`)."""


def __getattr__(name):  # the tools import torch and timm: only when used
    if name in ('collect_excitations', 'ExcitationStats', 'find_gates'):
        from . import excitations
        return getattr(excitations, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
