"""Every verb's arguments, in one place, with the standard library only (``se-hub --help`` must
not wait for torch). Each verb names its handler as ``'module:function'``; the handler is
imported only when the verb runs."""
import argparse
import ast

AMP = ['auto', 'off', 'bf16', 'fp16']
DETECTOR_KINDS = ['fasterrcnn', 'retinanet', 'maskrcnn']
CLI = 'se_hub.cli'


def _engine_arguments(p: argparse.ArgumentParser, batch_size: int, workers: int) -> None:
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


def _add_finetune(sub) -> None:
    p = sub.add_parser('finetune', help='fine-tune a classifier on a directory of images (train/ + val/ class '
                       'folders, or train.csv + val.csv)')
    p.add_argument('--model', required=True, help='MODEL[.TAG], local-dir:PATH or hf-hub:REPO')
    _finetune_arguments(p)
    p.set_defaults(handler='se_hub.tasks.classification:finetune_command')


def _finetune_arguments(p, skip=()) -> None:
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
    _engine_arguments(p, batch_size=32, workers=2)
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


def _add_evaluate(sub) -> None:
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
    p.set_defaults(handler='se_hub.tasks.classification:evaluate_command')


def _add_finetune_detect(sub) -> None:
    p = sub.add_parser('finetune-detect', help='fine-tune a detector on an SE backbone (COCO-format data)')
    p.add_argument('--backbone', required=True, help='se_hub model (optionally MODEL.TAG), e.g. se_resnet50')
    p.add_argument('--kind', default='fasterrcnn', choices=DETECTOR_KINDS)
    p.add_argument('--train-json', required=True, help='COCO annotation file of the training set')
    p.add_argument('--train-images', required=True, help='image folder of the training set')
    p.add_argument('--val-json', help='COCO annotation file of the validation set')
    p.add_argument('--val-images', help='image folder of the validation set')
    _engine_arguments(p, batch_size=4, workers=2)
    p.add_argument('--pretrained', action=argparse.BooleanOptionalAction, default=True,
                   help='start the backbone from pretrained weights (default: yes)')
    p.add_argument('--lr', type=float, default=0.01)
    p.add_argument('--optimizer', default='sgd', choices=['sgd', 'momentum', 'adamw'])
    p.add_argument('--weight-decay', type=float, default=1e-4)
    p.add_argument('--warmup-iters', type=int, default=100)
    p.add_argument('--grad-clip', type=float, default=10.0, help='clip the gradient norm (default 10)')
    p.add_argument('--no-hflip', dest='hflip', action='store_false', help='no random horizontal flips')
    p.add_argument('--eval-every', type=int, default=1, metavar='N', help='COCO evaluation every N epochs')
    p.add_argument('--trainable-layers', type=int, help='backbone stages that train, from the top (default 3)')
    p.add_argument('--min-size', type=int, default=800)
    p.add_argument('--max-size', type=int, default=1333)
    p.add_argument('--anchor-sizes', type=int, nargs=5, metavar='S', help='base anchor size per pyramid level')
    p.add_argument('--fpn-channels', type=int, default=256)
    p.set_defaults(handler='se_hub.tasks.detection:run_cli')


def _add_ablate(sub) -> None:
    p = sub.add_parser('ablate', help='design-space sweep: fine-tune SE variants of one network with the same budget '
                       'and seeds, then tables and plots (se_hub/analysis/ablate.py)')
    p.add_argument('--base', help='the network every variant changes: a registered MODEL[.TAG] (residual or MBConv)')
    p.add_argument('--data', metavar='DIR', help='a data directory, as for finetune')
    p.add_argument('--variants', metavar='LIST', help='comma-separated variants: paper rows (r4, gmp, nosqueeze, pre, '
                   'identity, 3x3, none, tanh, stage2, ...), attention layers (se, eca, cbam), base, rN, stageN, '
                   "combinations (r8+tanh) and named designs (late=se_stages:(2,3)+gate:tanh); see --list-variants")
    p.add_argument('--epochs', type=int, help='epochs of every run')
    p.add_argument('--seeds', default='3', metavar='K|LIST', help='K seeds (0..K-1), or a comma list (default 3)')
    p.add_argument('--output', metavar='OUT', help='OUT/<variant>/seed<k>/ per run, OUT/ablation.md / .csv / .png')
    p.add_argument('--print-commands', action='store_true', help='print one `se-hub finetune` command per unfinished '
                   '(variant, seed) instead of running; then `se-hub ablate --collect OUT`')
    p.add_argument('--collect', metavar='OUT', help='only build the tables and plots from the finished runs in OUT')
    p.add_argument('--list-variants', action='store_true', help='print the named variants and what each changes')
    _finetune_arguments(p, skip=('--data', '--epochs', '--output', '--seed', '--resume', '--push', '--fresh-se',
                                 '--retrofit', '--retrofit-arg'))  # variants are the sweep's SE designs
    p.set_defaults(handler='se_hub.analysis.ablate:ablate_command')


