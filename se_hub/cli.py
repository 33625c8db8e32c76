"""The ``se-hub`` command: list | info | download | verify | predict | push."""
import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import timm

from .complexity import model_complexity
from .models.catalog import MODELS, split_model_name


def model_rows(pattern: str = 'se_*', exclude: Sequence[str] = (), pretrained: bool = False) -> List[Dict]:
    """One row per registered se_hub model matching ``pattern``: measured and paper figures."""
    from .weights.manifest import weights_by_model
    weights = weights_by_model()
    rows = []
    for name in timm.list_models(pattern, exclude_filters=list(exclude)):
        if name not in MODELS or (pretrained and name not in weights):
            continue
        cfg = timm.get_pretrained_cfg(name)
        params, macs = model_complexity(name)
        paper = MODELS[name].paper
        err = (f"{paper['top1_err']:.2f}" if 'top1_err' in paper else '')
        err += (f" / {paper['top5_err']:.2f}" if 'top5_err' in paper else '')  # CIFAR rows have no top-5
        row = {
            'model': name,
            'params (M)': f'{params / 1e6:.2f}',
            'GMACs': f'{macs / 1e9:.3f}',
            'input': 'x'.join(str(s) for s in cfg.input_size[1:]),
            'paper row': paper.get('row', ''),
            'paper params (M)': f"{paper['params']:.1f}" if 'params' in paper else '',
            'paper GMACs': f"{paper['gmacs']:.2f}" if 'gmacs' in paper else '',
            'paper top-1 / top-5 err (%)': err,
        }
        if pretrained:
            row = {'model': name, 'params (M)': row['params (M)'], 'GMACs': row['GMACs'],
                   'pretrained tags': ', '.join(e['tag'] for e in weights[name])}
        rows.append(row)
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
    print(format_table(model_rows(pattern, args.exclude, args.pretrained), markdown=args.markdown))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .weights.manifest import weights_by_model
    from .weights.sources import describe
    name, _ = split_model_name(args.model)
    info, cfg = MODELS[name], timm.get_pretrained_cfg(name)
    params, macs = model_complexity(name)
    print(f'{name}: {info.description}')
    print(f'  family: {info.family}   params: {params / 1e6:.2f}M   multiply-adds: {macs / 1e9:.3f} G '
          f'at {cfg.input_size[1]}x{cfg.input_size[2]}')
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
    from .weights.sources import CorruptWeightsError, _local, verify
    damaged = checked = 0
    for entry in manifest()['weights']:
        for source in entry['sources']:
            path = _local(source)
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
    if spec.startswith('skimage:'):
        try:
            import skimage.data
        except ImportError:
            raise ValueError(f'{spec} needs scikit-image: pip install scikit-image') from None
        loader = getattr(skimage.data, spec.split(':', 1)[1], None)
        if loader is None:
            raise ValueError(f'{spec}: scikit-image has no image named like that (try skimage:chelsea)')
        return Image.fromarray(loader()).convert('RGB')
    try:
        with Image.open(spec) as img:
            return img.convert('RGB')
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
    from .deploy.cli import is_exported_file, predict_command
    if is_exported_file(args.model):  # an exported .onnx / .pt / .pt2 with its preprocessing and labels
        return predict_command(args, load_image)
    import torch
    from timm.data import create_transform, resolve_data_config
    if not args.model.startswith(('hf-hub:', 'local-dir:')):
        split_model_name(args.model)
    images = [load_image(spec) for spec in args.images]
    model = timm.create_model(args.model, pretrained=True).eval()
    transform = create_transform(**resolve_data_config({}, model=model))
    names = label_names(model)
    with torch.inference_mode():
        probs = model(torch.stack([transform(img) for img in images])).softmax(-1)
    results = []
    for spec, p in zip(args.images, probs):
        top = p.topk(min(args.topk, p.numel()))
        results.append({'image': spec, 'predictions': [
            {'label': names[i], 'index': int(i), 'probability': round(float(v), 4)}
            for v, i in zip(top.values.tolist(), top.indices.tolist())]})
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    print(f"{args.model} ({getattr(model, 'loaded_weights', None) or args.model})")
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
    model = timm.create_model(spec, pretrained=args.checkpoint is None and ('.' in spec or ':' in spec))
    if args.checkpoint:
        load_checkpoint(model, args.checkpoint)
    print(push_to_hub(model, args.repo_id, private=args.private, revision=args.revision))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='se-hub', description='The Squeeze-and-Excitation model zoo for timm.')
    parser.add_argument('--debug', action='store_true', help='show tracebacks')
    sub = parser.add_subparsers(dest='command', required=True)
    p = sub.add_parser('list', help='models with parameters, multiply-adds and the paper row')
    p.add_argument('filter', nargs='?', help="name or glob, e.g. 'se_resnet50*'")
    p.add_argument('--exclude', action='append', default=[], metavar='GLOB', help='leave out matching models')
    p.add_argument('--pretrained', action='store_true', help='only models with published weights, with their tags')
    p.add_argument('--markdown', action='store_true', help='print a markdown table (as in README.md)')
    p.set_defaults(func=cmd_list)
    p = sub.add_parser('info', help='architecture, cost, weights and their sources, metrics, preprocessing')
    p.add_argument('model')
    p.set_defaults(func=cmd_info)
    p = sub.add_parser('download', help='fetch and verify pretrained weights into the local caches')
    p.add_argument('models', nargs='+', metavar='MODEL[.TAG]')
    p.add_argument('--quiet', action='store_true', help='no progress bar')
    p.set_defaults(func=cmd_download)
    p = sub.add_parser('verify', help='re-hash every cached weight file; damaged files are removed')
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser('predict', help='classify images with a pretrained model')
    p.add_argument('images', nargs='+', metavar='IMAGE', help="image files, or skimage:NAME (e.g. skimage:chelsea)")
    p.add_argument('--model', required=True, help="MODEL[.TAG], hf-hub:REPO, local-dir:PATH or an exported "
                   "FILE.onnx / .pt / .pt2 (se-hub export)")
    p.add_argument('--topk', type=int, default=5)
    p.add_argument('--json', action='store_true', help='print JSON')
    p.set_defaults(func=cmd_predict)
    p = sub.add_parser('push', help='publish a model in timm Hub format')
    p.add_argument('model', help='MODEL[.TAG], a directory exported by se_hub, hf-hub:REPO or local-dir:PATH')
    p.add_argument('repo_id')
    p.add_argument('--checkpoint', help='load this checkpoint (any supported layout) into MODEL first')
    p.add_argument('--private', action='store_true')
    p.add_argument('--revision')
    p.set_defaults(func=cmd_push)
    # --- export: defined and run by se_hub/deploy/cli.py
    from .deploy.cli import add_parsers as add_deploy_parsers
    add_deploy_parsers(sub)
    # --- classification fine-tuning: argument definitions here, the work in se_hub/tasks/classification.py
    from .tasks import classification as clf
    p = sub.add_parser('finetune', help='fine-tune a classifier on a directory of images (train/ + val/ class '
                       'folders, or train.csv + val.csv)')
    p.add_argument('--model', required=True, help='MODEL[.TAG], local-dir:PATH or hf-hub:REPO')
    p.add_argument('--data', required=True, metavar='DIR', help='train/ and val/ class folders, train.csv and '
                   'val.csv ("path,label" rows, paths relative to DIR), or a Places-365 tree')
    p.add_argument('--epochs', type=int, required=True)
    p.add_argument('--output', required=True, metavar='OUT', help='checkpoints, metrics.jsonl, curves.png and '
                   'the fine-tuned model in timm Hub format')
    p.add_argument('--pretrained', action=argparse.BooleanOptionalAction, default=True,
                   help='start from pretrained weights (default: yes)')
    p.add_argument('--batch-size', type=int, default=32, help='per process (default 32)')
    p.add_argument('--img-size', type=int, help="input size (default: the model's pretrained input size)")
    p.add_argument('--opt', dest='optimizer', default='adamw', choices=['adamw', 'sgd', 'momentum'],
                   help='adamw, sgd (Nesterov momentum) or momentum (plain momentum SGD, as in the paper)')
    p.add_argument('--lr', type=float, help='peak learning rate (default 1e-3 adamw, 1e-2 sgd and momentum)')
    p.add_argument('--weight-decay', type=float, help='default 0.05 adamw, 1e-4 sgd and momentum')
    p.add_argument('--momentum', type=float, default=0.9)
    p.add_argument('--warmup-epochs', type=float, default=1.0, help='linear warm-up, then the schedule')
    p.add_argument('--sched', default='cosine', choices=['cosine', 'step'],
                   help='cosine decay to --min-lr over the run, or step decay (default cosine)')
    p.add_argument('--decay-epochs', type=float, default=30.0, help='step schedule: epochs between decays')
    p.add_argument('--decay-rate', type=float, default=0.1, help='step schedule: LR factor at each decay')
    p.add_argument('--min-lr', type=float, default=0.0)
    p.add_argument('--label-smoothing', type=float, default=0.1)
    p.add_argument('--layer-decay', type=float, help='layer-wise LR decay, e.g. 0.75')
    p.add_argument('--freeze-backbone', action='store_true', help='train the classifier only')
    p.add_argument('--freeze-bn', action='store_true', help='keep BatchNorm statistics and parameters fixed')
    p.add_argument('--ema', action='store_true', help='keep an exponential moving average of the weights')
    p.add_argument('--ema-decay', type=float, default=0.998)
    p.add_argument('--amp', default='auto', choices=['auto', 'off', 'bf16', 'fp16'],
                   help='mixed precision (auto: bf16/fp16 on CUDA, off on CPU)')
    p.add_argument('--no-augment', dest='augment', action='store_false', help='no train-time augmentation')
    p.add_argument('--drop-rate', type=float, default=0.0)
    p.add_argument('--drop-path-rate', type=float, default=0.0)
    p.add_argument('--grad-clip', type=float, help='clip the gradient norm')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--workers', dest='num_workers', type=int, default=2, help='data loading processes')
    p.add_argument('--device', help='cpu, cuda, cuda:1 (default: cuda if available)')
    p.add_argument('--deterministic', action='store_true', help='deterministic algorithms only')
    p.add_argument('--resume', action='store_true', help="continue the run in OUT from its last.pth")
    p.add_argument('--export', default='best', choices=['best', 'last'], help='which weights OUT exports')
    p.add_argument('--push', metavar='REPO', help='publish the fine-tuned model to this Hub repo')
    p.add_argument('--no-progress', dest='progress', action='store_false', help='no progress bar')
    p.add_argument('--no-check-images', dest='check_images', action='store_false',
                   help='skip opening every image before training (large data sets)')
    p.set_defaults(func=clf.finetune_command)
    p = sub.add_parser('evaluate', help='top-1 / top-5 and confusion matrix of a model on a data directory')
    p.add_argument('--model', required=True, help='MODEL[.TAG], local-dir:OUT (or OUT), hf-hub:REPO')
    p.add_argument('--data', required=True, metavar='DIR', help='a data directory, as for finetune')
    p.add_argument('--split', default='val', choices=['val', 'train'])
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--img-size', type=int)
    p.add_argument('--workers', dest='num_workers', type=int, default=2)
    p.add_argument('--device')
    p.add_argument('--output', metavar='DIR', help='write confusion.png, confusion.txt and evaluation.json here')
    p.add_argument('--json', action='store_true', help='print JSON')
    p.add_argument('--no-progress', dest='progress', action='store_false', help='no progress bar')
    p.set_defaults(func=clf.evaluate_command)
    # --- end of classification fine-tuning
    # --- detection fine-tuning: `finetune-detect`, defined and run by se_hub/tasks/detection.py
    from .tasks.detection import add_cli_parser as add_detection_parser
    add_detection_parser(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print('se-hub: interrupted', file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - one clear line unless --debug
        if args.debug:
            raise
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f'se-hub: error: {message}', file=sys.stderr)
        return 1


if __name__ == '__main__':
    sys.exit(main())
