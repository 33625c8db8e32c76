"""Fetch tests/test_models.py of the installed timm's sdist into .ci/cache/timm-tests/, where
tests/test_timm_suite.py runs it on se_hub's models. The tests never reach the network: .ci/run calls this
first; by hand: ``.venv/bin/python .ci/fetch_timm_tests.py``. Nothing is fetched while the cached file is
the installed timm's."""
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import timm

CACHE = Path(__file__).resolve().parent / 'cache' / 'timm-tests'


def _replace(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all (a crash leaves the previous file, a temporary name of its own)."""
    fd, part = tempfile.mkstemp(dir=path.parent, prefix=path.name + '.', suffix='.part')
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
        os.replace(part, path)
    except BaseException:
        os.unlink(part)
        raise


def main() -> int:
    version = timm.__version__
    suite, stamp = CACHE / 'test_models.py', CACHE / 'VERSION'
    if suite.is_file() and stamp.is_file() and stamp.read_text().strip() == version:
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        pip = subprocess.run([sys.executable, '-m', 'pip', 'download', '-q', '--disable-pip-version-check',
                              '--no-deps', '--no-binary', ':all:', f'timm=={version}', '-d', tmp],
                             capture_output=True, text=True)
        sdist = next(Path(tmp).glob('timm-*.tar.gz'), None)
        if pip.returncode or sdist is None:
            print(pip.stderr.strip(), file=sys.stderr)
            print(f"fetch_timm_tests: pip could not download timm {version}'s sdist from the package registry; "
                  f'put its tests/test_models.py at {suite} by hand, or set SE_HUB_TIMM_TESTS to a copy',
                  file=sys.stderr)
            return 1
        with tarfile.open(sdist) as tar:
            data = tar.extractfile(tar.getmember(f'timm-{version}/tests/test_models.py')).read()
    CACHE.mkdir(parents=True, exist_ok=True)
    _replace(suite, data)
    _replace(stamp, (version + '\n').encode())  # last: a crash before it fetches again next time
    print(f"fetched timm {version}'s tests/test_models.py into {suite}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
