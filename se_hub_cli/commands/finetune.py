"""``se-hub finetune``: fine-tune a classifier on a directory of images (se_hub/tasks/classification.py)."""
from ..parsers import finetune_arguments, options_of


def add_parser(sub) -> None:
    p = sub.add_parser('finetune', help='fine-tune a classifier on a directory of images (train/ + val/ class '
                       'folders, or train.csv + val.csv)')
    p.add_argument('--model', required=True, help='MODEL[.TAG], local-dir:PATH or hf-hub:REPO')
    finetune_arguments(p)


def run(args) -> int:
    from dataclasses import fields

    from se_hub.tasks.classification import FinetuneOptions, finetune
    from se_hub.weights.sources import WeightsUnavailableError
    options = options_of(args, [f.name for f in fields(FinetuneOptions)], skip=('epochs',))
    try:
        result = finetune(args.model, args.data, args.epochs, args.output, **options)
    except WeightsUnavailableError as e:
        raise WeightsUnavailableError(f'{e}; or fine-tune from random weights with --no-pretrained') from None
    if result is not None:
        print(f'{result.output}: best val top-1 {result.best_top1:.2f}% at epoch {result.best_epoch}; '
              f'evaluate it with: se-hub evaluate --model local-dir:{result.output} --data {args.data}')
    return 0
