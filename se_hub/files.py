"""Every file se_hub writes (training checkpoints, exports, weight stamps, analysis outputs), never
half-written: each file is written to a temporary file in the same directory, flushed to disk, then
moved over the old one with ``os.replace`` (atomic on POSIX and Windows). A failed write (full disk,
...) removes the temporary file and leaves the previous file as it was. Also: a file's digest."""
import errno
import hashlib
import os
import re
import shutil
import threading
from pathlib import Path
from typing import Any, Dict, Optional, Union

TMP_MARK = '.tmp-'


class FileWriteError(OSError):
    """A file (a checkpoint, an export) could not be written; what was at that path before is intact."""

    def __str__(self) -> str:  # the sentence, without OSError's '[Errno 28]' in front
        return self.strerror or super().__str__()


def _tmp_path(path: Path) -> Path:
    # one per process and thread: two writers of the same file never share a temporary file
    return path.with_name(f'.{path.name}{TMP_MARK}{os.getpid()}-{threading.get_ident()}')


def new_file_mode() -> int:
    """The mode ``open()`` gives a new file: 0o666 less the process umask. For files written by libraries
    that create them private (safetensors writes 0o600), so that a shared run directory stays readable."""
    try:  # Linux >= 4.7 reports it without changing it (os.umask would, for every thread, for a moment)
        with open('/proc/self/status', encoding='ascii') as f:
            mask = next(int(line.split()[1], 8) for line in f if line.startswith('Umask:'))
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


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


_RUST_DISK_FULL = re.compile(rf'os error {errno.ENOSPC}\)|Os {{ code: {errno.ENOSPC}, |kind: StorageFull\b')


def _disk_full(error: BaseException) -> bool:
    """Whether ``error`` or one it was raised from is a full disk. torch's zip writer reports one as
    ``RuntimeError: [enforce fail at inline_container.cc] unexpected pos``, raised while handling the
    OSError of the write; safetensors (Rust) as an error naming no path, which says ``(os error 28)`` in the
    newest safetensors and ``IoError(Os { code: 28, kind: StorageFull, ...})`` in 0.4.0."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        if not isinstance(error, OSError) and _RUST_DISK_FULL.search(str(error)):
            return True
        error = error.__cause__ or error.__context__
    return False


def write_error(path: Union[str, os.PathLike], error: BaseException) -> Optional[FileWriteError]:
    """What ``error``, raised while writing ``path`` (beside it, not over it), means for the user: a
    :class:`FileWriteError` naming ``path`` and saying that what was there is intact, or None when
    ``error`` is not about the file system (a bug, an interrupt: raise it as it is)."""
    path = Path(path)
    kept = f'the previous {path} is intact' if path.exists() else f'no {path} was written'
    if _disk_full(error):
        return FileWriteError(errno.ENOSPC, f'the disk is full, could not write {path}; {kept} (free some space '
                                            'and run again)')
    if isinstance(error, OSError):
        return FileWriteError(error.errno, f'could not write {path}: {error.strerror or error}; {kept}')
    return None


def write_atomic(path: Union[str, os.PathLike], write) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, then move it over ``path``. A failed
    write removes the temporary file, leaves ``path`` as it was, and an OS error (a full disk, also
    when the writer reports it as another error) is raised as :class:`FileWriteError` saying so."""
    path = Path(path)
    tmp = _tmp_path(path)
    try:
        # torch.save reports a full disk as a RuntimeError about stream positions (write_error reads the
        # OSError it was raised from); or closing the file raises the OSError (data still in its buffer)
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
        error = write_error(path, e)
        if error is not None:
            raise error from e
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


def check_safetensors(path: Union[str, os.PathLike]) -> None:
    """Raise ``ValueError`` naming ``path`` unless it is a whole safetensors file: an 8-byte header length,
    a JSON header, and every tensor's bytes inside the file (safetensors' own error names no file and says
    only "Error while deserializing header"). Reads the header alone."""
    import json
    path = Path(path)
    size = path.stat().st_size
    problem = None
    with open(path, 'rb') as f:
        head = f.read(8)
        length = int.from_bytes(head, 'little') if len(head) == 8 else -1
        if length < 2 or 8 + length > size:
            problem = f'{size} bytes, shorter than its header says' if length >= 2 else 'no header'
        else:
            try:
                header = json.loads(f.read(length))
                end = max((int(t['data_offsets'][1]) for k, t in header.items() if k != '__metadata__'), default=0)
            except (ValueError, TypeError, KeyError, IndexError, AttributeError):
                problem = 'its header is not safetensors JSON'
            else:
                if 8 + length + end > size:
                    problem = f'{size} bytes where its tensors need {8 + length + end}'
    if problem:
        raise ValueError(f'{path} is truncated or not a safetensors file ({problem})')
