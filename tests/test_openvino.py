"""The OpenVINO backend (se_hub.deploy.openvino_backend / openvino_runner): IR export of every family that exports
to ONNX, checked against eager PyTorch on real photos; bf16 and INT8 on the real Lite0 weights; the SE gate path
left in float by NNCF; bad input."""
import sys

import pytest
import timm
import torch
from test_deploy_int8 import CALIBRATION_PHOTOS, calibration_folder, lite_weights, skimage_photos
from test_export import DEPLOY_FAMILIES, photo_calibrated

from _helpers import randomize_batchnorm

pytest.importorskip('openvino')

from se_hub.deploy.export import ExportedModel, export_model, metadata, photo_batch, verify_export  # noqa: E402
from se_hub.deploy.openvino_backend import export_openvino, gate_nodes  # noqa: E402


@pytest.mark.parametrize('name,kwargs,size', DEPLOY_FAMILIES, ids=[m[0] for m in DEPLOY_FAMILIES])
def test_openvino_f32_export_every_family(name, kwargs, size, tmp_path):
    """f32 IR within 1e-4 of eager PyTorch (as the ONNX file it comes from), with the ONNX export's metadata; both
    files appear, nothing else (the work folder beside them is gone)."""
    model = photo_calibrated(name, kwargs, size)
    path = tmp_path / f'{name}.xml'
    meta = export_openvino(model, str(path), 'f32', img_size=size, dynamic_batch=True)
    report = verify_export(model, str(path))
    assert report['max_abs_diff'] <= 1e-4, report['max_abs_diff']
    exported = ExportedModel(str(path))
    assert exported.kind == 'openvino' and exported.meta == meta
    # what the ONNX export stores (export_model's metadata), format and precision apart
    assert meta == metadata(model, size, format='openvino', dynamic_batch=True, precision='f32')
    assert exported.labels == meta['label_names'] and len(exported.labels) == model.num_classes
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, f'{name}.bin'])
    # what `se-hub predict --model FILE.xml` runs: eager's probabilities, through the preprocessing stored in the IR
    from se_hub.deploy.export import predict_exported, sample_images
    images = sample_images()[1][:2]
    probs, names, header = predict_exported(str(path), images)
    with torch.inference_mode():
        eager = model(photo_batch(meta, images)).softmax(-1)
    torch.testing.assert_close(probs, eager, atol=1e-4, rtol=0)
    assert names == meta['label_names'] and header.startswith(f'{path} (openvino f32: {meta["model"]}')


def test_openvino_bf16_and_int8_real_lite0(tmp_path):
    """The real Lite0 weights: bf16 and INT8 (se_hub's QDQ file, calibrated on a folder of six other photos) IRs
    keep every top-1 of eager float32 on the photos with logit cosine >= 0.99; a static-batch file runs a batch image
    by image; the bf16 file runs with OpenVINO's bf16 hint where the CPU has bf16."""
    model = timm.create_model(lite_weights()[0], pretrained=True).eval()
    folder = calibration_folder(tmp_path)
    for precision in ('bf16', 'int8'):
        path = tmp_path / f'lite0_{precision}.xml'
        meta = export_openvino(model, str(path), precision, calibration=str(folder))
        report = verify_export(model, str(path))
        assert report['same_top1'] and min(report['cosine']) >= 0.99, (precision, report)
        assert ExportedModel(str(path)).session.precision == precision
    assert meta['int8']['calibration_images'] == 6
    assert meta['int8']['method'] == 'onnxruntime static QDQ, per-channel, read by OpenVINO'
    import openvino as ov
    has_bf16 = 'BF16' in ov.Core().get_property('CPU', 'OPTIMIZATION_CAPABILITIES')
    compiled = ExportedModel(str(tmp_path / 'lite0_bf16.xml')).session.compiled
    assert compiled.get_property('INFERENCE_PRECISION_HINT') == (ov.Type.bf16 if has_bf16 else ov.Type.f32)


