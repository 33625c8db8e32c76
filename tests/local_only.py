"""Tests never reach the internet: ``install()`` makes every socket connection to anything but this
machine raise. conftest installs it in the test process; a test's Python subprocess that talks to the local
hub (tests/hub_server.py) runs with ``subprocess_env(...)``, which installs it there at start-up."""
import ipaddress
import os
import socket
from pathlib import Path

GUARD = Path(__file__).resolve().parent / 'subprocess_guard'  # its sitecustomize.py calls install()


class InternetAccessError(RuntimeError):
    """A test tried to open a connection to something other than this machine."""


def _is_local(address) -> bool:
    if not isinstance(address, tuple):  # AF_UNIX path
        return True
    host = address[0]
    if host == 'localhost':
        return True
    try:
        return ipaddress.ip_address(host.split('%')[0]).is_loopback
    except ValueError:  # a host name: only loopback is allowed, and names are not resolved here
        return False


def _guarded(connect):
    def guarded_connect(self, address):
        if not _is_local(address):
            raise InternetAccessError(f'tests never reach the internet: connection to {address!r} refused '
                                      '(use the local_hub fixture, tests/hub_server.py, or HF_HUB_OFFLINE=1)')
        return connect(self, address)
    guarded_connect.se_hub_guard = True
    return guarded_connect


def install() -> None:
    if not getattr(socket.socket.connect, 'se_hub_guard', False):
        socket.socket.connect = _guarded(socket.socket.connect)
        socket.socket.connect_ex = _guarded(socket.socket.connect_ex)


def subprocess_env(pythonpath=(), **overrides) -> dict:
    """This process's environment with ``overrides``, for a Python subprocess that installs the guard before
    its own code runs: PYTHONPATH is the guard's folder, then ``pythonpath`` (no other entry is kept)."""
    env = dict(os.environ, **overrides)
    env['PYTHONPATH'] = os.pathsep.join([str(GUARD), *map(str, pythonpath)])
    return env
