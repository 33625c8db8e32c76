"""The ``se-hub`` command's entry point, kept outside the ``se_hub`` package.

``import se_hub`` registers every model with timm, which imports torch and timm (seconds). The
command only needs them for the verb it runs: the argument parser (:mod:`.parsers`) and the
``list`` verb (:mod:`.listing`, served from the catalog file ``se_hub/models/catalog_costs.json``)
use the standard library only, and each verb's handler, in ``se_hub``, is imported when that
verb runs. ``se_hub.cli`` re-exports :func:`main` and :func:`build_parser`.
"""
import importlib
import sys
from typing import Optional, Sequence

from .parsers import build_parser

__all__ = ['build_parser', 'main']


def _handler(ref: str):
    module, _, name = ref.partition(':')
    return getattr(importlib.import_module(module), name)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        # a verb names its handler as 'module:function' (imported now); `func` (a callable) also works
        run = getattr(args, 'func', None) or _handler(args.handler)
        return run(args)
    except KeyboardInterrupt:
        print('se-hub: interrupted', file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - one clear line unless --debug
        if args.debug:
            raise
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f'se-hub: error: {message}', file=sys.stderr)
        return 1
