"""SE-VGG-16 (se_hub.models.se_vgg): its SE-free network is torchvision's vgg16_bn (same logits
from torchvision's state dict, keys converted by the 'torchvision_vgg' layout), and the cost
figures of the paper's Table 2 (TPAMI): VGG-16 15.47 GFLOPs -> SE-VGG-16 15.48."""
import pytest
import timm
import torch
import torchvision

import se_hub
from _helpers import randomize_batchnorm
from se_hub.complexity import count_macs, count_params, model_complexity
from se_hub.layers import SqueezeExcite
from se_hub.models.catalog import MODELS
from se_hub.weights import CheckpointLayoutError


def meta(name, **kwargs):
    with torch.device('meta'):
        return timm.create_model(name, **kwargs)


def test_baseline_is_torchvisions_vgg16_bn():
    """Random weights, random calibrated BN; inputs smaller than 224 go through torchvision's
    adaptive 7x7 average pool (75: an odd size, floor-mode max-pools, a 2x2 map pooled up to 7x7)."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 75, 75, generator=torch.Generator().manual_seed(1))
    ref = randomize_batchnorm(torchvision.models.vgg16_bn(), calibrate_on=x)
    model = timm.create_model('se_vgg16', se_layer='none')
    assert se_hub.load_checkpoint(model, ref.state_dict()) == 'torchvision_vgg'
    with torch.no_grad():
        expected = ref.eval()(x)
        assert (expected[0] - expected[1]).abs().max() > 1e-3  # input-dependent logits
        torch.testing.assert_close(model.eval()(x), expected, atol=1e-4, rtol=1e-4)


def test_torchvision_vgg_without_bn_is_refused_with_the_layout_named():
    with torch.device('meta'):
        plain = torchvision.models.vgg16()
    with pytest.raises(CheckpointLayoutError, match="layout 'torchvision_vgg'"):
        se_hub.load_checkpoint(meta('se_vgg16', se_layer='none'), plain.state_dict())


def test_costs_against_table2():
    paper = MODELS['se_vgg16'].paper
    base = meta('se_vgg16', se_layer='none')
    with torch.device('meta'):
        tv = torchvision.models.vgg16_bn()
    assert count_params(base) == count_params(tv) == 138_365_992
    assert round(count_macs(base, (3, 224, 224)) / 1e9, 2) == paper['baseline']['gmacs'] == 15.47
    model = meta('se_vgg16')
    ses = [m for m in model.modules() if isinstance(m, SqueezeExcite)]
    # an SE block after the ReLU of each of the 13 convolutions (paper Sec. 3.3), reduction 16
    assert [se.channels for se in ses] == [64, 64, 128, 128, 256, 256, 256] + [512] * 6
    elements = 64 * 224 ** 2 * 2 + 128 * 112 ** 2 * 2 + 256 * 56 ** 2 * 3 + 512 * 28 ** 2 * 3 + 512 * 14 ** 2 * 3
    params, macs = model_complexity('se_vgg16')
    assert params - count_params(base) == sum(2 * c * (c // 16) + c + c // 16 for c in (se.channels for se in ses))
    # se_hub counts squeeze + scale (15.498 G); the paper's 15.48 is one operation per element
    assert round(macs / 1e9, 3) == 15.498
    assert round((macs - elements) / 1e9, 2) == paper['gmacs'] == 15.48


def test_features_and_head():
    model = timm.create_model('se_vgg16', features_only=True, out_indices=(0, 1, 2, 3, 4)).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 64))
    assert [f.shape[1:] for f in feats] == [(64, 64, 64), (128, 32, 32), (256, 16, 16), (512, 8, 8), (512, 4, 4)]
    m = meta('se_vgg16', num_classes=10)
    assert m.fc.in_features == 4096 and m.final.fc6.kernel_size == (7, 7)


def test_pruning_contract_at_a_small_size():
    """timm's pruning contract (the suite skips it for VGG's 15.5 GMACs): taps, stop_early, the
    width-changing fc6 / fc7 going with prune_norm."""
    from _pruning import check_pruning_contract
    check_pruning_contract('se_vgg16', 32, mlp_hidden=256)  # fc6 / fc7 narrowed: 100M fewer weights to copy
