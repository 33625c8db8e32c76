"""``se-hub evaluate``: top-1 / top-k and the confusion matrix of a model on a data directory."""


def add_parser(sub) -> None:
    p = sub.add_parser('evaluate', help='top-1 / top-k and confusion matrix of a model on a data directory')
    p.add_argument('--model', required=True, help='MODEL[.TAG], local-dir:OUT (or OUT), hf-hub:REPO')
    p.add_argument('--data', required=True, metavar='DIR', help='a data directory, as for finetune')
    p.add_argument('--split', default='val', choices=['val', 'train'])
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--img-size', type=int)
    p.add_argument('--workers', dest='num_workers', type=int, default=2)
    p.add_argument('--device')
    p.add_argument('--output', metavar='DIR', help='write confusion.png, confusion.txt and evaluation.json here')
    p.add_argument('--json', action='store_true', help='print JSON')
    p.add_argument('--no-progress', dest='progress', action='store_false', help='no progress output')


def run(args) -> int:
    import json
    from dataclasses import asdict
    from pathlib import Path

    from se_hub.plots import format_confusion
    from se_hub.tasks.classification import evaluate
    r = evaluate(args.model, args.data, batch_size=args.batch_size, img_size=args.img_size, split=args.split,
                 output=args.output, num_workers=args.num_workers, device=args.device, progress=args.progress)
    if args.json:
        print(json.dumps(asdict(r), indent=1))
        return 0
    print(f'{args.model} on {args.data} ({args.split}, {r.count} images): top-1 {r.top1:.2f}%  '
          f'top-{r.k} {r.top_k:.2f}%  loss {r.loss:.4f}')
    print(format_confusion(r.confusion, r.classes, r.predicted_classes))
    if args.output:
        print(f'wrote {Path(args.output) / "confusion.png"}, confusion.txt, evaluation.json')
    return 0
