"""Argument groups that several verbs share, with the standard library only (``se-hub --help`` must
not wait for torch). The defaults and choice lists written here are the library's
(``TrainConfig``, ``FinetuneOptions``, ``DetectOptions``, the AMP modes, detector kinds and export
formats); ``tests/test_cli_defaults.py`` checks that they agree, since importing the library here
would import torch."""
import argparse
import ast

AMP = ['auto', 'off', 'bf16', 'fp16']  # se_hub.tasks.distributed.AMP_CHOICES
DETECTOR_KINDS = ['fasterrcnn', 'retinanet', 'maskrcnn']  # se_hub.tasks.detection.KINDS
EXPORT_FORMATS = ['onnx', 'torchscript', 'pt2', 'openvino']  # se_hub.deploy.convert.EXPORT_FORMATS
OPENVINO_PRECISIONS = ['f32', 'bf16', 'int8']  # se_hub.deploy.convert.OPENVINO_PRECISIONS
INT8_METHODS = ['qdq', 'nncf']  # se_hub.deploy.convert.INT8_METHODS


def engine_arguments(p, batch_size: int, workers: int) -> None:
    """The options both fine-tuning verbs share (they mean the same in both: se_hub/tasks/engine.py)."""
    p.add_argument('--epochs', type=int, required=True)
    p.add_argument('--output', required=True, metavar='OUT', help='last.pth / best.pth, metrics.jsonl, curves.png '
                   'and the exported model')
    p.add_argument('--batch-size', type=int, default=batch_size, help=f'per process (default {batch_size})')
    p.add_argument('--momentum', type=float, default=0.9)
    p.add_argument('--min-lr', type=float, default=0.0)
    p.add_argument('--ema', action='store_true', help='keep an exponential moving average of the weights')
    p.add_argument('--ema-decay', type=float, default=0.998)
    p.add_argument('--amp', default='auto', choices=AMP,
                   help='mixed precision (auto: bf16 on CUDA where supported, else fp16 with a grad scaler; '
                   'off on CPU)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--workers', dest='num_workers', type=int, default=workers, help='data loading processes')
    p.add_argument('--device', help='cpu, cuda (under torchrun: the GPU of LOCAL_RANK) or cuda:N '
                   '(default: cuda if available)')
    p.add_argument('--deterministic', action='store_true', help='deterministic algorithms only')
    p.add_argument('--resume', action='store_true', help='continue the run in OUT from its last.pth')
    p.add_argument('--export', default='best', choices=['best', 'last'], help='which weights OUT exports')
    p.add_argument('--no-progress', dest='progress', action='store_false', help='no progress output')
    p.add_argument('--log-every', type=int, default=50, metavar='N',
                   help='when stderr is not a terminal: one progress line every N steps (default 50)')


def model_argument(text: str):
    """``KEY=VALUE`` of ``--model-arg``: VALUE is a Python literal (``None``, ``0.25``, ``(2, 3)``,
    ``{'rd_ratio': 0.25}``) or else a plain string (``eca``)."""
    key, sep, value = text.partition('=')
    if not sep or not key.strip().isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. se_layer=eca, se_args={{'rd_ratio':0.25}}), "
                                         f'got {text!r}')
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = value
    return key.strip(), parsed


class _Without:
    """A parser whose ``add_argument`` leaves out the options named in ``skip`` (another verb takes
    the fine-tuning options less those it defines its own way)."""

    def __init__(self, parser: argparse.ArgumentParser, skip=()):
        self.parser, self.skip = parser, set(skip)

    def add_argument(self, *flags, **kwargs) -> None:
        if not self.skip.intersection(flags):
            self.parser.add_argument(*flags, **kwargs)


