"""The timm model contract for every registered se_hub model (timm's own test file, run by
tests/test_timm_suite.py, checks the same on its side)."""
import copy
import inspect
from pathlib import Path

import pytest
import timm
import torch
from timm.models import get_pretrained_cfg
from timm.models._registry import _model_entrypoints, _model_to_module

import se_hub
from _helpers import randomize_batchnorm
from se_hub.layers import SqueezeExcite
from se_hub.models import se_residual
from se_hub.models.catalog import MODELS

REPO = Path(__file__).resolve().parents[1]

SE_MODELS = timm.list_models('se_*')
SMALL = ['se_resnet18', 'se_resnet50', 'se_resnext26d_32x4d', 'se_resnet50_nosqueeze', 'se_resnet50_pre']


def test_every_model_is_registered_under_se_names():
    assert len(SE_MODELS) >= 36 and set(SE_MODELS) == set(MODELS)
    for name in SE_MODELS:
        assert _model_to_module[name] == MODELS[name].family
        assert inspect.getmodule(_model_entrypoints[name]).__name__ == f'se_hub.models.{MODELS[name].family}'
        assert get_pretrained_cfg(name).architecture == name


def test_no_name_collides_with_timm():
    """Registering a timm name would silently delete timm's pretrained tags for it."""
    import importlib.metadata
    import re
    timm_names = set()
    for f in importlib.metadata.files('timm'):
        if str(f).startswith('timm/models/') and str(f).endswith('.py'):
            timm_names |= set(re.findall(r'^def (\w+)\(pretrained', f.read_text(), re.M))
    assert timm_names, 'could not read timm sources'
    assert not (timm_names & set(SE_MODELS))
    assert not any(m.startswith('se_') and m not in MODELS for m in timm.list_models())


def test_every_entrypoint_is_a_def_that_grep_finds():
    """Each registered name is a ``def <name>(pretrained...)`` in its family module (grep and an IDE find
    it) that builds its own configuration, not a neighbour's."""
    import ast
    found = {}
    for path in (REPO / 'se_hub' / 'models').glob('*.py'):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith('se_'):
                calls = [c for c in ast.walk(node) if isinstance(c, ast.Call) and c.args
                         and isinstance(c.args[0], ast.Constant)]
                found[node.name] = (path.stem, calls[0].args[0].value if calls else None)
    assert set(found) == set(SE_MODELS)
    for name in SE_MODELS:
        assert found[name] == (MODELS[name].family, name), name


def test_no_module_shadows_a_timm_module():
    timm_modules = set(timm.list_modules()) - {info.family for info in MODELS.values()}
    import pkgutil
    ours = {m.name.rsplit('.', 1)[-1] for m in pkgutil.walk_packages(se_hub.__path__, 'se_hub.')}
    assert not (ours & timm_modules), ours & timm_modules


@pytest.mark.parametrize('name', SE_MODELS)
def test_pretrained_cfg(name):
    cfg = get_pretrained_cfg(name)
    assert cfg.input_size[0] == 3 and cfg.pool_size and cfg.num_classes
    assert cfg.interpolation and cfg.crop_pct and cfg.mean and cfg.std
    assert cfg.classifier and cfg.license and cfg.paper_ids
    with torch.device('meta'):
        model = timm.create_model(name)
        feats = model.forward_features(torch.zeros(1, *cfg.input_size))
    assert tuple(feats.shape[-2:]) == tuple(cfg.pool_size)
    modules = dict(model.named_modules())
    assert cfg.first_conv + '.weight' in dict(model.named_parameters())
    assert modules[cfg.first_conv].in_channels == 3
    assert modules[cfg.classifier].out_features == cfg.num_classes


@pytest.mark.parametrize('name', SE_MODELS)
def test_features_only_matches_feature_info(name):
    size = get_pretrained_cfg(name).input_size[-1]
    size = size if size < 64 or 'inception' in name else 64  # unpadded Inception convs want their real size
    levels = len(timm.create_model(name, pretrained=False).feature_info)
    model = timm.create_model(name, features_only=True, out_indices=tuple(range(1, levels))).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, size, size))
    info = model.feature_info
    assert [f.shape[1] for f in feats] == info.channels()
    for f, r in zip(feats, info.reduction()):  # spatial size matches the advertised reduction
        assert size / (4 * r) < f.shape[-1] <= -(-size // r) + 1, (f.shape, r)


@pytest.mark.parametrize('name', SMALL)
def test_heads_intermediates_and_pruning(name):
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        out = model(x)
        final, inter = model.forward_intermediates(x)
        only = model.forward_intermediates(x, indices=[0, 2], intermediates_only=True)
    assert pre.shape == (2, model.num_features) and model.head_hidden_size == model.num_features
    torch.testing.assert_close(model.get_classifier()(pre), out)
    torch.testing.assert_close(final, feats)
    assert len(inter) == 5 and [t.shape[1] for t in inter] == [f['num_chs'] for f in model.feature_info]
    torch.testing.assert_close(only[1], inter[2])

    kept = model.prune_intermediate_layers(indices=[2], prune_head=True)
    assert kept == [2] and model.num_classes == 0
    with torch.no_grad():
        torch.testing.assert_close(model.forward_intermediates(x, indices=[2], intermediates_only=True)[0], inter[2])
        torch.testing.assert_close(model(x), inter[2])  # pruned: no pooling, no head


def test_reset_classifier_and_global_pool():
    model = timm.create_model('se_resnet18', num_classes=7, global_pool='max')
    assert model.get_classifier().out_features == 7
    model.reset_classifier(3, 'catavgmax')
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)
    assert model.get_classifier().in_features == 2 * model.num_features
    model.reset_classifier(0)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 2 * model.num_features)


