"""Fine-tuning tasks on one engine (:mod:`.engine`): image classification (``finetune``,
``evaluate``; :mod:`.classification`), Places-365 (:mod:`.places365`), detection (:mod:`.detection`).

The classification entry points are imported lazily so that ``import se_hub.tasks.<module>``
of one task does not pull in the others.
"""
from typing import Any

_CLASSIFICATION = ('finetune', 'evaluate', 'FinetuneOptions', 'FinetuneResult', 'EvalResult')
_DATA = ('DataError', 'find_splits')

__all__ = [*_CLASSIFICATION, *_DATA]


def __getattr__(name: str) -> Any:
    if name in _CLASSIFICATION:
        from . import classification
        return getattr(classification, name)
    if name in _DATA:
        from . import data
        return getattr(data, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
