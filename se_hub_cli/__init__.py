"""The ``se-hub`` command's entry point, kept outside the ``se_hub`` package.

``import se_hub`` registers every model with timm, which imports torch and timm (seconds). The
command only needs them for the verb it runs: each verb is a module of :mod:`.commands` whose
arguments use the standard library only and whose ``run`` imports se_hub when the verb runs;
``list`` (:mod:`.listing`) is served from the catalog file ``se_hub/models/catalog_costs.json``.
"""
import argparse
import sys
from typing import Optional, Sequence

from .commands import VERBS, command

__all__ = ['build_parser', 'main']


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='se-hub', description='The Squeeze-and-Excitation model zoo for timm.')
    parser.add_argument('--debug', action='store_true', help='show tracebacks')
    sub = parser.add_subparsers(dest='command', required=True)
    for verb in VERBS:
        command(verb).add_parser(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return command(args.command).run(args)
    except KeyboardInterrupt:
        print('se-hub: interrupted', file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - one clear line unless --debug
        if args.debug:
            raise
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f'se-hub: error: {message}', file=sys.stderr)
        return 1
