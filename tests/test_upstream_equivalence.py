"""se_hub models compute the same function as timm's (the local reference for the Caffe /
Cadene release and for timm's own SE weights), through se_hub.load_checkpoint and through
timm's pretrained-file path."""
import functools

import pytest
import timm
import torch
from packaging.version import Version
from safetensors.torch import save_file

import se_hub
from _helpers import gradients_as_state_dict, randomize_batchnorm
from se_hub.models.catalog import MODELS
from se_hub.weights import CheckpointLayoutError

PAIRS = [  # (timm model, se_hub model, detected layout)
    ('legacy_seresnet50', 'se_resnet50', 'cadene'),
    ('legacy_seresnext50_32x4d', 'se_resnext50_32x4d', 'cadene'),
    ('legacy_senet154', 'se_senet154', 'cadene'),
    ('seresnet50', 'se_resnet50b', 'se_hub'),
    ('seresnext50_32x4d', 'se_resnext50b_32x4d', 'se_hub'),
    # the other depths and layouts
    ('legacy_seresnet18', 'se_resnet18', 'cadene'),
    ('legacy_seresnet34', 'se_resnet34', 'cadene'),
    ('legacy_seresnext26_32x4d', 'se_resnext26_32x4d', 'cadene'),
    ('seresnet18', 'se_resnet18b', 'se_hub'),
    ('senet154', 'se_senet154b', 'se_hub'),
    ('seresnext26d_32x4d', 'se_resnext26d_32x4d', 'se_hub'),
]
SLOW = {'legacy_senet154', 'senet154'}


def upstream(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    calibration = torch.randn(4, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    return randomize_batchnorm(timm.create_model(name), calibrate_on=calibration)


def logits(model, x):
    with torch.no_grad():
        return model.eval()(x)


@pytest.fixture(scope='module')
def x():
    return torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))


# Every model that names a timm counterpart (the catalog's ``upstream``), at a small input size.
UPSTREAM_OF = {name: info.upstream for name, info in sorted(MODELS.items()) if info.upstream}
SIZE = 64  # small, yet a 2x2 final map: BatchNorm calibrated on 4 images keeps the logits O(10)


def expected_layout(upstream_name: str) -> str:
    """The layout se_hub must detect: the Cadene port's keys for timm's ``legacy_*`` models, timm's
    SE key names (``conv_reduce`` / ``conv_expand``) for EfficientNet, se_hub's own otherwise."""
    if upstream_name.startswith('legacy_'):
        return 'cadene'
    if 'efficientnet' in upstream_name and 'lite' not in upstream_name:
        return 'timm_efficientnet'
    return 'se_hub'


def assert_same_logits(model, x, ref32, ref64, what):
    """Max abs difference <= 1e-4 in float32. The deepest networks at random weights (EfficientNet-B5..B7,
    SENet-154, ...) round more than that in float32 on their own (timm's float32 logits differ from
    timm's float64 logits by up to ~1e-3): there, the float32 gap must be no larger than timm's own
    rounding, and float64 decides (1e-8 of the logits' scale: the same function agrees to ~1e-12)."""
    diff = (logits(model, x) - ref32).abs().max().item()
    if diff <= 1e-4:
        return
    ref64 = ref64()
    own_rounding = (ref32 - ref64).abs().max().item()
    assert diff <= 4 * own_rounding, f'{what}: float32 logits differ by {diff:.2e}, timm rounds {own_rounding:.2e}'
    atol = 1e-8 * max(1., ref64.abs().max().item())
    torch.testing.assert_close(logits(model.double(), x.double()), ref64, atol=atol, rtol=0, msg=f'{what}, float64')


@pytest.mark.parametrize('name', list(UPSTREAM_OF))
def test_same_function_as_upstream(name, tmp_path):
    """timm's model with random weights and random BatchNorm statistics; its state dict loaded
    through se_hub.load_checkpoint and through timm's pretrained-file path gives its logits."""
    upstream_name = UPSTREAM_OF[name]
    x = torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    ref = randomize_batchnorm(timm.create_model(upstream_name), calibrate_on=x)
    state = ref.state_dict()
    ref32 = logits(ref, x)
    assert (ref32[0] - ref32[1]).abs().max() > 0.1  # the logits depend on the input

    @functools.lru_cache(None)
    def ref64():
        return logits(ref.double(), x.double())

    model = timm.create_model(name)
    assert se_hub.load_checkpoint(model, state) == expected_layout(upstream_name)
    assert_same_logits(model, x, ref32, ref64, 'load_checkpoint')
    del model

    # timm's own pretrained=True path, from a file; both file formats, on alternate models
    if list(UPSTREAM_OF).index(name) % 2:
        path = tmp_path / 'weights.pth'
        torch.save(state, path)
    else:
        path = tmp_path / 'weights.safetensors'
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    del state
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert model.pretrained_cfg['file'] == str(path)
    assert_same_logits(model, x, ref32, ref64, 'pretrained file')


