"""The excitation figures and selectivity table of README's "Excitation analysis" section: fine-tune
an SE network on the real digits data (scikit-learn's, as class folders), then run
``se-hub excitations`` on its val split.

    python bench/bench_excitations_digits.py --output runs/excitations-digits --docs docs
    # an already fine-tuned model (e.g. a retrofitted pretrained network): no fine-tuning
    python bench/bench_excitations_digits.py --model local-dir:runs/retrofit --output runs/exc-retrofit

Prints the fine-tuning log, the class-selectivity table per SE block and where the files went;
``--docs DIR`` also copies the two figures there as ``excitations_by_depth.png`` and
``excitations_last_blocks.png``.
"""
import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's se_hub first

import record  # noqa: E402  # bench/record.py: --results writes the output to bench/results/

import se_hub  # noqa: E402,F401
from se_hub_cli import main as se_hub_main  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--model', default='se_resnet20_cifar',
                   help='a model to fine-tune (MODEL[.TAG]) or local-dir:PATH (analysed as it is)')
    p.add_argument('--data', help='a data directory (default: the digits data, written to a temporary directory)')
    p.add_argument('--digits-size', type=int, default=32, help='side of the digits images (default 32)')
    p.add_argument('--epochs', type=int, default=8)
    p.add_argument('--lr', type=float, default=3e-3)
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--pretrained', action=argparse.BooleanOptionalAction, default=False,
                   help='fine-tune from pretrained weights (default: random init; the CIFAR nets have none)')
    p.add_argument('--img-size', type=int, help="input size (default: the model's)")
    p.add_argument('--max-images', type=int, help='at most N val images per class for the analysis')
    p.add_argument('--classes', help='only these classes in the analysis, a,b,c')
    p.add_argument('--figure-classes', help='classes drawn in the figures (default: up to 4)')
    p.add_argument('--workers', type=int, default=0)
    p.add_argument('--device', help='cpu, cuda, cuda:N')
    p.add_argument('--output', required=True, help='the run directory (finetune/ and excitations/ inside)')
    p.add_argument('--docs', help='copy the two figures into this directory')
    record.add_option(p)
    args = p.parse_args(argv)
    with record.recording(args.results, 'excitations_digits'):

        out = Path(args.output)
        with tempfile.TemporaryDirectory() as tmp:
            data = args.data
            if data is None:
                from se_hub.tasks.data import write_digits
                data = str(Path(tmp) / 'digits')
                counts = write_digits(data, size=args.digits_size)
                print(f"digits data: {counts['train']} train / {counts['val']} val images, {args.digits_size}px")
            model = args.model
            if not model.startswith('local-dir:'):
                from se_hub.tasks import finetune
                start = time.perf_counter()
                result = finetune(model, data, args.epochs, out / 'finetune', pretrained=args.pretrained, lr=args.lr,
                                  batch_size=args.batch_size, augment=False, img_size=args.img_size,
                                  num_workers=args.workers, device=args.device, progress=False, warmup_epochs=1)
                print(f'fine-tuned {model} for {args.epochs} epochs in {time.perf_counter() - start:.0f} s: '
                      f'best val top-1 {result.best_top1:.2f}% (epoch {result.best_epoch})')
                model = f"local-dir:{out / 'finetune'}"
            cli = ['excitations', '--model', model, '--data', data, '--output', str(out / 'excitations'),
                   '--workers', str(args.workers), '--no-progress']
            for flag, value in (('--max-images', args.max_images), ('--classes', args.classes),
                                ('--figure-classes', args.figure_classes), ('--img-size', args.img_size),
                                ('--device', args.device)):
                if value is not None:
                    cli += [flag, str(value)]
            print('se-hub ' + ' '.join(cli))
            rc = se_hub_main(cli)
            if rc:
                return rc
        if args.docs:
            docs = Path(args.docs)
            docs.mkdir(parents=True, exist_ok=True)
            for name in ('excitations_by_depth.png', 'excitations_last_blocks.png'):
                shutil.copyfile(out / 'excitations' / name, docs / name)
            print(f'copied the figures to {docs}')
        return 0


if __name__ == '__main__':
    sys.exit(main())
