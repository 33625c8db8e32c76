"""The ``se-hub`` command's handlers: info | download | verify | predict | push (fine-tuning:
se_hub/tasks). The arguments of every verb are in ``se_hub_cli/parsers.py`` and ``list`` in
``se_hub_cli/listing.py`` (standard library only, so that ``se-hub --help`` and ``se-hub list``
answer without importing torch); this module is imported when a verb below runs."""
import argparse
import json
import sys
from pathlib import Path
from typing import List

from se_hub_cli import build_parser, main  # noqa: F401  (the command's entry point, re-exported)
from se_hub_cli.listing import catalog, format_table, model_rows  # noqa: F401  (used by tools/ and tests)

from ._compat import create_model
from .models.catalog import MODELS, split_model_name


def cmd_info(args: argparse.Namespace) -> int:
    from .weights.manifest import weights_by_model
    from .weights.sources import describe
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


def cmd_download(args: argparse.Namespace) -> int:
    from .weights.manifest import find_weights
    from .weights.sources import resolve_weight_file
    for spec in args.models:
        name, tag = split_model_name(spec)
        entry, tag = find_weights(name, tag)
        print(f'{name}.{tag}: {resolve_weight_file(entry, progress=not args.quiet)}')
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from .weights.manifest import manifest
    from .weights.sources import CorruptWeightsError, local_file, verify
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


def load_image(spec: str):
    """A PIL image from a path, or 'skimage:NAME' for one of scikit-image's bundled photos."""
    from PIL import Image

    from .images import read_rgb, to_rgb
    if spec.startswith('skimage:'):
        try:
            import skimage.data
        except ImportError:
            raise ValueError(f'{spec} needs scikit-image: pip install scikit-image') from None
        loader = getattr(skimage.data, spec.split(':', 1)[1], None)
        if loader is None:
            raise ValueError(f'{spec}: scikit-image has no image named like that (try skimage:chelsea)')
        return to_rgb(Image.fromarray(loader()))
    try:
        return read_rgb(spec)
    except FileNotFoundError:
        raise ValueError(f'image not found: {spec}') from None
    except OSError as e:
        raise ValueError(f'cannot read image {spec}: {e}') from None


def label_names(model) -> List[str]:
    names = (getattr(model, 'pretrained_cfg', None) or {}).get('label_names')
    if names:
        return list(names)
    if model.num_classes == 1000:
        from timm.data import ImageNetInfo
        info = ImageNetInfo()
        return [info.index_to_description(i) for i in range(1000)]
    return [str(i) for i in range(model.num_classes)]


def cmd_predict(args: argparse.Namespace) -> int:
    import torch

    from .deploy.cli import is_exported_file, predict_exported
    images = [load_image(spec) for spec in args.images]
    if is_exported_file(args.model):  # an exported .onnx / .pt / .pt2 with its preprocessing and labels
        probs, names, header = predict_exported(args.model, images)
    else:
        from timm.data import create_transform, resolve_data_config
        if not args.model.startswith(('hf-hub:', 'local-dir:')):
            split_model_name(args.model)
        model = create_model(args.model, pretrained=True).eval()
        transform = create_transform(**resolve_data_config({}, model=model))
        names = label_names(model)
        with torch.inference_mode():
            probs = model(torch.stack([transform(img) for img in images])).softmax(-1)
        header = f"{args.model} ({getattr(model, 'loaded_weights', None) or args.model})"
    results = []
    for spec, p in zip(args.images, probs):
        top = p.topk(min(args.topk, p.numel()))
        results.append({'image': spec, 'predictions': [
            {'label': names[i], 'index': int(i), 'probability': round(float(v), 4)}
            for v, i in zip(top.values.tolist(), top.indices.tolist())]})
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    print(header)
    for r in results:
        print(r['image'])
        for pred in r['predictions']:
            print(f"  {pred['probability']:7.2%}  {pred['label']}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:

    from .hub import push_to_hub
    from .weights.checkpoint import load_checkpoint
    spec = args.model
    if Path(spec).is_dir():
        spec = f'local-dir:{spec}'
    elif not spec.startswith(('hf-hub:', 'local-dir:')):
        split_model_name(spec)
    pretrained = args.checkpoint is None and ('.' in spec or ':' in spec)
    if not (pretrained or args.checkpoint or args.allow_random_weights):
        raise ValueError(f'{spec} would be published with random weights: name its weights (MODEL.TAG, see '
                         '`se-hub list --pretrained`), load them with --checkpoint FILE, or pass '
                         '--allow-random-weights to publish an untrained model')
    model = create_model(spec, pretrained=pretrained)
    if args.checkpoint:
        load_checkpoint(model, args.checkpoint, use_ema=args.use_ema)
    print(push_to_hub(model, args.repo_id, private=args.private, revision=args.revision, as_timm=args.as_timm))
    return 0


if __name__ == '__main__':
    sys.exit(main())
