"""Detectors on SE backbones: construction, stage freezing (compared with torchvision's
resnet_fpn_backbone), COCO evaluation (pycocotools), training that raises COCO mAP, checkpoints
and resume, and the ``finetune-detect`` command."""
import json
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torchvision.ops.misc import FrozenBatchNorm2d

pytest.importorskip('pycocotools')

from se_hub.tasks import checkpoints  # noqa: E402
from se_hub.tasks.detection import (  # noqa: E402
    CocoDetection,
    create_backbone,
    create_detector,
    evaluate_detector,
    load_detector,
    train_detector,
)
from se_hub.weights.sources import WeightsUnavailableError  # noqa: E402

# two categories with ids that are not 1..K, to exercise the label <-> category id mapping
CATEGORIES = [{'id': 3, 'name': 'square'}, {'id': 7, 'name': 'disc'}]
# proposal counts for 128-pixel images with a few objects (torchvision's defaults are for 800-pixel COCO)
SMALL_RCNN = dict(rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=150, rpn_pre_nms_top_n_test=150,
                  rpn_post_nms_top_n_test=50, rpn_batch_size_per_image=64, box_batch_size_per_image=64,
                  box_detections_per_img=20)



def make_coco_set(root: Path, n_images: int, seed: int, size: int = 128):
    """Red squares and blue discs (category ids 3 and 7), 1-3 per image, on noisy backgrounds."""
    (root / 'images').mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(n_images):
        noise = rng.normal(0, 25, (size, size, 3)) + rng.integers(60, 180, 3)
        img = Image.fromarray(np.clip(noise, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        placed = []
        for _ in range(int(rng.integers(1, 4))):
            for _try in range(20):
                s = int(rng.integers(size // 6, size // 3 + 1))
                x, y = int(rng.integers(0, size - s)), int(rng.integers(0, size - s))
                if all(x + s <= a or a + b <= x or y + s <= c or c + b <= y for a, c, b in placed):
                    break
            else:
                continue
            placed.append((x, y, s))
            square = bool(rng.integers(0, 2))
            if square:
                colour = (int(rng.integers(200, 256)), int(rng.integers(0, 60)), int(rng.integers(0, 60)))
                draw.rectangle([x, y, x + s - 1, y + s - 1], fill=colour)
            else:
                colour = (int(rng.integers(0, 60)), int(rng.integers(0, 60)), int(rng.integers(200, 256)))
                draw.ellipse([x, y, x + s - 1, y + s - 1], fill=colour)
            r = s / 2  # a polygon for the segmentation (a square, or a 16-gon for the disc)
            angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
            poly = ([x, y, x + s, y, x + s, y + s, x, y + s] if square else
                    [float(v) for a in angles for v in (x + r + r * np.cos(a), y + r + r * np.sin(a))])
            anns.append({'id': len(anns) + 1, 'image_id': i + 1, 'category_id': 3 if square else 7,
                         'bbox': [x, y, s, s], 'area': float(s * s), 'iscrowd': 0, 'segmentation': [poly]})
        name = f'{i:04d}.jpg'
        img.save(root / 'images' / name, quality=90)
        images.append({'id': i + 1, 'file_name': name, 'width': size, 'height': size})
    (root / 'annotations.json').write_text(json.dumps({'images': images, 'annotations': anns,
                                                       'categories': CATEGORIES}))
    return root / 'annotations.json', root / 'images'


# --------------------------------------------------------------------------------------------
# construction


@pytest.mark.parametrize('kind', ['fasterrcnn', 'retinanet', 'maskrcnn'])
def test_create_detector_offline(kind, one_thread):
    torch.manual_seed(0)
    det = create_detector(kind, 'se_resnet18', num_classes=3, pretrained_backbone=False, fpn_channels=32,
                          min_size=96, max_size=96, anchor_sizes=(12, 16, 24, 32, 48))
    assert det.se_hub_config['kind'] == kind and det.se_hub_config['trainable_layers'] == 5
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in det.modules())  # from scratch: ordinary BN
    features = det.backbone(torch.randn(1, 3, 128, 128))
    strides = {name: 128 // f.shape[-1] for name, f in features.items()}
    if kind == 'retinanet':  # P3-P7
        assert strides == {'0': 8, '1': 16, '2': 32, 'p6': 64, 'p7': 128}
    else:  # P2-P6
        assert strides == {'0': 4, '1': 8, '2': 16, '3': 32, 'pool': 64}
    assert all(f.shape[1] == 32 for f in features.values())
    # image mean/std come from the backbone's pretrained cfg
    assert det.transform.image_mean == list(det.backbone.body.pretrained_cfg['mean'])

    images = [torch.rand(3, 96, 80), torch.rand(3, 70, 96)]
    masks = torch.zeros(1, 96, 80, dtype=torch.uint8)
    masks[0, 10:40, 20:60] = 1
    targets = [{'boxes': torch.tensor([[20.0, 10.0, 60.0, 40.0]]), 'labels': torch.tensor([1]), 'masks': masks},
               {'boxes': torch.zeros(0, 4), 'labels': torch.zeros(0, dtype=torch.int64),
                'masks': torch.zeros(0, 70, 96, dtype=torch.uint8)}]
    det.train()
    losses = det(images, targets)
    expected = {'fasterrcnn': {'loss_classifier', 'loss_box_reg', 'loss_objectness', 'loss_rpn_box_reg'},
                'retinanet': {'classification', 'bbox_regression'}}
    expected['maskrcnn'] = expected['fasterrcnn'] | {'loss_mask'}
    assert set(losses) == expected[kind]
    sum(losses.values()).backward()
    assert det.backbone.body.conv1.weight.grad is not None
    det.eval()
    with torch.no_grad():
        out = det(images)
    assert len(out) == 2 and {'boxes', 'scores', 'labels'} <= set(out[0])
    assert out[1]['boxes'].shape[1] == 4 and (out[1]['boxes'][:, 2] <= 96).all()  # back in input coordinates


@pytest.mark.parametrize('backbone', ['se_resnext26_32x4d', 'se_efficientnet_lite0', 'se_bn_inception'])
def test_other_families(backbone, one_thread):
    det = create_detector('fasterrcnn', backbone, num_classes=2, pretrained_backbone=False, fpn_channels=32,
                          min_size=128, max_size=128, **SMALL_RCNN).eval()
    with torch.no_grad():
        out = det([torch.rand(3, 128, 128)])
    assert out[0]['boxes'].shape[1] == 4
    assert det.backbone.body.feature_info.reduction()[-4:] == [4, 8, 16, 32]


def test_pretrained_backbone_offline_error(tmp_path, monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setenv('HF_HUB_CACHE', str(tmp_path / 'hf'))  # nothing cached here
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    with pytest.raises(WeightsUnavailableError, match=r'se_resnet50\.\w+ .*not available locally while '
                                                      'HF_HUB_OFFLINE is set'):
        create_detector('fasterrcnn', 'se_resnet50', num_classes=3, pretrained_backbone=True)


def test_bad_arguments():
    with pytest.raises(ValueError, match='kind must be one of'):
        create_detector('yolo', 'se_resnet18', 3, pretrained_backbone=False)
    with pytest.raises(ValueError, match='counts the background'):
        create_detector('fasterrcnn', 'se_resnet18', 1, pretrained_backbone=False)
    with pytest.raises(ValueError, match='trainable_layers must be in 0..5'):
        create_backbone('se_resnet18', pretrained=False, trainable_layers=6)


def _trainable_children(body):
    return {name for name, child in body.named_children() if any(p.requires_grad for p in child.parameters())}


@pytest.mark.parametrize('trainable_layers', [0, 1, 2, 3, 4, 5])
def test_trainable_layers_as_torchvision(trainable_layers):
    """The stages left trainable are those torchvision's resnet_fpn_backbone leaves trainable."""
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    reference = resnet_fpn_backbone(backbone_name='resnet18', weights=None, trainable_layers=trainable_layers,
                                    norm_layer=torch.nn.BatchNorm2d)
    # pretrained weights are not available offline: the same freezing on a randomly initialised backbone
    warns = pytest.warns(UserWarning, match='without pretrained weights') if trainable_layers < 5 else nullcontext()
    with warns:
        ours = create_backbone('se_resnet18', pretrained=False, trainable_layers=trainable_layers, freeze_bn=False)
    expected = _trainable_children(reference.body)
    assert _trainable_children(ours.body) == expected
    assert all(p.requires_grad for p in ours.fpn.parameters())


def test_frozen_batchnorm_and_frozen_stage_statistics():
    body = create_backbone('se_efficientnet_lite0', pretrained=False, trainable_layers=None, freeze_bn=True)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in body.modules())
    with pytest.warns(UserWarning):
        body = create_backbone('se_efficientnet_lite0', pretrained=False, trainable_layers=2, freeze_bn=False)
    # feature points blocks.0, .1, .2, .4, .6: the last two stages are blocks 3-4 (to stride 16) and 5-6 (to 32)
    assert _trainable_children(body.body) == {'blocks_3', 'blocks_4', 'blocks_5', 'blocks_6'}
    body.train()
    frozen_bn = body.body.blocks_2[0].bn1
    trained_bn = body.body.blocks_6[0].bn1
    assert not frozen_bn.training and trained_bn.training  # frozen stages keep their statistics
    before = frozen_bn.running_mean.clone()
    body(torch.randn(2, 3, 64, 64))
    assert torch.equal(frozen_bn.running_mean, before)


# --------------------------------------------------------------------------------------------
# data and evaluation


def test_coco_dataset_and_flip(tmp_path):
    ann, images = make_coco_set(tmp_path, 3, seed=5, size=64)
    ds = CocoDetection(ann, images, train=True, masks=True)
    assert [c['name'] for c in ds.categories] == ['square', 'disc'] and ds.label_of == {3: 1, 7: 2}
    image, target = ds[0]
    flipped, ftarget = ds[(0, True)]
    assert image.shape == (3, 64, 64) and 0 <= image.min() and image.max() <= 1
    assert torch.equal(flipped, image.flip(-1))
    x1, y1, x2, y2 = target['boxes'][0].tolist()
    assert ftarget['boxes'][0].tolist() == [64 - x2, y1, 64 - x1, y2]
    assert target['masks'].shape == (len(target['boxes']), 64, 64)
    assert torch.equal(ftarget['masks'], target['masks'].flip(-1))
    # labels follow the annotation file's categories (through the contiguous label map)
    coco = json.loads(Path(ann).read_text())
    first = next(a for a in coco['annotations'] if a['image_id'] == 1)
    assert target['labels'][0].item() == ds.label_of[first['category_id']]


class _Oracle(torch.nn.Module):
    """Returns the ground truth of each image as detections, optionally moved right by a fraction
    of each box's width."""

    def __init__(self, dataset, shift=0.0):
        super().__init__()
        self.dataset, self.shift, self.calls = dataset, shift, 0

    def forward(self, images):
        out = []
        for _ in images:
            _, target = self.dataset[self.calls]
            self.calls += 1
            boxes = target['boxes'].clone()
            dx = self.shift * (boxes[:, 2] - boxes[:, 0])
            boxes[:, 0] += dx
            boxes[:, 2] += dx
            out.append({'boxes': boxes, 'labels': target['labels'],
                        'scores': torch.ones(len(target['labels']))})
        return out


class _SwapLabels:
    def __init__(self, dataset):
        self.dataset = dataset

    def __getitem__(self, index):
        image, target = self.dataset[index]
        return image, dict(target, labels=3 - target['labels'])


def test_evaluation_against_ground_truth(tmp_path):
    ann, images = make_coco_set(tmp_path, 6, seed=3, size=96)
    ds = CocoDetection(ann, images)
    perfect = evaluate_detector(_Oracle(ds), ann, images, batch_size=2)
    assert perfect['mAP'] == pytest.approx(1.0) and perfect['mAP50'] == pytest.approx(1.0)
    # every box moved right by 20% of its width: IoU 0.8 / 1.2 = 0.667, a hit at IoU thresholds
    # 0.50, 0.55, 0.60, 0.65 and a miss at the 6 others -> mAP 4 / 10
    shifted = evaluate_detector(_Oracle(ds, shift=0.2), ann, images, batch_size=2)
    assert shifted['mAP50'] == pytest.approx(1.0) and shifted['mAP75'] == 0.0
    assert shifted['mAP'] == pytest.approx(0.4)
    # labels swapped: every detection has the wrong category
    swapped = _Oracle(ds)
    swapped.dataset = _SwapLabels(ds)
    assert evaluate_detector(swapped, ann, images, batch_size=2)['mAP50'] == 0.0


# --------------------------------------------------------------------------------------------
# training


def _boxes_of_the_right_class(detector, dataset, images=4, score=0.5, iou=0.5):
    """How many of the first ``images`` images get a detection (score > ``score``) that overlaps
    one of their ground-truth boxes (IoU > ``iou``) with that box's label."""
    from torchvision.ops import box_iou
    hits = 0
    detector.eval()
    with torch.no_grad():
        for i in range(images):
            image, target = dataset[i]
            out = detector([image])[0]
            keep = out['scores'] > score
            if not keep.any() or not len(target['boxes']):
                continue
            overlap = box_iou(out['boxes'][keep], target['boxes']) > iou
            same = out['labels'][keep][:, None] == target['labels'][None, :]
            hits += bool((overlap & same).any())
    return hits


def test_training_raises_coco_map(tmp_path, one_thread):
    """A Faster R-CNN on an SE-ResNet-18 trained from scratch on 32 synthetic images: COCO mAP@0.5
    on 16 held-out images goes from the untrained model's to well above it; it finds boxes of the
    right category on the images it was trained on; its export reloads with one call."""
    train_json, train_images = make_coco_set(tmp_path / 'train', 32, seed=0)
    val_json, val_images = make_coco_set(tmp_path / 'val', 16, seed=1)
    torch.manual_seed(0)
    det = create_detector('fasterrcnn', 'se_resnet18', num_classes=3, pretrained_backbone=False, fpn_channels=64,
                          min_size=128, max_size=128, anchor_sizes=(16, 24, 32, 48, 64), **SMALL_RCNN)
    before = evaluate_detector(det, val_json, val_images)
    train_set = CocoDetection(train_json, train_images)
    assert _boxes_of_the_right_class(det, train_set) == 0  # untrained: nothing confident and right
    t0 = time.time()
    out = tmp_path / 'out'
    result = train_detector(det, train_json, train_images, val_json, val_images, epochs=6, output=out,
                            batch_size=4, lr=2e-3, optimizer='adamw', warmup_steps=10, eval_every=6, num_workers=0,
                            progress=False)
    seconds = time.time() - t0
    after = result['final']
    print(f"mAP50 {before['mAP50']:.3f} -> {after['mAP50']:.3f}, mAP {before['mAP']:.3f} -> {after['mAP']:.3f}, "
          f'{seconds:.0f} s of training')
    assert after['mAP50'] > 0.5 and after['mAP50'] > before['mAP50'] + 0.4
    assert after['mAP'] > before['mAP'] + 0.15
    assert _boxes_of_the_right_class(det, train_set) >= 3  # boxes of the right category where they are
    history = result['history']
    assert len(history) == 6 and history[-1]['train_loss'] < history[0]['train_loss']
    assert 'mAP' in history[-1] and 'mAP' not in history[0]  # evaluated every 6th epoch
    # the engine's outputs: atomic checkpoints, metrics.jsonl, curves.png
    state = checkpoints.load(out / 'last.pth')
    assert state['epoch'] == 6 and {'model', 'optimizer', 'scheduler', 'rng', 'detector_config'} <= set(state)
    assert [c['id'] for c in state['categories']] == [3, 7]
    rows = [json.loads(line) for line in (out / 'metrics.jsonl').read_text().splitlines()]
    assert rows[-1]['mAP50'] == pytest.approx(after['mAP50']) and len(rows) == 6
    with Image.open(out / 'curves.png') as img:
        assert img.format == 'PNG'
    # the export: one call rebuilds the detector, which scores the same
    reloaded = load_detector(out)
    assert [c['name'] for c in reloaded.categories] == ['square', 'disc']
    assert evaluate_detector(reloaded, val_json, val_images)['mAP50'] == pytest.approx(after['mAP50'], abs=1e-6)
    assert [p.name for p in out.glob('.*')] == ['.se_hub-run.lock']  # no temporary file left behind, only the lock


def _tiny_detector(kind='fasterrcnn'):
    return create_detector(kind, 'se_resnet18', 3, pretrained_backbone=False, fpn_channels=16, min_size=64,
                           max_size=64, anchor_sizes=(8, 12, 16, 24, 32), **(SMALL_RCNN if kind != 'retinanet'
                                                                             else {}))


def test_resume_continues_exactly(tmp_path, one_thread, monkeypatch):
    """A 2-epoch run killed after epoch 1 and resumed ends with the weights of an uninterrupted one
    (same batches, flips, RPN / RoI sampling RNG, optimizer and learning-rate schedule, EMA)."""
    from se_hub.tasks.engine import Engine
    train_json, train_images = make_coco_set(tmp_path / 'train', 6, seed=2, size=64)

    def run(output, resume=False):
        torch.manual_seed(0)
        det = _tiny_detector()
        torch.manual_seed(123)  # the state a resumed run must restore
        train_detector(det, train_json, train_images, train_json, train_images, epochs=2, output=output,
                       batch_size=3, lr=1e-3, optimizer='adamw', warmup_steps=2, resume=resume, ema=True, num_workers=0,
                       ema_decay=0.9, progress=False)
        return checkpoints.load(Path(output) / 'last.pth')

    straight = run(tmp_path / 'a')
    original = Engine._train_epoch

    def killed_in_epoch_2(self, task, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return original(self, task, epoch)

    monkeypatch.setattr(Engine, '_train_epoch', killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / 'b')
    monkeypatch.undo()
    assert checkpoints.load(tmp_path / 'b' / 'last.pth')['epoch'] == 1
    resumed = run(tmp_path / 'b', resume=True)
    for part in ('model', 'ema'):
        for name, a in straight[part].items():
            torch.testing.assert_close(a, resumed[part][name], rtol=1e-4, atol=1e-5, msg=name)
    assert [r['mAP'] for r in straight['history']] == pytest.approx([r['mAP'] for r in resumed['history']])
    with pytest.raises(FileNotFoundError, match='nothing to resume'):
        run(tmp_path / 'c', resume=True)


def test_retinanet_p6p7_gradients_stay_finite_under_cpu_bf16_autocast(one_thread):
    """With 64-pixel images P7 is a 1x1 map made by a strided convolution; oneDNN's bf16 backward for
    that convolution returns NaN weight gradients at random (it reads memory nobody wrote: here freed
    memory is filled with NaN first). The detector's P6 / P7 gradients under CPU bf16 autocast must
    stay finite and match the float32 ones, trial after trial."""
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7
    torch.manual_seed(0)
    block = _tiny_detector('retinanet').backbone.fpn.extra_blocks
    assert isinstance(block, LastLevelP6P7)
    p5 = torch.randn(2, 16, 2, 2, generator=torch.Generator().manual_seed(1))

    def gradients(autocast: bool):
        block.zero_grad()
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
            levels, names = block([p5], [p5], ['p5'])
        assert names == ['p5', 'p6', 'p7'] and [t.shape[-1] for t in levels] == [2, 1, 1]
        sum(t.float().square().sum() for t in levels[1:]).backward()
        return {k: v.grad.clone() for k, v in block.named_parameters()}

    expected = gradients(autocast=False)
    for trial in range(40):
        for n in (2304, 4608, 1024 + 64 * trial):  # freed blocks of the sizes oneDNN asks for, full of NaN
            torch.full((n,), float('nan'))
        got = gradients(autocast=True)
        for k, g in got.items():
            assert torch.isfinite(g).all(), f'trial {trial}: NaN in the gradient of {k}'
            torch.testing.assert_close(g, expected[k], rtol=2e-2, atol=1e-3, msg=f'trial {trial}: {k}')


def test_amp_bf16_and_ema_on_cpu(tmp_path, one_thread):
    """Detection under the engine's AMP (bf16 autocast on the CPU) with an EMA: the EMA weights
    are what is exported, and metrics.jsonl has the EMA's mAP too."""
    train_json, train_images = make_coco_set(tmp_path / 'train', 4, seed=8, size=64)
    torch.manual_seed(0)  # before the detector is built: its initialisation must not depend on earlier tests
    detector = _tiny_detector('retinanet')
    result = train_detector(detector, train_json, train_images, train_json, train_images,
                            epochs=1, output=tmp_path / 'out', batch_size=2, lr=1e-3, optimizer='adamw',
                            warmup_steps=1, amp='bf16', ema=True, ema_decay=0.5, progress=False, num_workers=0)
    state = checkpoints.load(tmp_path / 'out' / 'last.pth')
    assert state['config']['amp'] == 'bf16' and state['ema'] is not None
    assert any(not torch.equal(state['ema'][k], state['model'][k]) for k in state['model'])
    assert 'ema_mAP' in result['history'][0] and 'mAP' in result['history'][0]
    exported = load_detector(tmp_path / 'out').state_dict()
    for k, v in state['ema'].items():
        assert torch.equal(exported[k], v), k


def test_wrong_number_of_classes(tmp_path):
    train_json, train_images = make_coco_set(tmp_path, 2, seed=4, size=64)
    det = create_detector('retinanet', 'se_resnet18', 2, pretrained_backbone=False, min_size=64, max_size=64)
    with pytest.raises(ValueError, match='num_classes=3'):
        train_detector(det, train_json, train_images, epochs=1, output=tmp_path / 'out', progress=False)


def test_cli_finetune_detect(tmp_path, capsys, one_thread):
    from se_hub_cli import main
    train_json, train_images = make_coco_set(tmp_path / 'train', 4, seed=6, size=64)
    args = ['finetune-detect', '--backbone', 'se_resnet18', '--kind', 'retinanet', '--no-pretrained',
            '--train-json', str(train_json), '--train-images', str(train_images), '--val-json', str(train_json),
            '--val-images', str(train_images), '--output', str(tmp_path / 'out'), '--batch-size', '2',
            '--min-size', '64', '--max-size', '64', '--fpn-channels', '16', '--anchor-sizes', '8', '12', '16', '24',
            '32', '--workers', '0', '--optimizer', 'adamw', '--lr', '1e-3', '--warmup-iters', '2']
    assert main(args + ['--epochs', '1']) == 0
    assert checkpoints.load(tmp_path / 'out' / 'last.pth')['epoch'] == 1
    assert main(args + ['--epochs', '2', '--resume']) == 0
    out = capsys.readouterr().out
    assert 'resuming' in out and 'epoch 2/2' in out and '"mAP50"' in out
    assert checkpoints.load(tmp_path / 'out' / 'last.pth')['epoch'] == 2
    assert len((tmp_path / 'out' / 'metrics.jsonl').read_text().splitlines()) == 2
