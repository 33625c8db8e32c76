"""Places-365 scene recognition data: the Places365-Standard trees as they are found on disk.

Two layouts are read:

- torchvision's (the official devkit file lists next to the extracted archives)::

      root/categories_places365.txt        '/a/airfield 0', one line per category
      root/places365_train_standard.txt    '/a/airfield/00000001.jpg 0'  (or, alone,
                                           places365_train_challenge.txt: Places365-Challenge)
      root/places365_val.txt               'Places365_val_00000001.jpg 165'
      root/data_256_standard/ or data_large_standard/   (_challenge for Challenge; the official
                                                         archives extract to data_256/ or data_large/:
                                                         also read)
      root/val_256/ or val_large/

- class folders: ``root/train/<scene>/*.jpg`` and ``root/val/<scene>/*.jpg``. A scene may be a
  nested folder (``apartment_building/outdoor``) or use a dash for the slash
  (``apartment_building-outdoor``). The tree counts as Places-365 only when ``root`` also holds
  ``categories_places365.txt`` (which then fixes the class order): a folder tree that merely has
  365 classes is an ordinary data set and keeps its folder names.

torchvision's own ``Places365`` class refuses any list file whose md5 differs from the complete
official one, so it cannot read a subset, a re-split or a test tree. :class:`Places365Dataset`
reads the same layout and checks the md5 of the official files only when asked
(``verify_md5=True``).

Scene names drop the index letter: ``/a/airfield`` -> ``airfield``, ``/a/apartment_building/outdoor``
-> ``apartment_building/outdoor``; they become the class names of a fine-tuned model, so they are
written to its exported config and ``se-hub predict`` prints them.

Reference (Hu et al., "Squeeze-and-Excitation Networks", Places-365 validation, single crop):
SE-ResNet-152 40.37 / 11.01 top-1 / top-5 error; ResNet-152 41.15 / 11.61 (Places-365-CNN 41.07 / 11.48).
"""
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

from torch.utils.data import Dataset

PathLike = Union[str, os.PathLike]

NUM_CLASSES = 365
CATEGORIES_FILE = 'categories_places365.txt'
# {split: list file} of the devkit
LIST_FILES = {
    'train-standard': 'places365_train_standard.txt',
    'train-challenge': 'places365_train_challenge.txt',
    'val': 'places365_val.txt',
}
# md5 of the official devkit files (the values torchvision's Places365 checks)
OFFICIAL_MD5 = {
    'categories_places365.txt': '06c963b85866bd0649f97cb43dd16673',
    'places365_train_standard.txt': '30f37515461640559006b8329efbed1a',
    'places365_train_challenge.txt': 'b2931dc997b8c33c27e7329c073a6b57',
    'places365_val.txt': 'e9f2fd57bfd9d07630173f4e8708e4b1',
}
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')


class Places365Error(ValueError):
    """A Places-365 tree that cannot be read as it is (the message names the file)."""


def scene_name(category: str) -> str:
    """'/a/airfield' -> 'airfield'; '/a/apartment_building/outdoor' -> 'apartment_building/outdoor'."""
    parts = [p for p in category.strip().split('/') if p]
    if len(parts) >= 2 and len(parts[0]) == 1 and parts[1].startswith(parts[0]):
        parts = parts[1:]
    return '/'.join(parts)


def file_md5(path: PathLike) -> str:
    from ..files import file_digest
    return file_digest(path, 'md5')


def check_md5(path: PathLike) -> None:
    """Raise Places365Error when an official devkit file differs from the published one."""
    path = Path(path)
    expected = OFFICIAL_MD5.get(path.name)
    if expected is None:
        raise Places365Error(f'{path}: no official md5 is known for a file of this name')
    actual = file_md5(path)
    if actual != expected:
        raise Places365Error(f'{path} is not the official Places-365 file: md5 {actual} != {expected} '
                             '(pass verify_md5=False to read a subset or a re-split)')


