"""``se-hub excitations``: per-class statistics of every SE gate on a data directory
(se_hub/analysis/excitations.py)."""


def add_parser(sub) -> None:
    p = sub.add_parser('excitations', help="per-class statistics of every SE gate on a data directory (the paper's "
                       '"role of excitation" figures and a class-selectivity table)')
    p.add_argument('--model', required=True, help='MODEL[.TAG], local-dir:OUT (or OUT), hf-hub:REPO')
    p.add_argument('--data', required=True, metavar='DIR', help='a data directory, as for finetune')
    p.add_argument('--split', default='val', choices=['val', 'train'])
    p.add_argument('--classes', metavar='A,B,C', help='only these classes (default: all)')
    p.add_argument('--max-images', type=int, metavar='N', help='at most N images per class (default: all)')
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--img-size', type=int, help="input size (default: the model's pretrained input size)")
    p.add_argument('--workers', dest='num_workers', type=int, default=2, help='data loading processes')
    p.add_argument('--device', help='cpu, cuda or cuda:N (default: cuda if available)')
    p.add_argument('--no-pretrained', dest='pretrained', action='store_false',
                   help='MODEL with random weights (to try the tool on a model without published weights)')
    p.add_argument('--figure-classes', metavar='A,B,C', help='classes drawn in the figures (default: up to 4)')
    p.add_argument('--no-progress', dest='progress', action='store_false', help='no progress output')
    p.add_argument('--output', required=True, metavar='OUT', help='write excitations.safetensors, excitations.csv, '
                   'selectivity.csv and the two PNG figures here')


def run(args) -> int:
    from se_hub.analysis.excitations import collect_excitations, writable_dir
    writable_dir(args.output)  # before a long run, not after it
    classes = args.classes.split(',') if args.classes is not None else None
    stats = collect_excitations(args.model, args.data, classes=classes, max_images=args.max_images,
                                batch_size=args.batch_size, img_size=args.img_size, device=args.device,
                                progress=args.progress, split=args.split, num_workers=args.num_workers,
                                pretrained=args.pretrained)
    figure_classes = args.figure_classes.split(',') if args.figure_classes else None
    paths = stats.save(args.output, figure_classes=figure_classes)
    total = int(stats.counts.sum())
    print(f'{stats.model} on {args.data} ({args.split}, {total} images, {len(stats.classes)} classes): '
          f'{len(stats.blocks)} SE blocks')
    print('class selectivity per block (between-class / within-class gate distance, see README):')
    print(stats.summary())
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0
