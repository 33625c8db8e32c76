"""Data sets for classification fine-tuning, found by the layout of a directory.

Layouts (tried in this order):

- **Places-365** — when :func:`se_hub.tasks.places365.detect_places365` recognises the
  directory (either of its layouts).
- **class folders** — ``DIR/train/<class>/<image>`` and ``DIR/val/<class>/<image>`` (the
  torchvision ``ImageFolder`` layout). Classes are the sub-folders of ``train/``, sorted by
  name; every class folder of ``val/`` must also exist in ``train/``.
- **CSV** — ``DIR/train.csv`` and ``DIR/val.csv``, each a list of ``path,label`` rows (an
  optional first row ``path,label`` is a header). Paths are relative to ``DIR`` (absolute paths
  are taken as they are); labels are class names (any text). Classes are the sorted labels of
  ``train.csv``; every label in ``val.csv`` must also be in ``train.csv``.

Anything else — no such layout, an empty split, a missing or unreadable image — is a
:class:`DataError` that names the directory or the file.
"""
import csv
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple

from torch.utils.data import Dataset

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp', '.gif')


class DataError(ValueError):
    """A data directory that is not a supported layout, is empty, or holds an unreadable image."""


def read_image(path: str):
    """The RGB PIL image at ``path``; a :class:`DataError` naming the file when it cannot be read."""
    from ..images import read_rgb
    try:
        return read_rgb(path)
    except FileNotFoundError:
        raise DataError(f'image not found: {path}') from None
    except (OSError, ValueError, SyntaxError) as e:  # PIL raises all three for damaged files
        raise DataError(f'cannot read image {path}: {e}') from None


def check_image(path: str) -> None:
    """A cheap check (file there, header readable) done for every image before training starts."""
    from PIL import Image
    try:
        with Image.open(path) as img:
            img.verify()
    except FileNotFoundError:
        raise DataError(f'image not found: {path}') from None
    except Exception as e:  # noqa: BLE001 - PIL's verify raises many types for damaged files
        raise DataError(f'cannot read image {path}: {e}') from None


class ImageListDataset(Dataset):
    """``(path, class index)`` samples read with PIL and passed through ``transform``."""

    def __init__(self, samples: Sequence[Tuple[str, int]], classes: Sequence[str],
                 transform: Optional[Callable] = None):
        self.samples = list(samples)
        self.classes = list(classes)
        self.targets = [t for _, t in self.samples]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        img = read_image(path)
        return (self.transform(img) if self.transform is not None else img), target


@dataclass
class DataSplits:
    """The train and val data sets of a directory; their ``transform`` is set by the caller."""
    train: Any
    val: Any
    classes: List[str]
    layout: str  # 'folders', 'csv' or the name a plug-in reader gives
    root: Path


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith('.')


def _folder_split(split_dir: Path, classes: Optional[List[str]]) -> Tuple[List[Tuple[str, int]], List[str]]:
    found = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith('.'))
    if classes is None:
        classes = found
    else:
        extra = [c for c in found if c not in classes]
        if extra:
            raise DataError(f"{split_dir} has class folder(s) {', '.join(extra)} that train/ does not have")
    index = {c: i for i, c in enumerate(classes)}
    samples = []
    for c in found:
        for dirpath, dirnames, filenames in os.walk(split_dir / c, followlinks=True):
            dirnames.sort()
            samples += [(os.path.join(dirpath, f), index[c]) for f in sorted(filenames) if _is_image(f)]
    return samples, classes


def _read_csv(path: Path, root: Path) -> List[Tuple[str, str]]:
    rows = []
    try:
        with open(path, newline='', encoding='utf-8') as f:
            for line_no, row in enumerate(csv.reader(f), 1):
                if not row or all(not cell.strip() for cell in row):
                    continue
                if line_no == 1 and [c.strip().lower() for c in row[:2]] == ['path', 'label']:
                    continue
                if len(row) < 2 or not row[0].strip() or not row[1].strip():
                    raise DataError(f'{path}, line {line_no}: expected "path,label", got {",".join(row)!r}')
                rows.append((str(root / row[0].strip()), row[1].strip()))
    except UnicodeDecodeError as e:
        raise DataError(f'{path} is not a UTF-8 text file: {e}') from None
    return rows


def _csv_splits(root: Path) -> Tuple[List, List, List[str]]:
    train_rows = _read_csv(root / 'train.csv', root)
    val_rows = _read_csv(root / 'val.csv', root)
    classes = sorted({label for _, label in train_rows})
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({label for _, label in val_rows} - set(classes))
    if unknown:
        raise DataError(f"{root / 'val.csv'} has label(s) {', '.join(unknown[:5])} that train.csv does not have")
    return ([(p, index[c]) for p, c in train_rows], [(p, index[c]) for p, c in val_rows], classes)


