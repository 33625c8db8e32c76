"""The ``se-hub`` command."""
import argparse
import sys
from typing import Dict, List, Optional, Sequence

import timm

from .complexity import model_complexity
from .models.catalog import MODELS


def model_rows(pattern: str = 'se_*', exclude: Sequence[str] = ()) -> List[Dict]:
    """One row per registered se_hub model matching ``pattern``: measured and paper figures."""
    rows = []
    for name in timm.list_models(pattern, exclude_filters=list(exclude)):
        if name not in MODELS:
            continue
        cfg = timm.get_pretrained_cfg(name)
        params, macs = model_complexity(name)
        paper = MODELS[name].paper
        err = (f"{paper['top1_err']:.2f} / {paper['top5_err']:.2f}" if 'top1_err' in paper else '')
        rows.append({
            'model': name,
            'params (M)': f'{params / 1e6:.2f}',
            'GMACs': f'{macs / 1e9:.3f}',
            'input': 'x'.join(str(s) for s in cfg.input_size[1:]),
            'paper row': paper.get('row', ''),
            'paper params (M)': f"{paper['params']:.1f}" if 'params' in paper else '',
            'paper GMACs': f"{paper['gmacs']:.2f}" if 'gmacs' in paper else '',
            'paper top-1 / top-5 err (%)': err,
        })
    return rows


def format_table(rows: Sequence[Dict], markdown: bool = False) -> str:
    if not rows:
        return 'no models match'
    cols = list(rows[0])
    if markdown:
        lines = ['| ' + ' | '.join(cols) + ' |', '|' + '|'.join('---' for _ in cols) + '|']
        lines += ['| ' + ' | '.join(r[c] for c in cols) + ' |' for r in rows]
        return '\n'.join(lines)
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
    lines = ['  '.join(c.ljust(widths[c]) for c in cols).rstrip()]
    lines += ['  '.join(r[c].ljust(widths[c]) for c in cols).rstrip() for r in rows]
    return '\n'.join(lines)


def cmd_list(args: argparse.Namespace) -> int:
    pattern = args.filter or 'se_*'
    if not any(ch in pattern for ch in '*?['):
        pattern = f'*{pattern}*'
    print(format_table(model_rows(pattern, args.exclude), markdown=args.markdown))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='se-hub', description='The Squeeze-and-Excitation model zoo for timm.')
    parser.add_argument('--debug', action='store_true', help='show tracebacks')
    sub = parser.add_subparsers(dest='command', required=True)
    p = sub.add_parser('list', help='list the models with parameters, multiply-adds and the paper row')
    p.add_argument('filter', nargs='?', help="name or glob, e.g. 'se_resnet50*'")
    p.add_argument('--exclude', action='append', default=[], metavar='GLOB', help='leave out matching models')
    p.add_argument('--markdown', action='store_true', help='print a markdown table (as in README.md)')
    p.set_defaults(func=cmd_list)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as e:  # noqa: BLE001 - one clear line unless --debug
        if args.debug:
            raise
        print(f'se-hub: error: {e}', file=sys.stderr)
        return 1


if __name__ == '__main__':
    sys.exit(main())
