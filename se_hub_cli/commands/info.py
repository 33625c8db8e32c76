"""``se-hub info MODEL``: architecture, cost, weights and their sources, metrics, preprocessing."""


def add_parser(sub) -> None:
    p = sub.add_parser('info', help='architecture, cost, weights and their sources, metrics, preprocessing')
    p.add_argument('model')


def run(args) -> int:
    from se_hub.models.catalog import MODELS, split_model_name
    from se_hub.weights.manifest import weights_by_model
    from se_hub.weights.sources import describe

    from ..listing import catalog
    name, _ = split_model_name(args.model)
    info, cost = MODELS[name], catalog()['models'].get(name)  # figures measured by tools/make_catalog_costs.py
    if cost is None:
        raise ValueError(f'{name} is not in se_hub/models/catalog_costs.json: run python tools/make_catalog_costs.py')
    params, macs, size = cost['params'], cost['macs'], cost['input_size']
    print(f'{name}: {info.description}')
    print(f'  family: {info.family}   params: {params / 1e6:.2f}M   multiply-adds: {macs / 1e9:.3f} G '
          f'at {size[1]}x{size[2]}')
    if info.upstream:
        print(f"  same function as timm's {info.upstream}")
    if info.paper:
        print('  paper: ' + ', '.join(f'{k}={v}' for k, v in info.paper.items()))
    entries = weights_by_model().get(name, [])
    print(f'  pretrained weights: {len(entries) or "none published"}')
    for e in entries:
        pre = e['preprocessing']
        print(f"  - {name}.{e['tag']}  (layout {e['layout']}, {e['num_classes']} classes {e['label_set']}, "
              f"licence {e['license']})")
        print(f"      preprocessing: input {pre['input_size']}, {pre['interpolation']}, crop {pre['crop_pct']}, "
              f"mean {pre['mean']}, std {pre['std']}")
        for s in e['sources']:
            print(f'      source: {describe(s)}')
        for m in e['metrics']:
            print(f"      {m['dataset']}: top-1 {m['top1']}" + (f", top-5 {m['top5']}" if 'top5' in m else '')
                  + f" ({m['provenance']}: {m['reference']})")
        print(f"      origin: {e['origin']}")
    return 0
