"""The command line of the OpenVINO backend and of the benchmark: ``se-hub export --format openvino`` at each
precision (the real Lite0 weights, verified against eager PyTorch on real photos), ``se-hub predict`` on the IR,
the option combinations that mean nothing, ``--int8-ort-only-gate-folding``, and ``se-hub bench`` run for real in
a subprocess on a tiny model."""
import contextlib
import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from test_deploy_int8 import calibration_folder, lite_weights

from se_hub.deploy.benchmark import PATHS
from se_hub.deploy.export import ExportedModel, photo_batch
from se_hub_cli import main

REPO = Path(__file__).resolve().parents[1]


def _cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


# the IR's logits against eager float32 on the four photos: f32 is the same function, INT8 holds the benchmark's
# accuracy bar (cosine >= 0.99, every top-1 kept); bf16 on the same weights: tests/test_openvino.py
@pytest.mark.parametrize('precision', ['f32', 'int8'])
def test_cli_export_openvino_and_predict_real_lite0(precision, tmp_path):
    pytest.importorskip('openvino')
    spec = lite_weights()[0]
    path = tmp_path / f'lite0_{precision}.xml'
    extra = ['--calibration', str(calibration_folder(tmp_path))] if precision == 'int8' else []
    code, out, err = _cli(['export', spec, '--format', 'openvino', '--precision', precision, '--output', str(path),
                           '--json', *extra])
    assert code == 0, err
    report = json.loads(out)
    assert report['precision'] == precision and report['file'] == str(path)
    assert report['same_top1'] and min(report['cosine']) >= 0.99, report
    if precision == 'f32':
        assert report['max_abs_diff'] <= 1e-4
    assert sorted(p.name for p in tmp_path.glob('lite0_*')) == [path.name.replace('.xml', '.bin'), path.name]
    exported = ExportedModel(str(path))
    assert exported.kind == 'openvino' and exported.meta['precision'] == precision
    assert exported.session.precision == precision  # the runner's hint comes from the stored precision
    # `se-hub predict --model FILE.xml`: the IR's probabilities are eager PyTorch's on the same preprocessing
    code, out, err = _cli(['predict', '--model', str(path), 'skimage:chelsea', 'skimage:coffee', '--json'])
    assert code == 0, err
    predicted = json.loads(out)
    model = timm.create_model(spec, pretrained=True).eval()
    import skimage.data
    from PIL import Image
    images = [Image.fromarray(getattr(skimage.data, n)()).convert('RGB') for n in ('chelsea', 'coffee')]
    with torch.inference_mode():
        eager = model(photo_batch(exported.meta, images)).softmax(-1)
    tolerance = 1e-4 if precision == 'f32' else 0.05
    for result, probs in zip(predicted, eager):
        top = result['predictions']
        assert top[0]['index'] == int(probs.argmax())
        for p in top:
            assert abs(p['probability'] - float(probs[p['index']])) <= tolerance, (precision, p)
    code, out, _ = _cli(['predict', '--model', str(path), 'skimage:chelsea'])
    assert code == 0 and out.startswith(f'{path} (openvino {precision}: ')


@pytest.mark.parametrize('argv,message', [
    (['--format', 'openvino', '--precision', 'bf16', '--int8', '--calibration', '.'], '--int8 asks for --precision'),
    (['--format', 'openvino', '--precision', 'int8'], 'INT8 needs --calibration DIR'),
    (['--format', 'openvino', '--int8-ort-only-gate-folding'], 'OpenVINO cannot read it'),
    (['--format', 'openvino', '--int8', '--calibration', '.', '--int8-full-range'], 'with --format onnx --int8 only'),
    (['--format', 'openvino', '--int8-method', 'nncf'], 'it needs --precision int8'),
    (['--format', 'onnx', '--precision', 'bf16'], '--precision is for --format openvino'),
    (['--format', 'onnx', '--int8', '--calibration', '.', '--int8-method', 'nncf'], '--int8-method is for'),
    (['--format', 'onnx', '--int8-ort-only-gate-folding'], '--int8-ort-only-gate-folding needs --int8'),
    (['--format', 'torchscript', '--precision', 'int8'], '--precision is for --format openvino'),
])
def test_cli_export_options_that_mean_nothing(argv, message, tmp_path):
    """One error line naming the options, before any model is built; nothing is written."""
    output = tmp_path / ('m.xml' if 'openvino' in argv else 'm.onnx' if 'onnx' in argv else 'm.pt')
    code, out, err = _cli(['export', 'se_resnet18', '--no-pretrained', '--output', str(output), *argv])
    assert code == 1 and message in err and err.count('\n') == 1, err
    assert not list(tmp_path.iterdir())