def read_categories(path: PathLike, num_classes: Optional[int] = None, verify_md5: bool = False) -> List[str]:
    """The category file as a list of raw categories ('/a/airfield') in label order.

    Every non-empty line is ``CATEGORY INDEX``; the indices must be 0..N-1, each once, N being the
    number of lines (and ``num_classes`` when given, e.g. 365 for the full data set)."""
    path = Path(path)
    if verify_md5:
        check_md5(path)
    by_index: Dict[int, str] = {}
    lines = [(n, line) for n, line in enumerate(path.read_text(encoding='utf-8').splitlines(), 1) if line.strip()]
    if num_classes is not None and len(lines) != num_classes:
        raise Places365Error(f'{path} has {len(lines)} category lines, expected {num_classes}')
    for n, line in lines:
        fields = line.split()
        if len(fields) != 2 or not fields[1].lstrip('-').isdigit():
            raise Places365Error(f"{path} line {n}: expected 'CATEGORY INDEX' (e.g. '/a/airfield 0'), got {line!r}")
        index = int(fields[1])
        if not 0 <= index < len(lines):
            raise Places365Error(f'{path} line {n}: index {index} out of range for a file of {len(lines)} '
                                 f'category lines (indices are 0..{len(lines) - 1})')
        if index in by_index:
            raise Places365Error(f'{path} line {n}: index {index} already given to {by_index[index]!r}')
        by_index[index] = fields[0]
    return [by_index[i] for i in range(len(lines))]


def _load_rgb(path: str):
    from PIL import UnidentifiedImageError

    from ..images import read_rgb
    try:
        return read_rgb(path)
    except FileNotFoundError:
        raise Places365Error(f'Places-365 image is missing: {path}') from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise Places365Error(f'Places-365 image cannot be read: {path} ({type(e).__name__}: {e})') from None


class Places365Dataset(Dataset):
    """(image, label) pairs of a Places-365 split; images are PIL RGB images.

    ``samples`` is the list of (path, label), ``classes`` the scene names in label order.
    Build one from a tree with :meth:`from_file_list` or :meth:`from_class_folders`, or let
    :func:`detect_places365` find the layout.
    """

    def __init__(self, samples: Sequence[Tuple[str, int]], classes: Sequence[str],
                 transform: Optional[Callable] = None, target_transform: Optional[Callable] = None,
                 check_files: bool = False):
        self.samples = list(samples)
        self.classes = list(classes)
        self.transform = transform
        self.target_transform = target_transform
        for path, label in self.samples:
            if not 0 <= label < len(self.classes):
                raise Places365Error(f'{path}: label {label} out of range for {len(self.classes)} classes')
        if check_files:
            missing = [p for p, _ in self.samples if not os.path.isfile(p)]
            if missing:
                more = f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''
                raise Places365Error(f'Places-365 image is missing: {missing[0]}{more}')

    @property
    def targets(self) -> List[int]:
        return [label for _, label in self.samples]

    @property
    def class_to_idx(self) -> Dict[str, int]:
        return {name: i for i, name in enumerate(self.classes)}

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        image = _load_rgb(path)
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            label = self.target_transform(label)
        return image, label

    @classmethod
    def from_file_list(cls, root: PathLike, split: str = 'train-standard', small: Optional[bool] = None,
                       verify_md5: bool = False, num_classes: Optional[int] = None, check_files: bool = False,
                       transform: Optional[Callable] = None,
                       target_transform: Optional[Callable] = None) -> 'Places365Dataset':
        """A split of the torchvision / devkit layout. ``small``: the 256x256 images (True), the
        large ones (False), or whichever is there, 256 first (None). Listed images are opened when
        read (``check_files=True`` checks that they all exist up front)."""
        root = Path(root)
        if split not in LIST_FILES:
            raise ValueError(f'split must be one of {sorted(LIST_FILES)}, got {split!r}')
        categories = read_categories(_required(root / CATEGORIES_FILE), num_classes, verify_md5)
        list_file = _required(root / LIST_FILES[split])
        if verify_md5:
            check_md5(list_file)
        images_dir = _images_dir(root, split, small)
        samples = []
        with open(list_file, encoding='utf-8') as f:
            for n, line in enumerate(f, 1):
                fields = line.split()
                if not fields:
                    continue
                if len(fields) != 2 or not fields[1].lstrip('-').isdigit():
                    raise Places365Error(f"{list_file} line {n}: expected 'IMAGE LABEL', got {line.strip()!r}")
                label = int(fields[1])
                if not 0 <= label < len(categories):
                    raise Places365Error(f'{list_file} line {n}: label {label} out of range: '
                                         f'{root / CATEGORIES_FILE} has {len(categories)} categories')
                samples.append((str(images_dir.joinpath(*fields[0].strip('/').split('/'))), label))
        if not samples:
            raise Places365Error(f'{list_file} lists no image')
        return cls(samples, [scene_name(c) for c in categories], transform, target_transform, check_files)

    @classmethod
    def from_class_folders(cls, split_dir: PathLike, classes: Sequence[str],
                           transform: Optional[Callable] = None,
                           target_transform: Optional[Callable] = None) -> 'Places365Dataset':
        """``split_dir/<scene>/*.jpg`` with the scene folders matched to ``classes``."""
        split_dir = Path(split_dir)
        index = {_folder_key(name): i for i, name in enumerate(classes)}
        samples = []
        for folder, files in sorted(_scene_folders(split_dir).items()):
            key = _folder_key(folder)
            if key not in index:
                raise Places365Error(f'{split_dir / folder}: scene folder {folder!r} is not one of the '
                                     f'{len(classes)} categories')
            samples += [(str(split_dir / folder / f), index[key]) for f in files]
        if not samples:
            raise Places365Error(f'{split_dir} holds no image in scene folders')
        return cls(samples, classes, transform, target_transform)


