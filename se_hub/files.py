"""Every file se_hub writes (training checkpoints, exports, weight stamps, analysis outputs), never
half-written: each file is written to a temporary file in the same directory, flushed to disk, then
moved over the old one with ``os.replace`` (atomic on POSIX and Windows). A failed write (full disk,
...) removes the temporary file and leaves the previous file as it was. Also: a file's digest."""
import errno
import hashlib
import os
import shutil
import threading
from pathlib import Path
from typing import Any, Dict, Union

TMP_MARK = '.tmp-'


class FileWriteError(OSError):
    """A file (a checkpoint, an export) could not be written; what was at that path before is intact."""


def _tmp_path(path: Path) -> Path:
    # one per process and thread: two writers of the same file never share a temporary file
    return path.with_name(f'.{path.name}{TMP_MARK}{os.getpid()}-{threading.get_ident()}')


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not possible on every platform (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: Union[str, os.PathLike], write) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, then move it over ``path``. A failed
    write removes the temporary file, leaves ``path`` as it was, and an OS error (a full disk) is
    raised as :class:`FileWriteError` saying so."""
    path = Path(path)
    tmp = _tmp_path(path)
    try:
        # torch.save reports a full disk as a RuntimeError about stream positions; closing the file then
        # raises the OSError (the unwritten data is still in its buffer)
        with open(tmp, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        if isinstance(e, OSError):
            reason = ('the disk is full (free some space and run again)' if e.errno == errno.ENOSPC
                      else (e.strerror or str(e)))
            kept = f'the previous {path.name} is intact' if path.exists() else f'no {path.name} was written'
            raise FileWriteError(e.errno, f'could not write {path}: {reason}; {kept}') from e
        raise
    _fsync_dir(path.parent)
    return path


def save_atomic(obj: Dict[str, Any], path: Union[str, os.PathLike]) -> Path:
    """``torch.save(obj)`` to ``path`` atomically."""
    import torch
    return write_atomic(path, lambda f: torch.save(obj, f))


def copy_atomic(src: Union[str, os.PathLike], dst: Union[str, os.PathLike]) -> Path:
    """Copy ``src`` to ``dst`` atomically."""
    def write(f):
        with open(src, 'rb') as s:
            shutil.copyfileobj(s, f, 1 << 20)
    return write_atomic(dst, write)


def write_bytes_atomic(path: Union[str, os.PathLike], data: bytes) -> Path:
    return write_atomic(path, lambda f: f.write(data))


def write_text_atomic(path: Union[str, os.PathLike], text: str) -> Path:
    return write_bytes_atomic(path, text.encode('utf-8'))


def remove_stale_temporaries(directory: Union[str, os.PathLike]) -> None:
    """Temporary files left by a process killed while writing."""
    for p in Path(directory).glob(f'.*{TMP_MARK}*'):
        try:
            p.unlink()
        except OSError:
            pass


def file_digest(path, algorithm: str = 'sha256') -> str:
    """Hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.new(algorithm)
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()
