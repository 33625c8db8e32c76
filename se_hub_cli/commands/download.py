"""``se-hub download MODEL[.TAG] ...``: fetch and verify pretrained weights into the local caches."""


def add_parser(sub) -> None:
    p = sub.add_parser('download', help='fetch and verify pretrained weights into the local caches')
    p.add_argument('models', nargs='+', metavar='MODEL[.TAG]')
    p.add_argument('--quiet', action='store_true', help='no progress bar')


def run(args) -> int:
    from se_hub.models.catalog import split_model_name
    from se_hub.weights.manifest import find_weights
    from se_hub.weights.sources import resolve_weight_file
    for spec in args.models:
        name, tag = split_model_name(spec)
        entry, tag = find_weights(name, tag)
        print(f'{name}.{tag}: {resolve_weight_file(entry, progress=not args.quiet)}')
    return 0
