"""``se-hub list``: the catalog, without importing torch or timm (see :mod:`se_hub_cli.listing`)."""
from ..listing import WIDTH, format_table, model_rows


def add_parser(sub) -> None:
    p = sub.add_parser('list', help='models with parameters, multiply-adds and the paper row')
    p.add_argument('filter', nargs='?', help="name or glob, e.g. 'se_resnet50*'")
    p.add_argument('--exclude', action='append', default=[], metavar='GLOB', help='leave out matching models')
    p.add_argument('--pretrained', action='store_true', help='only models with published weights, with their tags')
    p.add_argument('--markdown', action='store_true', help='print a markdown table (as in README.md)')
    p.add_argument('--wide', action='store_true', help='every column (the default fits 100 columns)')


def run(args) -> int:
    pattern = args.filter or 'se_*'
    if not any(ch in pattern for ch in '*?['):
        pattern = f'*{pattern}*'
    rows = model_rows(pattern, args.exclude, args.pretrained)
    if not (args.wide or args.markdown):  # the paper row's long text is for --wide and the README
        rows = [{k: v for k, v in r.items() if k != 'paper row'} for r in rows]
    width = 0 if args.wide or args.markdown else WIDTH
    print(format_table(rows, markdown=args.markdown, width=width))
    return 0
