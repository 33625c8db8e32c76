"""se_hub models compute the same function as timm's (the local reference for the Caffe /
Cadene release and for timm's own SE weights), through se_hub.load_checkpoint and through
timm's pretrained-file path."""
import pytest
import timm
import torch
from safetensors.torch import save_file

import se_hub
from _helpers import randomize_batchnorm
from se_hub.weights import CheckpointLayoutError, convert_state_dict

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


@pytest.mark.parametrize('upstream_name,name,layout', PAIRS)
def test_load_checkpoint_gives_upstream_logits(upstream_name, name, layout, x):
    ref = upstream(upstream_name)
    model = timm.create_model(name)
    assert se_hub.load_checkpoint(model, ref.state_dict()) == layout
    expected = logits(ref, x)
    assert (expected[0] - expected[1]).abs().max() > 0.1  # the logits depend on the input
    torch.testing.assert_close(logits(model, x), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize('upstream_name,name,layout', [p for p in PAIRS[:5] if p[0] not in SLOW])
@pytest.mark.parametrize('suffix', ['.pth', '.safetensors'])
def test_timm_pretrained_file_path_converts(upstream_name, name, layout, suffix, x, tmp_path):
    ref = upstream(upstream_name)
    path = tmp_path / f'weights{suffix}'
    if suffix == '.pth':
        torch.save(ref.state_dict(), path)
    else:
        save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    torch.testing.assert_close(logits(model, x), logits(ref, x), atol=1e-4, rtol=0)


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


def test_training_gradients_equal_timm():
    """Train mode (batch statistics), float64: the memory-lean SE tail gives timm's gradients."""
    ref = randomize_batchnorm(timm.create_model('seresnet50')).double().train()
    model = timm.create_model('se_resnet50b').double().train()
    se_hub.load_checkpoint(model, ref.state_dict())
    x = torch.randn(3, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ref(x).square().sum().backward()
    model(x).square().sum().backward()
    ref_grads = dict(ref.named_parameters())
    for key, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[key].grad, rtol=1e-7, atol=1e-9, msg=key)
    _, ref_state = convert_state_dict(ref.state_dict(), model)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, ref_state[key], msg=key)


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
