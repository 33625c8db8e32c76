"""SE-Shake-Shake 26 2x96d (se_hub.models.se_shake_shake): the Shake-Shake paper's 26.2M
parameters without SE, and the Shake-Shake-Image semantics: per-image forward alpha, an
independent per-image backward beta in training, the average at test."""
import timm
import torch

from se_hub.complexity import count_params
from se_hub.layers import SqueezeExcite
from se_hub.models.catalog import MODELS
from se_hub.models.se_shake_shake import ShakeShake

NAME = 'se_shake_shake26_2x96d_cifar'


def meta(**kwargs):
    with torch.device('meta'):
        return timm.create_model(NAME, **kwargs)


def test_se_free_params_match_the_shake_shake_paper():
    """Gastaldi 2017, Table 1: Shake-Shake 26 2x96d has 26.2M parameters (CIFAR-10)."""
    base = meta(se_layer='none')
    assert round(count_params(base) / 1e6, 1) == 26.2 == MODELS[NAME].paper['baseline']['params']
    # 26 weighted layers: the stem conv, 3 stages x 4 blocks x 2 convs per branch, the classifier
    convs = [n for n, m in base.named_modules() if isinstance(m, torch.nn.Conv2d) and '.branch1.' in n]
    assert len(convs) == 24 and base.fc.out_features == 10
    assert [s[0].branch1.conv1.out_channels for s in base.stages] == [96, 192, 384]


def test_se_on_each_branch():
    model = meta()
    ses = [(n, m) for n, m in model.named_modules() if isinstance(m, SqueezeExcite)]
    assert len(ses) == 24 and all(n.endswith(('branch1.se', 'branch2.se')) for n, _ in ses)
    assert MODELS[NAME].paper['cifar10_err'] == dict(base=2.56, se=2.12)


def test_eval_mixes_the_branches_half_and_half_deterministically():
    model = timm.create_model(NAME).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        block = model.stages[1][1]
        y = torch.randn(2, 192, 16, 16)
        expected = 0.5 * (block.branch1(y) + block.branch2(y)) + y
        torch.testing.assert_close(block(y), expected)
        torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)


def test_training_forward_uses_a_random_alpha_per_image():
    shake = ShakeShake().train()
    x1, x2 = torch.ones(8, 4, 3, 3), torch.zeros(8, 4, 3, 3)
    out = shake(x1, x2)  # = alpha per image
    alpha = out[:, 0, 0, 0]
    assert torch.equal(out, alpha.view(8, 1, 1, 1).expand_as(out))  # one coefficient per image
    assert ((alpha > 0) & (alpha < 1)).all() and alpha.std() > 0.05  # U(0, 1), differs between images
    assert not torch.equal(shake(x1, x2), out)  # drawn again at every call
    model = timm.create_model(NAME, se_layer='none').train()
    x = torch.randn(2, 3, 32, 32)
    assert not torch.allclose(model(x), model(x))


def test_training_backward_uses_an_independent_beta():
    shake = ShakeShake().train()
    torch.manual_seed(0)
    x1 = torch.randn(16, 4, 2, 2, requires_grad=True)
    x2 = torch.randn(16, 4, 2, 2, requires_grad=True)
    out = shake(x1, x2)
    alpha = ((out - x2) / (x1 - x2)).detach()[:, 0, 0, 0]  # out = alpha x1 + (1 - alpha) x2
    out.sum().backward()
    beta = x1.grad[:, 0, 0, 0]
    assert torch.equal(x1.grad, beta.view(16, 1, 1, 1).expand_as(x1.grad))  # per image
    torch.testing.assert_close(x2.grad, 1 - x1.grad)
    assert ((beta > 0) & (beta < 1)).all()
    assert (beta - alpha).abs().min() > 1e-6  # not the forward coefficient
    # evaluation: 0.5 / 0.5 both ways
    x1.grad = x2.grad = None
    shake.eval()(x1, x2).sum().backward()
    assert torch.equal(x1.grad, torch.full_like(x1, 0.5)) and torch.equal(x2.grad, torch.full_like(x2, 0.5))


def test_pruning_contract_at_a_small_width():
    """timm's pruning contract (the suite skips it for this network's cost), on a 16-wide twin."""
    from _pruning import check_pruning_contract
    check_pruning_contract(NAME, 32, base_width=16)
