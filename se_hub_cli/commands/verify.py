"""``se-hub verify``: re-hash every cached weight file; damaged files are removed."""


def add_parser(sub) -> None:
    sub.add_parser('verify', help='re-hash every cached weight file; damaged files are removed')


def run(args) -> int:
    from se_hub.weights.manifest import manifest
    from se_hub.weights.sources import CorruptWeightsError, local_file, verify
    damaged = checked = 0
    for entry in manifest()['weights']:
        for source in entry['sources']:
            path = local_file(source)
            if path is None:
                continue
            checked += 1
            try:
                verify(path, entry, source)
                status = 'ok'
            except CorruptWeightsError as e:
                damaged += 1
                status = f'DAMAGED: {e}'
            print(f"{entry['model']}.{entry['tag']}  {path}  {status}")
    print(f'{checked} cached file(s) checked, {damaged} damaged')
    return 1 if damaged else 0