def _required(path: Path) -> Path:
    if not path.is_file():
        raise Places365Error(f'Places-365 file is missing: {path}')
    return path


def _images_dir(root: Path, split: str, small: Optional[bool]) -> Path:
    sizes = ['256', 'large'] if small is None else (['256'] if small else ['large'])
    if split.startswith('train'):
        variant = split.split('-', 1)[1]
        names = [n for s in sizes for n in (f'data_{s}_{variant}', f'data_{s}')]
    else:
        names = [f'{split}_{s}' for s in sizes]
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise Places365Error(f'Places-365 {split} images not found: expected one of the folders '
                         f"{', '.join(str(root / n) for n in names)}")


def _scene_folders(split_dir: Path) -> Dict[str, List[str]]:
    """{'airfield' or 'apartment_building/outdoor': sorted image file names} for the folders that
    directly hold images."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(split_dir):
        dirnames.sort()
        images = sorted(f for f in filenames if f.lower().endswith(IMAGE_EXTENSIONS))
        if images and Path(dirpath) != split_dir:
            out[Path(dirpath).relative_to(split_dir).as_posix()] = images
    return out


def _folder_key(name: str) -> str:
    """Folder names and scene names compared alike: 'a/airfield', 'airfield', '/a/airfield' ->
    'airfield'; 'apartment_building-outdoor' -> 'apartment_building/outdoor'."""
    return scene_name(name).replace('-', '/').lower()


def detect_places365(root: PathLike, train_transform: Optional[Callable] = None,
                     val_transform: Optional[Callable] = None, verify_md5: bool = False,
                     num_classes: Optional[int] = None, small: Optional[bool] = None,
                     check_files: bool = False,
                     ) -> Optional[Tuple[Places365Dataset, Places365Dataset, List[str]]]:
    """``(train_dataset, val_dataset, class_names)`` when ``root`` is a Places-365 tree (either
    layout), None when it is not one. A tree that is recognisably Places-365 but broken raises
    Places365Error naming the file. ``num_classes=365`` insists on the full category list."""
    root = Path(root)
    if not root.is_dir():
        return None
    categories_file = root / CATEGORIES_FILE
    has_lists = any((root / f).is_file() for f in LIST_FILES.values())
    if has_lists:
        # Places365-Challenge (8M images, the paper's training set) when only its list is there
        split = 'train-challenge' if ((root / LIST_FILES['train-challenge']).is_file()
                                      and not (root / LIST_FILES['train-standard']).is_file()) else 'train-standard'
        train = Places365Dataset.from_file_list(root, split, small, verify_md5, num_classes, check_files,
                                                train_transform)
        val = Places365Dataset.from_file_list(root, 'val', small, verify_md5, num_classes, check_files, val_transform)
        return train, val, list(train.classes)
    train_dir, val_dir = root / 'train', root / 'val'
    if not (train_dir.is_dir() and val_dir.is_dir()):
        if categories_file.is_file():
            raise Places365Error(f'{root} has {CATEGORIES_FILE} but neither the file lists '
                                 f"({', '.join(LIST_FILES.values())}) nor train/ and val/ scene folders")
        return None
    if not categories_file.is_file():
        # an ordinary class-folder data set, whatever its number of classes: its folder names stay
        # the class names (a Places-365 folder tree is recognised by its categories file)
        return None
    classes = [scene_name(c) for c in read_categories(categories_file, num_classes, verify_md5)]
    train = Places365Dataset.from_class_folders(train_dir, classes, train_transform)
    val = Places365Dataset.from_class_folders(val_dir, classes, val_transform)
    return train, val, classes