def test_every_counterpart_is_a_timm_model():
    assert len(UPSTREAM_OF) >= 36
    assert set(UPSTREAM_OF.values()) <= set(timm.list_models())


def test_pretrained_file_with_new_head_keeps_the_body(x, tmp_path):
    ref = upstream('legacy_seresnet18')
    path = tmp_path / 'w.pth'
    torch.save(ref.state_dict(), path)
    model = timm.create_model('se_resnet18', pretrained=True, num_classes=10,
                              pretrained_cfg_overlay=dict(file=str(path))).eval()
    assert model.fc.out_features == 10
    with torch.no_grad():
        torch.testing.assert_close(model.forward_head(model.forward_features(x), pre_logits=True),
                                   ref.forward_head(ref.forward_features(x), pre_logits=True), atol=1e-4, rtol=0)


def test_layout_mistakes_are_visible(x):
    """The comparison is sharp enough to see a layout difference: the Caffe weights in the timm
    layout (stride on the 3x3, padded max-pool) give other logits."""
    ref = upstream('legacy_seresnet50')
    wrong = timm.create_model('se_resnet50b', se_args=dict(rd_divisor=1))
    se_hub.load_checkpoint(wrong, ref.state_dict())
    assert (logits(wrong, x) - logits(ref, x)).abs().max() > 0.1


# One model per family and layout, in training mode (batch statistics), float64. Deep stacks
# are cut to one block per stage (``layers``: both timm's and se_hub's builders take it) to keep
# float64 affordable; every block type and stem is still there.
NO_DROP = dict(drop_rate=0.)  # timm's legacy_* default to dropout 0.2 before the classifier
GRADIENT_CASES = [  # (timm model, se_hub model, kwargs for both, se_hub-only kwargs, input size)
    pytest.param('legacy_seresnet50', 'se_resnet50', NO_DROP, {}, 64, id='caffe-seresnet'),
    pytest.param('seresnet50', 'se_resnet50b', NO_DROP, {}, 64, id='timm-seresnet'),
    pytest.param('legacy_seresnet18', 'se_resnet18', NO_DROP, {}, 64, id='caffe-basic-block'),
    pytest.param('legacy_seresnext26_32x4d', 'se_resnext26_32x4d', NO_DROP, {}, 64, id='caffe-seresnext'),
    pytest.param('seresnext26d_32x4d', 'se_resnext26d_32x4d', NO_DROP, {}, 64, id='timm-seresnext-deep-stem'),
    pytest.param('legacy_senet154', 'se_senet154', dict(layers=[1, 1, 1, 1], drop_rate=0.), {}, 64,
                 id='caffe-senet154'),
    pytest.param('senet154', 'se_senet154b', dict(layers=[1, 1, 1, 1], drop_rate=0.), {}, 64, id='timm-senet154'),
    pytest.param('efficientnet_b0', 'se_efficientnet_b0', dict(drop_rate=0., drop_path_rate=0.), {}, 64,
                 id='mbconv'),
    pytest.param('tf_efficientnet_b0', 'se_tf_efficientnet_b0', dict(drop_rate=0., drop_path_rate=0.), {}, 64,
                 id='mbconv-tf-padding'),
    pytest.param('efficientnet_lite0', 'se_efficientnet_lite0', dict(drop_rate=0., drop_path_rate=0.), {}, 64,
                 id='mbconv-lite'),
    pytest.param('inception_v3', 'se_inception_v3', NO_DROP, dict(se_layer='none'), 75, id='inception-v3'),
    pytest.param('inception_resnet_v2', 'se_inception_resnet_v2', NO_DROP, dict(se_layer='none'), 75,
                 id='inception-resnet-v2'),
]


