"""Places-365 reader on miniature trees in the real layouts (torchvision/devkit file lists, class folders)."""
import hashlib
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageStat

from se_hub.tasks.places365 import (
    Places365Dataset,
    Places365Error,
    detect_places365,
    file_md5,
    read_categories,
    scene_name,
)

# real category lines of categories_places365.txt (a handful of the 365)
CATEGORIES = ['/a/airfield', '/a/apartment_building/outdoor', '/b/bedroom', '/c/coast', '/k/kitchen']
COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200)]


def _jpeg(path: Path, colour) -> None:
    """A 24x20 image of ``colour`` with pixel noise (BatchNorm needs some variation to learn from)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(zlib.crc32(f'{path.parent.name}/{path.name}'.encode())).normal(0, 30, (20, 24, 3))
    Image.fromarray(np.clip(np.asarray(colour) + noise, 0, 255).astype(np.uint8)).save(path, format='JPEG')


def _write_categories(root: Path, categories=CATEGORIES) -> None:
    (root / 'categories_places365.txt').write_text(''.join(f'{c} {i}\n' for i, c in enumerate(categories)))


def make_devkit_tree(root: Path, per_class: int = 2, small: bool = True) -> Path:
    """The torchvision layout: categories file, the two list files, data_256_standard/ and val_256/."""
    size = '256' if small else 'large'
    root.mkdir(parents=True, exist_ok=True)
    _write_categories(root)
    train_lines, val_lines, n_val = [], [], 0
    for label, cat in enumerate(CATEGORIES):
        for k in range(per_class):
            rel = f'{cat}/{k + 1:08d}.jpg'  # '/a/airfield/00000001.jpg'
            _jpeg(root / f'data_{size}_standard' / rel.lstrip('/'), COLOURS[label])
            train_lines.append(f'{rel} {label}\n')
            n_val += 1
            name = f'Places365_val_{n_val:08d}.jpg'
            _jpeg(root / f'val_{size}' / name, COLOURS[label])
            val_lines.append(f'{name} {label}\n')
    (root / 'places365_train_standard.txt').write_text(''.join(train_lines))
    (root / 'places365_val.txt').write_text(''.join(val_lines))
    return root


def test_scene_names():
    assert scene_name('/a/airfield') == 'airfield'
    assert scene_name('/a/apartment_building/outdoor') == 'apartment_building/outdoor'
    assert scene_name('/b/bedroom') == 'bedroom'


def test_devkit_layout(tmp_path):
    root = make_devkit_tree(tmp_path)
    train, val, classes = detect_places365(root, train_transform=lambda im: im.size)
    assert classes == ['airfield', 'apartment_building/outdoor', 'bedroom', 'coast', 'kitchen']
    assert len(train) == len(val) == 10
    assert train.targets == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4] == val.targets
    assert train.samples[2][0] == str(root / 'data_256_standard' / 'a' / 'apartment_building' / 'outdoor'
                                      / '00000001.jpg')
    assert train[4] == ((24, 20), 2)  # transform applied
    image, label = val[9]
    assert isinstance(image, Image.Image) and image.mode == 'RGB' and label == 4
    # the pixels are those of the listed file (noise and JPEG: the mean is close to the colour written)
    r, g, b = ImageStat.Stat(image).mean
    assert abs(r - 30) < 8 and abs(g - 200) < 8 and abs(b - 200) < 8


def test_devkit_layout_large_images_and_official_archive_name(tmp_path):
    root = make_devkit_tree(tmp_path, small=False)
    (root / 'data_large_standard').rename(root / 'data_large')  # as the official archive extracts
    train, val, _ = detect_places365(root)
    assert '/data_large/' in train.samples[0][0] and '/val_large/' in val.samples[0][0]
    assert train[0][1] == 0


def test_challenge_list_is_read_when_it_is_the_only_train_list(tmp_path):
    root = make_devkit_tree(tmp_path)
    (root / 'places365_train_standard.txt').rename(root / 'places365_train_challenge.txt')
    (root / 'data_256_standard').rename(root / 'data_256_challenge')
    train, val, _ = detect_places365(root)
    assert len(train) == 10 and '/data_256_challenge/' in train.samples[0][0]
    (root / 'places365_train_standard.txt').write_text('')  # the standard list wins when both are there
    with pytest.raises(Places365Error, match='train-standard images not found'):
        detect_places365(root)


def test_md5_checked_only_on_request(tmp_path):
    root = make_devkit_tree(tmp_path)
    assert detect_places365(root, verify_md5=False) is not None
    with pytest.raises(Places365Error, match='categories_places365.txt is not the official.*06c963b8'):
        detect_places365(root, verify_md5=True)
    listed = root / 'places365_val.txt'
    assert file_md5(listed) == hashlib.md5(listed.read_bytes()).hexdigest()


def test_missing_and_unreadable_images_are_named(tmp_path):
    root = make_devkit_tree(tmp_path)
    train, val, _ = detect_places365(root)
    missing = Path(val.samples[3][0])
    missing.unlink()
    with pytest.raises(Places365Error, match=f'missing: {missing}'):
        val[3]
    with pytest.raises(Places365Error, match=f'missing: {missing}'):
        detect_places365(root, check_files=True)
    broken = Path(train.samples[1][0])
    broken.write_bytes(b'not a jpeg at all')
    with pytest.raises(Places365Error, match=f'cannot be read: {broken}'):
        train[1]


def test_category_file_errors(tmp_path):
    root = make_devkit_tree(tmp_path)
    with pytest.raises(Places365Error, match='has 5 category lines, expected 365'):
        detect_places365(root, num_classes=365)
    # a line lost: 4 lines numbered 0..4 -> index 4 is out of range for a 4-line file
    lines = (root / 'categories_places365.txt').read_text().splitlines()
    (root / 'categories_places365.txt').write_text('\n'.join(lines[:2] + lines[3:]) + '\n')
    with pytest.raises(Places365Error, match='line 4: index 4 out of range for a file of 4 category lines'):
        detect_places365(root)
    (root / 'categories_places365.txt').write_text('/a/airfield 0\n/b/bedroom 0\n')
    with pytest.raises(Places365Error, match="line 2: index 0 already given to '/a/airfield'"):
        read_categories(root / 'categories_places365.txt')
    (root / 'categories_places365.txt').write_text('/a/airfield\n')
    with pytest.raises(Places365Error, match="line 1: expected 'CATEGORY INDEX'"):
        read_categories(root / 'categories_places365.txt')


def test_label_out_of_range(tmp_path):
    root = make_devkit_tree(tmp_path)
    with open(root / 'places365_val.txt', 'a') as f:
        f.write('Places365_val_00000011.jpg 5\n')
    with pytest.raises(Places365Error, match=r'places365_val.txt line 11: label 5 out of range.*has 5 categories'):
        detect_places365(root)
    with pytest.raises(Places365Error, match='label 7 out of range for 5 classes'):
        Places365Dataset([('x.jpg', 7)], ['a', 'b', 'c', 'd', 'e'])


def test_incomplete_devkit_tree(tmp_path):
    root = make_devkit_tree(tmp_path)
    (root / 'places365_val.txt').unlink()
    with pytest.raises(Places365Error, match='file is missing: .*places365_val.txt'):
        detect_places365(root)
    root = make_devkit_tree(tmp_path / 'other')
    (root / 'val_256').rename(root / 'elsewhere')
    with pytest.raises(Places365Error, match='val images not found.*val_256'):
        detect_places365(root)


def make_class_folder_tree(root: Path, categories=CATEGORIES, dash: bool = False) -> Path:
    for split, n in (('train', 3), ('val', 1)):
        for label, cat in enumerate(categories):
            folder = scene_name(cat).replace('/', '-') if dash else scene_name(cat)
            for k in range(n):
                _jpeg(root / split / folder / f'{k}.jpg', COLOURS[label % len(COLOURS)])
    return root


def test_class_folder_layout_with_categories_file(tmp_path):
    root = make_class_folder_tree(tmp_path, dash=True)
    _write_categories(root, list(reversed(CATEGORIES)))  # the file fixes the label order, not the folder order
    train, val, classes = detect_places365(root)
    assert classes == ['kitchen', 'coast', 'bedroom', 'apartment_building/outdoor', 'airfield']
    assert len(train) == 15 and len(val) == 5
    by_folder = {Path(p).parent.name: label for p, label in train.samples}
    assert by_folder == {'kitchen': 0, 'coast': 1, 'bedroom': 2, 'apartment_building-outdoor': 3, 'airfield': 4}
    image, label = val[0]
    assert isinstance(image, Image.Image) and classes[label] == scene_name(Path(val.samples[0][0]).parent.name)


def test_class_folder_layout_nested_scene_folders(tmp_path):
    root = make_class_folder_tree(tmp_path)
    _write_categories(root)
    train, val, classes = detect_places365(root)
    assert classes[1] == 'apartment_building/outdoor'
    assert sorted(set(train.targets)) == [0, 1, 2, 3, 4]
    assert [label for p, label in val.samples if '/apartment_building/outdoor/' in p] == [1]


def test_class_folder_unknown_scene_is_an_error(tmp_path):
    root = make_class_folder_tree(tmp_path)
    _write_categories(root)
    _jpeg(root / 'val' / 'volcano' / '0.jpg', (0, 0, 0))
    with pytest.raises(Places365Error, match="scene folder 'volcano' is not one of the 5 categories"):
        detect_places365(root)


def test_not_a_places_tree(tmp_path):
    assert detect_places365(tmp_path / 'nowhere') is None
    assert detect_places365(tmp_path) is None
    # an ordinary class-folder data set (3 classes, no categories file) is not Places-365
    plain = make_class_folder_tree(tmp_path / 'plain', ['/c/cat', '/d/dog', '/f/fox'])
    assert detect_places365(plain) is None


def test_a_365_class_folder_tree_is_not_taken_for_places365(tmp_path):
    """365 class folders without categories_places365.txt: an ordinary data set whose class names
    stay as on disk (dashes and all), not scene names."""
    from se_hub.tasks.data import find_splits
    names = [f'kind-{i:03d}' for i in range(365)]
    for i, name in enumerate(names):
        for split in ('train', 'val'):
            _jpeg(tmp_path / split / name / '0.jpg', (i % 256, 0, 0))
    assert detect_places365(tmp_path) is None
    splits = find_splits(tmp_path, check_images=False)
    assert splits.layout == 'folders' and splits.classes == names



def test_paper_recipe_on_a_miniature_devkit_tree_then_predict_prints_scene_names(tmp_path, capsys, one_thread):
    """README's Places-365 recipe (plain momentum SGD, step schedule) through `se-hub finetune` on
    the real devkit layout; the exported model speaks in scene names."""
    import json

    from se_hub.tasks import checkpoints
    from se_hub_cli import main
    root = make_devkit_tree(tmp_path / 'places', per_class=6)
    out = tmp_path / 'run'
    lr = 0.02
    assert main(['finetune', '--model', 'se_resnet20_cifar', '--no-pretrained', '--data', str(root),
                 '--epochs', '4', '--output', str(out), '--batch-size', '4', '--img-size', '32',
                 '--opt', 'momentum', '--lr', str(lr), '--weight-decay', '1e-4', '--sched', 'step',
                 '--decay-epochs', '2', '--decay-rate', '0.1', '--warmup-epochs', '0', '--label-smoothing', '0',
                 '--workers', '0', '--no-progress']) == 0
    assert 'places365 layout: 30 train / 30 val images, 5 classes' in capsys.readouterr().out
    rows = [json.loads(line) for line in (out / 'metrics.jsonl').read_text().splitlines()]
    # the LR each epoch's last step (8 steps an epoch) trained with: x0.1 every 2 epochs
    assert [r['lr'] for r in rows] == pytest.approx([lr, lr, lr * 0.1, lr * 0.1])
    optimizer = checkpoints.load(out / 'last.pth')['optimizer']['param_groups'][0]
    assert optimizer['momentum'] == 0.9 and optimizer['nesterov'] is False  # the paper's plain momentum SGD
    assert max(r['top1'] for r in rows) >= 80.0  # one colour per scene: learnt (chance is 20%)

    config = json.loads((out / 'config.json').read_text())
    scenes = ['airfield', 'apartment_building/outdoor', 'bedroom', 'coast', 'kitchen']
    assert config['label_names'] == scenes and config['num_classes'] == 5
    # predict on the whole val split: scene names, and the best epoch's top-1 again
    listed = [line.split() for line in (root / 'places365_val.txt').read_text().splitlines()]
    images = [str(root / 'val_256' / name) for name, _ in listed]
    assert main(['predict', *images, '--model', f'local-dir:{out}', '--json', '--topk', '5']) == 0
    results = json.loads(capsys.readouterr().out)
    assert all(sorted(p['label'] for p in r['predictions']) == scenes for r in results)
    hits = sum(r['predictions'][0]['label'] == scenes[int(label)] for r, (_, label) in zip(results, listed))
    assert 100 * hits / len(listed) == pytest.approx(max(r['top1'] for r in rows))
