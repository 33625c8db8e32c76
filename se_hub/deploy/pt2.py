"""Reading ``.pt2`` files (torch.export) without running anything they carry.

``torch.export.load`` unpickles parts of the archive with ``weights_only=False`` (tensors marked
``use_pickle``, opaque constants, sample inputs and the pre-2.8 pickled state dicts when the safe load fails,
everything on torch < 2.6) and loads AOTInductor shared libraries it finds inside. The archive is therefore
read into memory and checked first: every entry must be one that ``torch.export.save`` writes for a plain
model, every pickle in it must load with ``torch.load(weights_only=True)``, and the checked bytes are then
what torch reads (no second look at the file).

Two layouts exist: the pt2 archive (torch >= 2.8: ``<root>/archive_format`` = ``pt2``, raw tensor payloads
described by JSON configs) and the older flat zip (``serialized_exported_program.json``, pickled
``serialized_*.pt``, ``extra_files/``), which torch 2.4 to 2.7 write.
"""
import io
import json
import zipfile
from pathlib import Path
from typing import Any, Dict, Tuple

import torch

from .._compat import load_tensors_only

_LEGACY_PICKLES = ('serialized_state_dict.pt', 'serialized_constants.pt', 'serialized_example_inputs.pt')
_LEGACY_DATA = ('version', 'serialized_exported_program.json')
_ARCHIVE_METADATA = ('archive_format', 'archive_version', 'byteorder', '.data/version', '.data/serialization_id')


class UnsafeFileError(ValueError):
    """A file holds something se_hub would have to run (a pickled object, a compiled library) to load it."""


def _refuse(path, what: str) -> UnsafeFileError:
    return UnsafeFileError(
        f'{path}: refusing to load it: {what}. se_hub never runs code from a file; export the model again '
        'with `se-hub export --format pt2` (or use the .onnx export)')


def _check_pickle(path, zf: zipfile.ZipFile, name: str) -> None:
    try:
        load_tensors_only(io.BytesIO(zf.read(name)))
    except Exception:  # noqa: BLE001 - whatever it holds, it is not plain tensors
        raise _refuse(path, f'its entry {name} holds pickled Python objects, not plain tensors') from None


def _check_payload_config(path, zf: zipfile.ZipFile, config_name: str, directory: str, tensor_prefix: str) -> set:
    """The raw tensor files a weights / constants config names; refuses pickled or non-tensor entries."""
    config = json.loads(zf.read(config_name)).get('config') or {}
    files = set()
    for fqn, meta in config.items():
        path_name = str(meta.get('path_name', ''))
        if meta.get('use_pickle'):
            raise _refuse(path, f'{config_name} marks {fqn!r} as a pickled object ("use_pickle": true)')
        if not path_name.startswith(tensor_prefix) or meta.get('tensor_meta') is None:
            raise _refuse(path, f'{config_name} stores {fqn!r} as {path_name!r}, which is not a plain tensor')
        files.add(directory + path_name)
    return files


def _check_archive(path, zf: zipfile.ZipFile, root: str) -> None:
    names = [n for n in zf.namelist() if not n.endswith('/')]
    allowed = {root + n for n in _ARCHIVE_METADATA}
    for name in names:
        rel = name[len(root):] if name.startswith(root) else None
        if rel is None:
            raise _refuse(path, f'its entry {name} lies outside the archive root {root}')
        if rel.startswith('models/') and rel.endswith('.json'):
            allowed.add(name)
        elif rel.startswith('extra/'):
            allowed.add(name)  # read as text
        elif rel.startswith('data/weights/') and rel.endswith('_weights_config.json'):
            allowed.add(name)
            allowed |= _check_payload_config(path, zf, name, root + 'data/weights/', 'weight_')
        elif rel.startswith('data/constants/') and rel.endswith('_constants_config.json'):
            allowed.add(name)
            allowed |= _check_payload_config(path, zf, name, root + 'data/constants/', 'tensor_')
        elif rel.startswith('data/sample_inputs/') and rel.endswith('.pt'):
            _check_pickle(path, zf, name)
            allowed.add(name)
    for name in names:
        if name not in allowed:
            kind = 'a compiled AOTInductor library' if '/aotinductor/' in name else 'an entry torch.export.save does ' \
                'not write for a plain model'
            raise _refuse(path, f'it contains {name} ({kind})')


def _check_legacy(path, zf: zipfile.ZipFile) -> None:
    for name in zf.namelist():
        if name in _LEGACY_PICKLES:
            _check_pickle(path, zf, name)
        elif name not in _LEGACY_DATA and not name.startswith('extra_files/'):
            raise _refuse(path, f'it contains {name} (an entry torch.export.save does not write)')


def check_pt2(data: bytes, path) -> None:
    """Raise :class:`UnsafeFileError` unless ``data`` (the bytes of the ``.pt2`` file ``path``) holds only
    what torch.export.save writes for a plain model, its pickles tensors-only."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise ValueError(f'{path} is not a torch.export (.pt2) file: not a zip archive (damaged or another '
                         'format)') from None
    with zf:
        names = zf.namelist()
        roots = [n[:-len('archive_format')] for n in names
                 if n.endswith('/archive_format') and n.count('/') == 1]
        if roots:
            _check_archive(path, zf, roots[0])
        elif 'serialized_exported_program.json' in names:
            _check_legacy(path, zf)
        else:
            raise ValueError(f'{path} is not a torch.export (.pt2) file (no exported program in the archive)')


def load_pt2(path, extra_files: Tuple[str, ...] = ()) -> Tuple[Any, Dict[str, Any]]:
    """``(ExportedProgram, {name: extra file content})`` of a checked ``.pt2`` file."""
    data = Path(path).read_bytes()
    check_pt2(data, path)
    extra = {name: '' for name in extra_files}
    program = torch.export.load(io.BytesIO(data), extra_files=extra)
    return program, extra