def test_cli_export_openvino_needs_an_xml_name_and_openvino(tmp_path, monkeypatch):
    code, _, err = _cli(['export', 'se_resnet18', '--format', 'openvino', '--output', str(tmp_path / 'm.onnx')])
    assert code == 1 and 'should end in .xml (with NAME.bin beside it)' in err
    monkeypatch.setitem(sys.modules, 'openvino', None)  # not installed: one line naming the extra, nothing written
    code, _, err = _cli(['export', 'se_resnet18', '--format', 'openvino', '--output', str(tmp_path / 'm.xml')])
    assert code == 1 and err == "se-hub: error: the OpenVINO backend needs the openvino package: pip install -e " \
        "'.[openvino]'\n"
    assert not list(tmp_path.iterdir())


def test_cli_int8_ort_only_gate_folding_is_reachable(tmp_path):
    """``--int8-ort-only-gate-folding`` makes the onnxruntime-only file: each bottleneck's gate in its convolution's
    weight scale (SE-ResNet-50: 16 bottlenecks; the default file has none: tests/test_deploy_int8.py)."""
    from test_deploy_int8 import CALIBRATION_PHOTOS, skimage_photos
    folder = tmp_path / 'photos'
    folder.mkdir()
    for i, img in enumerate(skimage_photos(CALIBRATION_PHOTOS[:2])):
        img.save(folder / f'{i}.png')
    path = tmp_path / 'm.onnx'
    code, _, err = _cli(['export', 'se_resnet50b', '--no-pretrained', '--img-size', '64', '--format', 'onnx', '--int8',
                         '--calibration', str(folder), '--int8-no-bias-correction', '--int8-ort-only-gate-folding',
                         '--output', str(path), '--json'])
    assert code == 0, err
    assert ExportedModel(str(path)).meta['int8']['gates_in_conv_scale'] == 16


def test_cli_bench_tiny_model_in_a_subprocess():
    """``se-hub bench`` for real (CIFAR SE-ResNet-20, 32 px, one round, no INT8): the CPU features line, one table
    row per path the plan runs, why each other path was skipped, progress on stderr, and the recommendation: the
    fastest row at batch 1 whose cosine holds. Then ``--json`` (two paths), whose recommendation is recomputed
    from its own rows."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    run = subprocess.run([sys.executable, '-m', 'se_hub_cli', 'bench', 'se_resnet20_cifar', '--no-pretrained',
                          '--rounds', '1', '--batch-size', '2', '--no-int8'], capture_output=True, text=True,
                         timeout=600, env=env, cwd=REPO)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith('CPU: ') and '; features: ' in lines[0]
    assert lines[1] == 'input 3x32x32, medians of 1 rounds, round-robin'
    rows = {line.split(' | ')[0][2:]: line for line in lines if line.startswith('| ') and not line.startswith('| path')}
    skipped = dict(line[len('skipped '):].split(': ', 1) for line in lines if line.startswith('skipped '))
    assert skipped['torch.compile'].startswith('not asked for')
    assert skipped['onnxruntime int8'] == 'INT8 not asked for'
    # without the openvino extra (the floor run) a missing runtime is the first reason given
    assert skipped['openvino int8'] == ('INT8 not asked for' if importlib.util.find_spec('openvino')
                                        else "openvino not installed (pip install -e '.[openvino]')")
    assert set(rows) | set(skipped) == set(PATHS) and not set(rows) & set(skipped)
    assert {'eager', 'optimize'} <= set(rows)
    ms = {path: float(line.split(' | ')[1]) for path, line in rows.items()}
    cosine = {path: float(line.split(' | ')[-2]) for path, line in rows.items()}
    recommended = lines[-1].split('recommended: ')[1].split(' (')[0]
    assert recommended == min((p for p in rows if cosine[p] >= 0.99), key=ms.get)
    assert '[bench] timing: round 1/1' in run.stderr and '[bench] building eager' in run.stderr

    run = subprocess.run([sys.executable, '-m', 'se_hub_cli', 'bench', 'se_resnet20_cifar', '--no-pretrained',
                          '--rounds', '1', '--batch-size', '2', '--paths', 'eager', 'onnxruntime fp32', '--json'],
                         capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)  # stdout holds the JSON alone: progress went to stderr
    assert [r['path'] for r in result['rows']] == [s['path'] for s in result['plan'] if not s['skipped']]
    not_asked = {'optimize', 'openvino f32'} if importlib.util.find_spec('openvino') else {'optimize'}
    assert {s['path'] for s in result['plan'] if s['skipped'] == 'not asked for'} >= not_asked
    holding = [r for r in result['rows'] if r['accuracy_holds']]
    assert result['recommended'] == min(holding, key=lambda r: r['ms']['1'])['path']
