"""One run per output directory: a fine-tuning run (any engine run) holds an OS file lock on
``OUT/.se_hub-run.lock`` (``filelock``: ``flock`` on POSIX, ``LockFileEx`` on Windows) while it
runs. A second writer into the same directory, ``--resume`` included, is refused with one line
naming the holder (pid, host, start time, read from ``OUT/.se_hub-run.json``, which the holder
writes). The lock goes with the process on any exit: released by ``hold_output`` on a return or an
exception, and by the kernel when the process is killed (SIGKILL included), so no stale lock ever
needs removing. The lock file itself stays (deleting a lock file others may have opened would let
two processes hold two different files), unless the run made the directory and wrote nothing into it:
then the directory goes too. The holder's info file is removed when the lock is released.
"""
import datetime
import json
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union

LOCK_NAME, HOLDER_NAME = '.se_hub-run.lock', '.se_hub-run.json'


class OutputInUseError(RuntimeError):
    """Another live process is writing into this output directory."""


def _holder(directory: Path) -> str:
    try:
        info = json.loads((directory / HOLDER_NAME).read_text(encoding='utf-8'))
        return f"pid {info['pid']} on {info['host']}, started {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):  # between its lock and its info file, or an old run
        return f'its pid, host and start time are not recorded in {directory / HOLDER_NAME} yet'


@contextmanager
def hold_output(directory: Union[str, os.PathLike], create: bool = True) -> Iterator[Path]:
    """Hold the lock of ``directory`` (made if ``create``; without ``create`` a missing directory is
    left missing and not locked: nothing there to protect) for the ``with`` block, or raise
    :class:`OutputInUseError` at once if another process holds it."""
    from filelock import FileLock, Timeout

    from ..files import write_text_atomic
    directory = Path(directory)
    if not directory.is_dir() and not create:
        yield directory
        return
    made = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(directory / LOCK_NAME), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise OutputInUseError(f'{directory} is in use by another se-hub run ({_holder(directory)}): wait for it to '
                               'end, or choose another --output') from None
    info = directory / HOLDER_NAME
    try:
        started = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC')
        try:
            write_text_atomic(info, json.dumps({'pid': os.getpid(), 'host': socket.gethostname(),
                                                'started': started}))
        except OSError:  # a full disk: the run's own files will say so; the lock holds without its info
            pass
        yield directory
    finally:
        try:
            info.unlink(missing_ok=True)
            # a run that stopped before writing anything leaves no directory behind
            if made and [p.name for p in directory.iterdir()] == [LOCK_NAME]:
                (directory / LOCK_NAME).unlink()
                directory.rmdir()
        except OSError:
            pass
        finally:
            lock.release()
