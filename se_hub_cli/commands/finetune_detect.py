"""``se-hub finetune-detect``: fine-tune a detector on an SE backbone, COCO-format data (se_hub/tasks/detection)."""
import argparse

from ..parsers import DETECTOR_KINDS, engine_arguments, options_of

# the options that describe the detector: create_detector's arguments (--pretrained: pretrained_backbone)
DETECTOR = ('trainable_layers', 'fpn_channels', 'min_size', 'max_size', 'anchor_sizes')


def add_parser(sub) -> None:
    p = sub.add_parser('finetune-detect', help='fine-tune a detector on an SE backbone (COCO-format data)')
    p.add_argument('--backbone', required=True, help='se_hub model (optionally MODEL.TAG), e.g. se_resnet50')
    p.add_argument('--kind', default='fasterrcnn', choices=DETECTOR_KINDS)
    p.add_argument('--train-json', required=True, help='COCO annotation file of the training set')
    p.add_argument('--train-images', required=True, help='image folder of the training set')
    p.add_argument('--val-json', help='COCO annotation file of the validation set')
    p.add_argument('--val-images', help='image folder of the validation set')
    engine_arguments(p, batch_size=4, workers=2)
    p.add_argument('--pretrained', action=argparse.BooleanOptionalAction, default=True,
                   help='start the backbone from pretrained weights (default: yes)')
    p.add_argument('--lr', type=float, default=0.01)
    p.add_argument('--optimizer', default='sgd', choices=['sgd', 'momentum', 'adamw'])
    p.add_argument('--weight-decay', type=float, default=1e-4)
    p.add_argument('--warmup-iters', dest='warmup_steps', metavar='WARMUP_ITERS', type=int, default=100)
    p.add_argument('--grad-clip', type=float, default=10.0, help='clip the gradient norm (default 10)')
    p.add_argument('--no-hflip', dest='hflip', action='store_false', help='no random horizontal flips')
    p.add_argument('--eval-every', type=int, default=1, metavar='N', help='COCO evaluation every N epochs')
    p.add_argument('--trainable-layers', type=int, help='backbone stages that train, from the top (default 3)')
    p.add_argument('--min-size', type=int, default=800)
    p.add_argument('--max-size', type=int, default=1333)
    p.add_argument('--anchor-sizes', type=int, nargs=5, metavar='S', help='base anchor size per pyramid level')
    p.add_argument('--fpn-channels', type=int, default=256)


def run(args) -> int:
    import json
    from dataclasses import fields

    from se_hub.tasks.detection import DetectOptions, finetune_detector
    from se_hub.weights.sources import WeightsUnavailableError
    options = options_of(args, [f.name for f in fields(DetectOptions)], skip=('epochs',))
    detector = dict({k: getattr(args, k) for k in DETECTOR}, pretrained_backbone=args.pretrained)
    try:
        result = finetune_detector(args.kind, args.backbone, args.train_json, args.train_images, args.val_json,
                                   args.val_images, args.epochs, args.output, detector, **options)
    except WeightsUnavailableError as e:
        raise WeightsUnavailableError(f'{e}; or train the backbone from random weights with --no-pretrained') from None
    if result is not None and result['final']:
        print(json.dumps({k: round(v, 4) for k, v in result['final'].items()}))
    return 0
