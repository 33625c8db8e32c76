"""Folders se_hub publishes load in Hugging Face transformers (its timm wrapper): the ``as_timm`` folder of the
real Lite0 weights in a process that never imports se_hub, the se_hub-format folder after ``import se_hub``;
both give `se-hub predict`'s top-5 on real photos."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm

from se_hub.hub import save_pretrained

REPO = Path(__file__).resolve().parents[1]
PHOTOS = ('chelsea', 'coffee')
MODEL = 'se_tf_efficientnet_lite0.tf_in1k'

CLASSIFY = '''
import json, sys
{prelude}
import skimage.data
from PIL import Image
from transformers import AutoModelForImageClassification, pipeline
folder = sys.argv[1]
model = AutoModelForImageClassification.from_pretrained(folder)
classify = pipeline('image-classification', model=folder)
out = [[(p['label'], p['score']) for p in classify(Image.fromarray(getattr(skimage.data, name)()), top_k=5)]
       for name in {photos!r}]
json.dump(dict(model=type(model).__name__, top5=out,
               se_hub_imported=[m for m in sys.modules if m.startswith('se_hub')]), sys.stdout)
'''


@pytest.fixture(scope='module')
def lite0_folders(tmp_path_factory):
    pytest.importorskip('transformers', minversion='4.53', reason='transformers>=4.53 (the interop extra) needs '
                        'huggingface-hub>=0.30: not on the floor run')
    root = tmp_path_factory.mktemp('lite0')
    model = timm.create_model(MODEL, pretrained=True)
    save_pretrained(model, root / 'timm', as_timm=True)
    save_pretrained(model, root / 'se_hub')
    return root


@pytest.fixture(scope='module')
def predicted():
    """se-hub predict's top-5 for the photos (label, probability to 4 places)."""
    run = subprocess.run([sys.executable, '-m', 'se_hub_cli', 'predict', '--model', MODEL, '--json',
                          *[f'skimage:{p}' for p in PHOTOS]], capture_output=True, text=True, cwd=REPO,
                         env=dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE='1'), timeout=300)
    assert run.returncode == 0, run.stderr
    return [[(p['label'], p['probability']) for p in r['predictions']] for r in json.loads(run.stdout)]


def _classify(folder: Path, with_se_hub: bool, cwd: Path):
    prelude = 'import se_hub' if with_se_hub else ''
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    if with_se_hub:
        env['PYTHONPATH'] = str(REPO)
    env.update(HF_HUB_OFFLINE='1', HF_HUB_DISABLE_TELEMETRY='1')
    run = subprocess.run([sys.executable, '-c', CLASSIFY.format(prelude=prelude, photos=PHOTOS), str(folder)],
                         capture_output=True, text=True, cwd=cwd, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout)


@pytest.mark.parametrize('fmt', ['timm', 'se_hub'])
def test_published_folder_loads_in_transformers(fmt, lite0_folders, predicted, tmp_path):
    config = json.loads((lite0_folders / fmt / 'config.json').read_text())
    assert 'num_classes' not in config.get('model_args', {})  # transformers passes its own
    out = _classify(lite0_folders / fmt, with_se_hub=fmt == 'se_hub', cwd=tmp_path)
    assert out['model'] == 'TimmWrapperForImageClassification'
    if fmt == 'timm':
        assert out['se_hub_imported'] == [], 'the timm-format folder must load without se_hub'
    for theirs, ours in zip(out['top5'], predicted):
        assert [label for label, _ in theirs] == [label for label, _ in ours]
        for (_, p), (_, q) in zip(theirs, ours):
            assert abs(p - q) <= 1e-4
