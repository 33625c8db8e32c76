"""16-bit and float greyscale images (PIL modes I;16, I, F: microscopy, medical imaging) reach every model as
the photo they show, not clipped to white: predict, fine-tuning data (and so excitations), INT8 calibration,
Places-365 and detection data all read images through se_hub.images. The files are real PNG / TIFF files made
from scikit-image's camera photo."""
import json

import numpy as np
import pytest
import skimage.data
from PIL import Image

import se_hub_cli
from se_hub_cli.commands.predict import load_image

CAMERA = skimage.data.camera()  # 512x512 uint8, 0..255


@pytest.fixture(scope='module')
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp('photos')
    paths = dict(eight=root / 'camera8.png', sixteen=root / 'camera16.png', twelve=root / 'camera12.png',
                 float=root / 'camera_float.tiff')
    Image.fromarray(CAMERA).save(paths['eight'])
    Image.fromarray(CAMERA.astype(np.uint16) * 257).save(paths['sixteen'])  # the full 16-bit range
    Image.fromarray(CAMERA.astype(np.uint16) * 16).save(paths['twelve'])  # a 12-bit sensor in a 16-bit file
    Image.fromarray(CAMERA.astype(np.float32) / 255).save(paths['float'])
    with Image.open(paths['sixteen']) as img:
        assert img.mode in ('I;16', 'I') and np.asarray(img).max() == 65535, 'a real 16-bit file'
    with Image.open(paths['float']) as img:
        assert img.mode == 'F'
    return paths


def _pixels(img):
    assert img.mode == 'RGB'
    return np.asarray(img).astype(int)


def test_every_image_path_reads_16_bit_and_float_greyscale_by_its_range(photos, tmp_path):
    from se_hub.deploy.quantize import load_images
    from se_hub.tasks.data import read_image
    from se_hub.tasks.places365 import _load_rgb
    readers = {'predict': load_image, 'fine-tuning data': read_image, 'Places-365': _load_rgb,
               'INT8 calibration': lambda p: load_images([p])[0]}
    reference = np.repeat(CAMERA[..., None], 3, axis=-1).astype(int)
    for where, read in readers.items():
        assert np.array_equal(_pixels(read(str(photos['eight']))), reference), where
        assert np.array_equal(_pixels(read(str(photos['sixteen']))), reference), where
        assert np.array_equal(_pixels(read(str(photos['float']))), reference), where
        # 0..4080 of 0..4095: 0.4% darker at most, never clipped
        assert np.abs(_pixels(read(str(photos['twelve']))) - reference).max() <= 1, where


def test_wide_greyscale_outside_the_usual_ranges():
    from se_hub.images import to_rgb
    # signed 32-bit (CT-like values): the image's own min..max
    ct = Image.fromarray(CAMERA.astype(np.int32) * 8 - 1024)
    assert ct.mode == 'I'
    assert np.array_equal(np.asarray(to_rgb(ct))[..., 0], CAMERA)
    flat = Image.fromarray(np.full((4, 4), 7.5, dtype=np.float32))
    assert np.asarray(to_rgb(flat)).max() == 0  # no range: black, not an error


def test_predict_on_a_16_bit_photo_gives_the_8_bit_answer(photos, capsys):
    """The issue's case: the camera photo as a 16-bit PNG was '0.81% nematode' (clipped to white) where the 8-bit
    photo is a tripod; with real Lite0 weights both now give the same top-5."""
    argv = ['predict', '--model', 'se_tf_efficientnet_lite0.tf_in1k', '--json']
    assert se_hub_cli.main([*argv, str(photos['eight']), str(photos['sixteen']), str(photos['twelve'])]) == 0
    eight, sixteen, twelve = json.loads(capsys.readouterr().out)
    assert eight['predictions'][0]['label'] == sixteen['predictions'][0]['label'] == twelve['predictions'][0]['label']
    assert sixteen['predictions'] == eight['predictions']
