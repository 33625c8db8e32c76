"""The paper's SE integration designs (Hu et al., Fig. 5 / Table 14; shared/reference/senet-article.txt,
"SE block integration designs") written here as plain PyTorch functions of one ResNet-50 bottleneck's own
weights, and compared with the block of se_resnet50 / _pre / _post / _identity / _3x3 in float64.

Nothing here runs an se_hub module's forward: each equation reads the convolution and BatchNorm tensors and
computes the block with ``torch.nn.functional`` only, so a placement wired to the wrong tensor (SE on the
shortcut instead of the input, before instead of after the addition, ...) fails here even if se_hub's other
code paths agree with it.
"""
import pytest
import timm
import torch
import torch.nn.functional as F

import se_hub  # noqa: F401  (registers the models)
from _helpers import randomize_batchnorm


def conv(x, m):
    return F.conv2d(x, m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups)


def bn(x, m):
    """BatchNorm in inference: (x - running mean) / sqrt(running var + eps) * weight + bias."""
    shape = (1, -1, 1, 1)
    return ((x - m.running_mean.view(shape)) / torch.sqrt(m.running_var.view(shape) + m.eps)
            * m.weight.view(shape) + m.bias.view(shape))


def se(x, unit):
    """The SE unit of the paper (Eq. 2-3): z = global average of x, s = sigmoid(W2 relu(W1 z)), x scaled by s."""
    z = x.mean(dim=(2, 3))
    w1, w2 = unit.fc1.weight.flatten(1), unit.fc2.weight.flatten(1)
    s = torch.sigmoid(F.linear(F.relu(F.linear(z, w1, unit.fc1.bias)), w2, unit.fc2.bias))
    return x * s[:, :, None, None]


def shortcut(x, block):
    if block.downsample is None:
        return x
    proj, norm = block.downsample
    return bn(conv(x, proj), norm)


def residual(x, block, se_after_3x3=False):
    """1x1 -> BN -> ReLU -> 3x3 -> BN -> ReLU [-> SE (SE-3x3)] -> 1x1 -> BN."""
    u = F.relu(bn(conv(x, block.conv1), block.bn1))
    u = F.relu(bn(conv(u, block.conv2), block.bn2))
    if se_after_3x3:
        u = se(u, block.se)
    return bn(conv(u, block.conv3), block.bn3)


# the paper's five designs of one residual unit with input x (its Fig. 5)
DESIGNS = {
    # standard: SE on the residual branch, before the summation with the identity
    'standard': lambda x, b: F.relu(shortcut(x, b) + se(residual(x, b), b.se)),
    # SE-PRE: SE moved before the residual unit (the branch reads the scaled input, the identity the input)
    'pre': lambda x, b: F.relu(shortcut(x, b) + residual(se(x, b.se), b)),
    # SE-POST: SE after the summation with the identity branch (after the ReLU)
    'post': lambda x, b: se(F.relu(shortcut(x, b) + residual(x, b)), b.se),
    # SE-Identity: SE on the identity connection, in parallel to the residual unit
    'identity': lambda x, b: F.relu(se(shortcut(x, b), b.se) + residual(x, b)),
    # SE-3x3: SE after the 3x3 convolution, inside the branch
    '3x3': lambda x, b: F.relu(shortcut(x, b) + residual(x, b, se_after_3x3=True)),
}
MODEL_OF = {'standard': 'se_resnet50', 'pre': 'se_resnet50_pre', 'post': 'se_resnet50_post',
            'identity': 'se_resnet50_identity', '3x3': 'se_resnet50_3x3'}


@pytest.mark.parametrize('design', list(DESIGNS))
# a strided block with a projection shortcut; a block with the identity shortcut
@pytest.mark.parametrize('stage,index', [(2, 0), (3, 1)])
def test_placement_follows_the_papers_block_equation(design, stage, index):
    torch.manual_seed(0)
    model = timm.create_model(MODEL_OF[design], layers=(1, 2, 2, 1)).double()
    randomize_batchnorm(model)  # timm zero-initialises the last BN: the residual branch would be dead
    block = getattr(model, f'layer{stage}')[index]
    assert (block.downsample is not None) == (index == 0)
    with torch.no_grad():  # non-zero SE biases: a bias left out of the reference would show
        for p in block.se.parameters():
            p.normal_(0, 0.1)
    channels = block.conv1.in_channels
    x = torch.randn(2, channels, 14, 14, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = DESIGNS[design](x, block)
        got = block.eval()(x.clone())
        # every other design gives another function of the same weights: the comparison can tell them apart
        others = {d: f(x, block) for d, f in DESIGNS.items() if d != design
                  and (d != '3x3' or block.se.channels == block.conv2.out_channels)
                  and (d != 'pre' or block.se.channels == channels)
                  and (d in ('3x3', 'pre') or block.se.channels == block.conv3.out_channels)}
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    for d, y in others.items():
        assert y.shape != got.shape or (y - got).abs().max() > 1e-3, f'{design} also matches {d}'