def _try_places365(root: Path, check_files: bool) -> Optional[DataSplits]:
    from . import places365
    found = places365.detect_places365(root, check_files=check_files)
    if found is None:
        return None
    train, val, classes = found
    return DataSplits(train, val, list(classes), 'places365', root)


def find_splits(root, check_images: bool = True) -> DataSplits:
    """The train / val data sets of ``root`` by its layout (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f'data directory not found: {root}')
    splits = _try_places365(root, check_files=check_images)  # listed files exist (headers: when read)
    if splits is not None:
        return splits
    if (root / 'train').is_dir() and (root / 'val').is_dir():
        train, classes = _folder_split(root / 'train', None)
        val, _ = _folder_split(root / 'val', classes)
        layout = 'folders'
        where = (root / 'train', root / 'val')
    elif (root / 'train.csv').is_file() and (root / 'val.csv').is_file():
        train, val, classes = _csv_splits(root)
        layout = 'csv'
        where = (root / 'train.csv', root / 'val.csv')
    elif (root / 'train').is_dir() or (root / 'val').is_dir():
        have, missing = ('train', 'val') if (root / 'train').is_dir() else ('val', 'train')
        raise DataError(f'{root} has {have}/ but no {missing}/ folder: add {root / missing}/ with the same class '
                        f'sub-folders')
    elif (root / 'train.csv').is_file() or (root / 'val.csv').is_file():
        have, missing = ('train', 'val') if (root / 'train.csv').is_file() else ('val', 'train')
        raise DataError(f'{root} has {have}.csv but no {missing}.csv: add {root / missing}.csv ("path,label" rows)')
    else:
        raise DataError(
            f'{root} is not a data directory se_hub can read: expected train/ and val/ folders with one '
            'sub-folder of images per class, or train.csv and val.csv with "path,label" rows '
            '(paths relative to the directory)')
    if not classes:
        raise DataError(f'{where[0]} has no classes')
    for samples, place in zip((train, val), where):
        if not samples:
            raise DataError(f'{place} has no images ({", ".join(IMAGE_EXTENSIONS[:4])}, ...)')
    if check_images:
        for path, _ in train + val:
            check_image(path)
    return DataSplits(ImageListDataset(train, classes), ImageListDataset(val, classes), classes, layout, root)


@contextmanager
def worker_errors_named():
    """Re-raises a DataLoader worker's failure on an image (a missing or damaged file) as the
    :class:`DataError` that names it, instead of the loader's wrapped traceback."""
    try:
        yield
    except Exception as e:
        message = worker_error_message(e)
        if message:
            raise DataError(message) from None
        raise


def worker_error_message(error: BaseException) -> Optional[str]:
    """The original message of an error raised in a DataLoader worker process (the loader
    re-raises it with a traceback in front), else None."""
    text = str(error)
    if 'DataLoader worker' not in text:
        return None
    for line in reversed(text.strip().splitlines()):
        head, sep, message = line.partition(': ')
        if sep and head.rpartition('.')[2].endswith('Error') and ' ' not in head:
            return message
    return None


def write_digits(root, size: int = 32, val_fraction: float = 0.25, seed: int = 0) -> dict:
    """scikit-learn's handwritten digits (1,797 real 8x8 grey scans, 10 classes) written as the
    class-folder layout: ``root/train/<digit>/*.png`` and ``root/val/<digit>/*.png``, a stratified
    split, each image upsampled to ``size`` x ``size`` RGB. The small real data set the tests,
    benches and README examples fine-tune on (it ships inside scikit-learn: no download).
    Returns the image counts per split."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise ImportError('the digits data set comes with scikit-learn: pip install scikit-learn') from None
    import numpy as np
    from PIL import Image

    root = Path(root)
    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)  # 0..16 -> 0..255
    index = np.arange(len(images))
    train_idx, val_idx = train_test_split(index, test_size=val_fraction, random_state=seed, stratify=digits.target)
    for split, chosen in (('train', train_idx), ('val', val_idx)):
        for i in chosen:
            folder = root / split / str(digits.target[i])
            folder.mkdir(parents=True, exist_ok=True)
            # white digit on black; three channels, as ImageNet models expect
            Image.fromarray(images[i]).resize((size, size), Image.BILINEAR).convert('RGB').save(folder / f'{i}.png')
    return {'train': len(train_idx), 'val': len(val_idx)}