def test_in_chans_and_drop_rates():
    model = timm.create_model('se_resnet18', in_chans=1, drop_rate=0.5, drop_path_rate=0.1)
    assert model.conv1.in_channels == 1 and model.drop_rate == 0.5
    assert model.layer4[1].drop_path.drop_prob == pytest.approx(0.1)
    assert model.layer1[0].drop_path is None  # linear decay from 0
    model.train()
    x = torch.randn(2, 1, 64, 64)
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    assert not torch.allclose(a, model(x))  # dropout and stochastic depth are active in training
    model.eval()
    torch.testing.assert_close(model(x), model(x))


def test_unknown_kwargs_raise_type_error():
    with pytest.raises(TypeError, match='no_such_option'):
        timm.create_model('se_resnet50', no_such_option=1)


@pytest.mark.parametrize('kwargs,message', [
    (dict(se_placement='middle'), 'se_placement'), (dict(stem_type='quad'), 'stem_type'),
    (dict(se_stages=(4,)), 'se_stages'), (dict(se_layer='gc'), 'se_layer'),
])
def test_bad_options_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        timm.create_model('se_resnet50', **kwargs)


def test_3x3_placement_needs_bottlenecks():
    with pytest.raises(ValueError, match='bottleneck'):
        timm.create_model('se_resnet18', se_placement='3x3')


@pytest.mark.parametrize('name', ['se_resnet50', 'se_resnet50_stage3'])
@pytest.mark.parametrize('through', ['timm', 'entrypoint', 'torch.hub'])
def test_se_layer_none_is_the_plain_network(name, through):
    # timm.create_model drops None-valued kwargs: through it, 'none' is the way to say it
    if through == 'timm':
        model = timm.create_model(name, se_layer='none')
    elif through == 'entrypoint':
        model = getattr(se_residual, name)(se_layer=None)
    else:
        model = torch.hub.load(str(REPO), name, source='local', se_layer=None)
    assert not any(isinstance(m, SqueezeExcite) for m in model.modules())
    plain = timm.create_model('se_resnet50_none')
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in plain.parameters())


def test_se_stages_select_stages():
    model = timm.create_model('se_resnet50_stage3')
    with_se = [i for i in range(1, 5) if getattr(model, f'layer{i}')[0].se is not None]
    assert with_se == [2]


def test_se_args_override_keeps_layout_rounding():
    model = timm.create_model('se_resnet18', se_args=dict(gate='tanh'))
    se = model.layer1[0].se
    assert isinstance(se.gate, torch.nn.Tanh) and se.rd_channels == 4  # Caffe: floor(64 / 16)


@pytest.mark.parametrize('name', ['se_resnet18', 'se_resnet50', 'se_resnet50_post'])
def test_grad_checkpointing_gives_same_output_and_grads(name):
    torch.manual_seed(0)
    model = timm.create_model(name, drop_path_rate=0.).train()
    x = torch.randn(2, 3, 64, 64)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    out = model(x)
    out.sum().backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.load_state_dict(state)
    model.zero_grad()
    model.set_grad_checkpointing(True)
    out2 = model(x)
    out2.sum().backward()
    torch.testing.assert_close(out2, out)
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[k], atol=1e-5, rtol=1e-4, msg=k)


@pytest.mark.parametrize('name', ['se_resnet18', 'se_efficientnet_b0'])
def test_torchscript_training_gradients_equal_eager(name):
    """A scripted model trains like the eager one: same loss, same parameter gradients, same updated
    BatchNorm statistics (the scripted copy runs the same SE tail code as TorchScript). float64: in
    float32, training-mode BatchNorm over a 2-image batch amplifies rounding past any useful bar."""
    torch.manual_seed(0)
    eager = randomize_batchnorm(timm.create_model(name, drop_rate=0.)).double().train()
    scripted = torch.jit.script(copy.deepcopy(eager))
    size = 75 if 'inception' in name else 32
    x = torch.randn(2, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([3, 9])
    loss = torch.nn.functional.cross_entropy(eager(x), target)
    scripted_loss = torch.nn.functional.cross_entropy(scripted(x), target)
    torch.testing.assert_close(scripted_loss, loss)
    loss.backward()
    scripted_loss.backward()
    scripted_params = dict(scripted.named_parameters())
    assert set(scripted_params) == {k for k, _ in eager.named_parameters()}
    # measured against the largest gradient: a BatchNorm bias ahead of another BatchNorm has a gradient that is 0
    # in exact arithmetic, rounding only (eager MBConv divides its gate's gradient out of the kept product)
    scale = max(p.grad.abs().max().item() for p in eager.parameters())
    for key, p in eager.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, key
        torch.testing.assert_close(scripted_params[key].grad, p.grad, rtol=1e-6, atol=1e-15 * scale, msg=key)
    scripted_state = scripted.state_dict()
    for key, value in eager.state_dict().items():
        torch.testing.assert_close(scripted_state[key], value, msg=key)


def test_group_matcher_and_no_weight_decay_drive_timm_optim():
    import timm.optim
    from timm.models import group_parameters
    model = timm.create_model('se_resnet18')
    groups = group_parameters(model, model.group_matcher(coarse=True))
    assert len(groups) == 6  # stem, 4 stages, head
    fine = group_parameters(model, model.group_matcher(coarse=False))
    assert len(fine) == 1 + 8 + 1  # stem, 8 blocks, head
    assert model.no_weight_decay() == set()
    opt = timm.optim.create_optimizer_v2(model, 'adamw', lr=1e-3, layer_decay=0.7)
    assert len(opt.param_groups) > 2