@pytest.mark.parametrize('upstream_name,name,both,ours,size', GRADIENT_CASES)
def test_training_gradients_equal_timm(upstream_name, name, both, ours, size):
    """Same loss, same parameter gradients and the same updated BatchNorm statistics as timm's
    model after a training-mode forward / backward (se_hub's memory-lean SE tail included)."""
    torch.manual_seed(0)
    if upstream_name == 'legacy_senet154' and Version(timm.__version__) < Version('1.0.16'):
        pytest.skip(f'timm {timm.__version__} < 1.0.16 builds legacy_senet154 with fixed layers')
    ref = randomize_batchnorm(timm.create_model(upstream_name, **both)).double().train()
    model = timm.create_model(name, **both, **ours).double().train()
    se_hub.load_checkpoint(model, ref.state_dict())
    x = torch.randn(3, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([1, 5, 7])
    ref_loss = torch.nn.functional.cross_entropy(ref(x) / 10, target)
    loss = torch.nn.functional.cross_entropy(model(x) / 10, target)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=0)
    ref_loss.backward()
    loss.backward()

    # timm's gradients (and updated statistics), renamed into se_hub's layout by its own converter
    expected = timm.create_model(name, **both, **ours).double()
    se_hub.load_checkpoint(expected, gradients_as_state_dict(ref))
    expected_grads = dict(expected.named_parameters())
    scale = max(p.grad.abs().max().item() for p in ref.parameters())
    for key, p in model.named_parameters():
        assert p.grad is not None, key
        torch.testing.assert_close(p.grad, expected_grads[key], rtol=1e-6, atol=1e-9 * scale, msg=key)
    for key, value in expected.state_dict().items():
        if key not in expected_grads:  # running statistics after the training-mode forward
            torch.testing.assert_close(model.state_dict()[key], value, msg=key)


def test_unknown_layout_error_names_layouts():
    expected = r"unknown checkpoint layout for se_resnet18 \(first keys: backbone.w.*Known layouts: se_hub.*cadene"
    with pytest.raises(CheckpointLayoutError, match=expected):
        se_hub.load_checkpoint(timm.create_model('se_resnet18'), {'backbone.w': torch.zeros(1)})


def test_mismatched_keys_are_listed():
    ref = timm.create_model('legacy_seresnet18')
    with pytest.raises(CheckpointLayoutError) as info:
        se_hub.load_checkpoint(timm.create_model('se_resnet34'), ref.state_dict())
    message = str(info.value)
    assert "layout 'cadene'" in message and 'se_resnet34' in message
    assert 'missing keys: layer1.2.conv1.weight' in message


def test_shape_mismatch_is_reported_even_when_not_strict():
    ref = timm.create_model('seresnet18')  # SE width 8 (timm rounding) vs 4 (Caffe rounding)
    with pytest.raises(CheckpointLayoutError, match=r'shape mismatches: layer1.0.se.fc1.weight \(8, 64, 1, 1\)'):
        se_hub.load_checkpoint(timm.create_model('se_resnet18', pre_se_act=False), ref.state_dict(), strict=False)


def test_wrapped_and_ddp_checkpoints_load(x, tmp_path):
    ref = upstream('seresnet18')
    wrapped = {'epoch': 3, 'state_dict': {f'module.{k}': v for k, v in ref.state_dict().items()}}
    path = tmp_path / 'train.pth.tar'
    torch.save(wrapped, path)
    model = timm.create_model('se_resnet18b')
    assert se_hub.load_checkpoint(model, path) == 'se_hub'
    torch.testing.assert_close(logits(model, x), logits(ref, x), atol=1e-4, rtol=0)


def test_pickled_code_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ('this would run at load time',))

    path = tmp_path / 'evil.pth'
    torch.save({'conv1.weight': Payload()}, path)
    with pytest.raises(CheckpointLayoutError, match='never unpickles code'):
        se_hub.load_checkpoint(timm.create_model('se_resnet18'), path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        se_hub.load_checkpoint(timm.create_model('se_resnet18'), tmp_path / 'nope.pth')


def test_frozen_batchnorm_in_a_training_model_keeps_its_statistics():
    """A BatchNorm put in eval mode inside a training model (frozen BN for fine-tuning) must
    normalise with its running statistics and leave them alone, on the fused SE tail too."""
    model = randomize_batchnorm(timm.create_model('se_resnet18b')).train()
    reference = timm.create_model('se_resnet18b')
    reference.load_state_dict(model.state_dict())
    for m in (model, reference):
        for bn in m.modules():
            if isinstance(bn, torch.nn.BatchNorm2d):
                bn.eval()
    for block in reference.modules():
        if hasattr(block, '_scale_add'):  # the plain scale + add as the reference
            block._scale_add = lambda y, gate, shortcut, z: torch.addcmul(shortcut, y, gate)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    out.sum().backward()
    torch.testing.assert_close(out, reference(x))
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], msg=key)
