import os

# Tests never reach the internet; set before anything imports huggingface_hub or timm. Forced, not defaulted:
# a developer's HF_HUB_OFFLINE=0 must not reach a test (those that talk to the local hub set it themselves).
os.environ['HF_HUB_OFFLINE'] = '1'
os.environ.setdefault('HF_HUB_DISABLE_TELEMETRY', '1')

import local_only  # noqa: E402  (tests/local_only.py)

# every Python subprocess a test starts with this environment (or a copy that keeps PYTHONPATH's entries)
# installs the loopback-only guard before its own code runs, not only those built with subprocess_env
os.environ['PYTHONPATH'] = os.pathsep.join([str(local_only.GUARD), *filter(None, [os.environ.get('PYTHONPATH')])])
import pytest  # noqa: E402
import torch  # noqa: E402

import se_hub  # noqa: E402,F401  (registers the models)

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# .ci/run names a file here (and runs pytest with -p no:faulthandler): on a hard crash (an abort or a
# segfault inside a C++ library) every thread's Python stack, the test included, is written to it, and
# .ci/run prints it without the console copy's long list of loaded extension modules.
if os.environ.get('SE_HUB_CRASH_LOG'):
    import faulthandler

    _crash_log = open(os.environ['SE_HUB_CRASH_LOG'], 'w')
    faulthandler.enable(_crash_log, all_threads=True)


# every in-process connection is checked, and (PYTHONPATH above) every subprocess's
local_only.install()


@pytest.fixture
def one_thread():
    """Small convolutions on 2 shared, busy cores run many times faster on one thread than on two
    (OpenMP threads wait for each other). Files that want it for every test use it with
    ``pytestmark = pytest.mark.usefixtures('one_thread')``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def full_disk(monkeypatch):
    """A set of file names: writing a file of such a name through se_hub's atomic writer
    (``se_hub.files.write_atomic``: checkpoints, exports) fails as on a full disk. Its temporary
    file is a link to /dev/full, whose writes fail with the kernel's ENOSPC, so the real writers
    (torch.save, onnx, plain file writes) meet a real full-disk error."""
    import stat

    from se_hub import files
    if not (os.path.exists('/dev/full') and stat.S_ISCHR(os.stat('/dev/full').st_mode)):
        pytest.skip('needs the /dev/full device (Linux)')
    names = set()
    temporary = files._tmp_path

    def temporary_on_a_full_disk(path):
        tmp = temporary(path)
        if path.name in names:
            tmp.unlink(missing_ok=True)
            tmp.symlink_to('/dev/full')
        return tmp

    monkeypatch.setattr(files, '_tmp_path', temporary_on_a_full_disk)
    return names


@pytest.fixture
def image_batch():
    return torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def local_hub():
    """A Hub look-alike on 127.0.0.1 (tests/hub_server.py), stopped after the test."""
    from hub_server import LocalHub

    hub = LocalHub()
    try:
        yield hub
    finally:
        hub.stop()


@pytest.fixture(scope='session')
def digits_dir(tmp_path_factory):
    """scikit-learn's real handwritten digits as class folders (train/ + val/, 32x32 RGB), written once."""
    from se_hub.tasks.data import write_digits
    root = tmp_path_factory.mktemp('digits')
    write_digits(root, size=32, val_fraction=0.25, seed=0)
    return root