def test_openvino_int8_keeps_the_se_gate_path_float(tmp_path):
    """NNCF (``int8_method='nncf'``) quantizes the convolutions but not the SE gate FCs (``gate_nodes``, ignored
    scope, with the stem and classifier: ``float_ends``): one gate path per SE
    block of the network (four bottlenecks), none of whose MatMuls reads a FakeQuantize; the result stays within
    cosine 0.99 of eager."""
    import openvino as ov
    model = timm.create_model('se_resnet50b', layers=(1, 1, 1, 1))
    model = randomize_batchnorm(model, calibrate_on=photo_batch(metadata(model, 64)))
    export_model(model, 'onnx', str(tmp_path / 'm.onnx'), img_size=64)
    names = gate_nodes(ov.convert_model(str(tmp_path / 'm.onnx')))
    path = tmp_path / 'int8.xml'
    meta = export_openvino(model, str(path), 'int8', calibration=skimage_photos(CALIBRATION_PHOTOS), img_size=64,
                           int8_method='nncf')
    assert meta['int8']['method'].startswith('NNCF') and meta['int8']['float_ops'] > len(names) > 0
    ir = ov.Core().read_model(str(path))
    ops = {op.get_friendly_name(): op for op in ir.get_ordered_ops()}

    def reads_fake_quantize(op):
        return any(i.get_source_output().get_node().get_type_name() == 'FakeQuantize' for i in op.inputs())
    gate_fcs = [ops[n] for n in names if n in ops and ops[n].get_type_name() == 'MatMul']
    assert len(gate_fcs) == 2 * 4  # two FCs in each of the four SE blocks (layers=(1, 1, 1, 1))
    assert not any(reads_fake_quantize(op) for op in gate_fcs)
    assert sum(reads_fake_quantize(op) for op in ir.get_ordered_ops() if op.get_type_name() == 'Convolution') > 4
    assert min(verify_export(model, str(path))['cosine']) >= 0.99


def test_openvino_precision_hint_and_bad_input(tmp_path, monkeypatch):
    model = timm.create_model('se_resnet20_cifar', layers=(1, 1, 1))
    with pytest.raises(ValueError, match=r'NAME\.xml'):
        export_openvino(model, str(tmp_path / 'm.onnx'))
    with pytest.raises(ValueError, match='unknown OpenVINO precision'):
        export_openvino(model, str(tmp_path / 'm.xml'), 'fp8')
    with pytest.raises(ValueError, match='calibration images'):
        export_openvino(model, str(tmp_path / 'm.xml'), 'int8')
    export_openvino(model, str(tmp_path / 'm.xml'))
    # an f32 file runs in f32 (OpenVINO's own CPU default is bf16 wherever the CPU has bf16)
    import openvino as ov
    compiled = ExportedModel(str(tmp_path / 'm.xml')).session.compiled
    assert compiled.get_property('INFERENCE_PRECISION_HINT') == ov.Type.f32
    (tmp_path / 'm.bin').unlink()
    with pytest.raises(ValueError, match=r'm\.bin is missing'):
        ExportedModel(str(tmp_path / 'm.xml'))
    assert not list(tmp_path.glob('.m.*'))  # no work folder left behind
    # an IR without se_hub metadata
    export_model(model, 'onnx', str(tmp_path / 'plain.onnx'))
    ov.save_model(ov.convert_model(str(tmp_path / 'plain.onnx')), str(tmp_path / 'plain.xml'))
    with pytest.raises(ValueError, match='has no se_hub metadata'):
        ExportedModel(str(tmp_path / 'plain.xml'))
    # no openvino installed: one line naming the extra
    from se_hub.deploy.openvino_runner import require_openvino
    monkeypatch.setitem(sys.modules, 'openvino', None)
    with pytest.raises(ImportError, match=r"pip install -e '\.\[openvino\]'"):
        require_openvino()



def test_a_dynamic_batch_ir_runs_each_batch_shape_compiled_for_it(tmp_path):
    """A dynamic-batch IR runs each batch in a copy compiled for its shape (OpenVINO's dynamic-shape kernels are
    slower): the same logits as the dynamic model and as eager PyTorch, the last STATIC_SHAPES shapes kept; a
    static file has none; a shape the model does not take still gets OpenVINO's own error."""
    from se_hub.deploy.openvino_runner import OpenVINORunner
    torch.manual_seed(0)
    model = randomize_batchnorm(timm.create_model('se_mobilenet', num_classes=7)).eval()
    export_openvino(model, str(tmp_path / 'dyn.xml'), 'f32', img_size=64, dynamic_batch=True)
    runner = OpenVINORunner(str(tmp_path / 'dyn.xml'))
    assert runner.dynamic_batch
    shapes = [(n, 3, 64, 64) for n in (1, 2, 3, 4, 5)]
    runner(torch.randn(shapes[0]).numpy())
    assert 'compiled' not in vars(runner)  # the dynamic model is compiled only when something uses it
    for shape in shapes:
        x = torch.randn(shape)
        out = runner(x.numpy())
        runner.request.infer({0: x.numpy()})  # the dynamic model itself
        assert abs(out - runner.request.get_output_tensor(0).data).max() <= 1e-5
        with torch.inference_mode():
            assert abs(out - model(x).numpy()).max() <= 1e-4
    assert runner.static_shapes == shapes[-runner.STATIC_SHAPES:]
    with pytest.raises(RuntimeError):
        runner(torch.randn(1, 4, 64, 64).numpy())
    export_openvino(model, str(tmp_path / 'static.xml'), 'f32', img_size=64)
    static = OpenVINORunner(str(tmp_path / 'static.xml'))
    assert 'compiled' in vars(static)  # a static file is compiled by the constructor
    static(torch.randn(1, 3, 64, 64).numpy())
    assert not static.dynamic_batch and static.static_shapes == []