def finetune_arguments(p, skip=()) -> None:
    """Every option of ``finetune`` but --model (``ablate`` takes them too, less ``skip``)."""
    p = _Without(p, skip)
    p.add_argument('--model-arg', dest='model_kwargs', type=model_argument, action='append', default=[],
                   metavar='KEY=VALUE', help="an architecture argument, repeatable: se_layer=eca, se_layer=None, "
                   "se_args={'rd_ratio':0.125}, se_placement=pre, se_stages=(3,4)")
    p.add_argument('--retrofit', action='store_true', help='add SE units to the pretrained SE-free model first '
                   '(se_hub.retrofit: the output is unchanged until training moves them); the export reloads as the '
                   'retrofitted network')
    p.add_argument('--retrofit-arg', dest='retrofit_args', type=model_argument, action='append', default=[],
                   metavar='KEY=VALUE', help="an option of --retrofit, repeatable: se_args={'rd_ratio':0.125}, "
                   'placement=pre (standard, pre, post, identity, 3x3), stages=(2,3)')
    p.add_argument('--data', required=True, metavar='DIR', help='train/ and val/ class folders, train.csv and '
                   'val.csv ("path,label" rows, paths relative to DIR), or a Places-365 tree')
    engine_arguments(p, batch_size=32, workers=2)
    p.add_argument('--pretrained', action=argparse.BooleanOptionalAction, default=True,
                   help='start from pretrained weights (default: yes)')
    p.add_argument('--img-size', type=int, help="input size (default: the model's pretrained input size)")
    p.add_argument('--opt', dest='optimizer', default='adamw', choices=['adamw', 'sgd', 'momentum'],
                   help='adamw, sgd (Nesterov momentum) or momentum (plain momentum SGD, as in the paper)')
    p.add_argument('--lr', type=float, help='peak learning rate (default 1e-3 adamw, 1e-2 sgd and momentum)')
    p.add_argument('--weight-decay', type=float, help='default 0.05 adamw, 1e-4 sgd and momentum')
    p.add_argument('--warmup-epochs', type=float, default=1.0, help='linear warm-up, then the schedule')
    p.add_argument('--sched', default='cosine', choices=['cosine', 'step'],
                   help='cosine decay to --min-lr over the run, or step decay (default cosine)')
    p.add_argument('--decay-epochs', type=float, default=30.0, help='step schedule: epochs between decays')
    p.add_argument('--decay-rate', type=float, default=0.1, help='step schedule: LR factor at each decay')
    p.add_argument('--label-smoothing', type=float, default=0.1)
    p.add_argument('--layer-decay', type=float, help='layer-wise LR decay, e.g. 0.75')
    p.add_argument('--freeze-backbone', action='store_true', help='train the classifier only')
    p.add_argument('--freeze-bn', action='store_true', help='keep BatchNorm statistics and parameters fixed')
    p.add_argument('--no-augment', dest='augment', action='store_false', help='no train-time augmentation')
    p.add_argument('--cutout', type=int, default=0, metavar='SIZE',
                   help='Cutout (DeVries & Taylor 2017): zero one SIZExSIZE square of each training image')
    p.add_argument('--drop-rate', type=float, default=0.0)
    p.add_argument('--drop-path-rate', type=float, default=0.0)
    p.add_argument('--grad-clip', type=float, help='clip the gradient norm')
    p.add_argument('--push', metavar='REPO', help='publish the fine-tuned model to this Hub repo')
    p.add_argument('--no-check-images', dest='check_images', action='store_false',
                   help='skip opening every image before training (large data sets)')
    p.add_argument('--fresh-se', action='store_true',
                   help='with pretrained weights: load every tensor but those of the SE units, which start from '
                   'their initialisation (what a --model-arg SE design change needs: se_args, se_layer, ...)')


def finetune_parser() -> argparse.ArgumentParser:
    """``se-hub finetune``'s options alone (``ablate --print-commands`` reads their flags and defaults)."""
    p = argparse.ArgumentParser(prog='se-hub finetune', add_help=False)
    finetune_arguments(p)
    return p


def options_of(args: argparse.Namespace, names, skip=()) -> dict:
    """The parsed values of ``args`` named in ``names`` (a dataclass's fields), less ``skip``; the
    repeatable KEY=VALUE options become dicts."""
    options = {n: getattr(args, n) for n in names if hasattr(args, n) and n not in skip}
    for key in ('model_kwargs', 'retrofit_args'):
        if key in options:
            options[key] = dict(options[key] or ())
    return options