def _add_excitations(sub) -> None:
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
    p.set_defaults(handler='se_hub.analysis.excitations:excitations_command')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='se-hub', description='The Squeeze-and-Excitation model zoo for timm.')
    parser.add_argument('--debug', action='store_true', help='show tracebacks')
    sub = parser.add_subparsers(dest='command', required=True)
    p = sub.add_parser('list', help='models with parameters, multiply-adds and the paper row')
    p.add_argument('filter', nargs='?', help="name or glob, e.g. 'se_resnet50*'")
    p.add_argument('--exclude', action='append', default=[], metavar='GLOB', help='leave out matching models')
    p.add_argument('--pretrained', action='store_true', help='only models with published weights, with their tags')
    p.add_argument('--markdown', action='store_true', help='print a markdown table (as in README.md)')
    p.add_argument('--wide', action='store_true', help='every column (the default fits 100 columns)')
    p.set_defaults(handler='se_hub_cli.listing:cmd_list')
    p = sub.add_parser('info', help='architecture, cost, weights and their sources, metrics, preprocessing')
    p.add_argument('model')
    p.set_defaults(handler=f'{CLI}:cmd_info')
    p = sub.add_parser('download', help='fetch and verify pretrained weights into the local caches')
    p.add_argument('models', nargs='+', metavar='MODEL[.TAG]')
    p.add_argument('--quiet', action='store_true', help='no progress bar')
    p.set_defaults(handler=f'{CLI}:cmd_download')
    p = sub.add_parser('verify', help='re-hash every cached weight file; damaged files are removed')
    p.set_defaults(handler=f'{CLI}:cmd_verify')
    p = sub.add_parser('predict', help='classify images with a pretrained model')
    p.add_argument('images', nargs='+', metavar='IMAGE', help="image files, or skimage:NAME (e.g. skimage:chelsea)")
    p.add_argument('--model', required=True, help="MODEL[.TAG], hf-hub:REPO, local-dir:PATH or an exported "
                   "FILE.onnx / .pt / .pt2 (se-hub export)")
    p.add_argument('--topk', type=int, default=5)
    p.add_argument('--json', action='store_true', help='print JSON')
    p.set_defaults(handler=f'{CLI}:cmd_predict')
    p = sub.add_parser('push', help='publish a model in timm Hub format')
    p.add_argument('model', help='MODEL[.TAG], a directory exported by se_hub, hf-hub:REPO or local-dir:PATH')
    p.add_argument('repo_id')
    p.add_argument('--checkpoint', help='load this checkpoint (any supported layout, or a timm train.py '
                   'checkpoint) into MODEL first')
    p.add_argument('--use-ema', action='store_true', help="with --checkpoint: its EMA weights (timm's state_dict_ema)")
    p.add_argument('--as-timm', action='store_true', help="publish in the keys and config of the timm model of the "
                   'same function (loads with plain timm, no se_hub needed)')
    p.add_argument('--allow-random-weights', action='store_true', help='publish a model that was never trained')
    p.add_argument('--private', action='store_true')
    p.add_argument('--revision')
    p.set_defaults(handler=f'{CLI}:cmd_push')
    # export (the work in se_hub/deploy/)
    p = sub.add_parser(
        'export', help='export a model to ONNX (optionally INT8), TorchScript or torch.export (.pt2), verified '
                       'against eager PyTorch on real photos')
    p.add_argument('model', help='MODEL[.TAG] (pretrained weights), or local-dir:OUT (a fine-tuned export)')
    p.add_argument('--format', required=True, choices=['onnx', 'torchscript', 'pt2'], help='onnx, torchscript or pt2')
    p.add_argument('--output', required=True, metavar='FILE', help='the file to write (.onnx / .pt / .pt2)')
    p.add_argument('--img-size', type=int, help="input size (default: the model's pretrained input size)")
    p.add_argument('--dynamic-batch', action='store_true',
                   help="any batch size (default: batch 1; with --int8 only a batch-1 file puts each bottleneck's SE "
                        "gate into its convolution's weight scale)")
    p.add_argument('--int8', action='store_true', help='ONNX only: static INT8 quantization (needs --calibration)')
    p.add_argument('--calibration', metavar='DIR', help='a folder of representative images for INT8 calibration')
    p.add_argument('--calibration-count', type=int, default=64, metavar='N',
                   help='use N images of the calibration folder (default 64)')
    p.add_argument('--int8-gate', action='store_true',
                   help='quantize the SE gate path (FCs + gate) too (default: keep it float32)')
    p.add_argument('--int8-full-range', action='store_true',
                   help='8-bit weights in every convolution, for CPUs with VNNI or ARM (default: 7-bit weights in '
                        "the dense convolutions, whose onnxruntime kernels saturate on x86 CPUs without VNNI)")
    p.add_argument('--int8-no-bias-correction', dest='int8_bias_correction', action='store_false',
                   help="keep the quantized biases as rounded (default: move each convolution's bias by the mean "
                        'error it leaves on the calibration images)')
    p.add_argument('--no-pretrained', dest='pretrained', action='store_false',
                   help='random weights (to test an export path); the default loads pretrained weights')
    p.add_argument('--json', action='store_true', help='print the verification as JSON')
    p.set_defaults(handler='se_hub.deploy.cli:export_command')
    # fine-tuning: classification, evaluation, detection (the work in se_hub/tasks/)
    _add_finetune(sub)
    _add_evaluate(sub)
    _add_finetune_detect(sub)
    _add_ablate(sub)
    _add_excitations(sub)
    return parser
