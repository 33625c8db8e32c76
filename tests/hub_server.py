"""A small Hugging Face Hub look-alike on 127.0.0.1, for testing Hub code with no internet.

``LocalHub()`` starts a ``ThreadingHTTPServer`` on a free port (a daemon thread) that speaks
enough of the Hub protocol for the *real* ``huggingface_hub`` client (checked against 2.4.0):
``hf_hub_download``, ``file_exists``, ``model_info``/``repo_info``, ``list_repo_tree``,
``snapshot_download``, ``create_repo``, ``upload_file``/``upload_folder``/``create_commit``, and
timm's ``push_to_hf_hub`` / ``create_model('hf-hub:...', pretrained=True)``. Model repos only.

Routes served (paths are split on ``/`` *before* unquoting, so ``refs%2Fpr%2F1`` stays one
segment; repo ids are ``name`` or ``namespace/name``):

- ``HEAD|GET /{repo}/resolve/{rev}/{filename}``: ``X-Repo-Commit``, ``ETag`` and ``X-Linked-Etag``
  (the file's sha256 in quotes, as for LFS files), ``X-Linked-Size`` and ``Content-Length``.
  Never any ``X-Xet-*`` header. GET honours ``Range: bytes=N-``.
- ``GET /api/models/{repo}[/revision/{rev}]``: ``id``, ``sha``, ``siblings`` (with ``size``,
  ``blobId``, ``lfs`` when ``?blobs=true``).
- ``GET /api/models/{repo}/tree/{rev}[/{path}]`` (``?recursive=true``), one page, no ``Link``.
- ``POST /api/repos/create`` (409 + ``{"url": ...}`` when it exists, which ``exist_ok`` needs),
  ``POST /api/models/{repo}/preupload/{rev}`` (every file ``regular``, with the remote git oid so
  unchanged files are skipped as the Hub does), ``POST /api/models/{repo}/commit/{rev}`` (NDJSON:
  ``file`` base64 additions, ``deletedFile``/``deletedFolder``, ``parentCommit`` check,
  ``?create_pr=1`` opens ``refs/pr/N``), ``POST /api/validate-yaml`` (always valid).
- Errors: 404 with ``X-Error-Code`` ``RepoNotFound`` / ``RevisionNotFound`` / ``EntryNotFound``
  (the last one with ``X-Repo-Commit``, so the client caches the non-existence as the Hub does).
  huggingface_hub 2.4.0 maps ``X-Error-Code: RepoNotFound`` to ``RepositoryNotFoundError`` from
  the header alone: no auth header, no 401 needed.

Pointing the client at it inside a test process (``point_client_at(monkeypatch, hub.endpoint,
cache_dir)`` below does all of this; ``allow_downloads(monkeypatch)`` does the first two)
------------------------------------------------------------------------------------------------
huggingface_hub reads its environment once, when ``huggingface_hub.constants`` is imported, and
everything else reads the module attributes of ``huggingface_hub.constants`` at call time (no
module keeps its own copy of the ones below), so monkeypatching those attributes is enough:

1. ``constants.HF_HUB_OFFLINE = False``: tests/conftest.py sets ``HF_HUB_OFFLINE=1`` for the
   session; every request goes through an httpx event hook that calls
   ``constants.is_offline_mode()``, which returns ``constants.HF_HUB_OFFLINE``.
   ``file_download`` has no copy of its own.
2. ``constants.HF_HUB_DISABLE_TELEMETRY = True`` and, if still ``None``,
   ``huggingface_hub.utils._detect_agent._registry = {'standardEnvVars': [], 'harnesses': {}}``:
   with telemetry on, the first request headers built while online trigger
   ``GET {constants.ENDPOINT}/api/agent-harnesses`` (user-agent "agent detection") -- to
   huggingface.co unless ENDPOINT is patched, even when the call itself was given ``endpoint=``
   -- and a successful answer is written to ``$HF_HOME/.agent_harnesses.json``. conftest.py's
   ``HF_HUB_DISABLE_TELEMETRY=1`` already prevents it unless the environment had it set to 0.
3. ``constants.ENDPOINT = hub.endpoint``: used by ``HfApi()`` (built with no ``endpoint=`` by
   timm's ``push_to_hf_hub``), by ``_commit_api`` and by the agent detection above.
4. ``constants.HUGGINGFACE_CO_URL_TEMPLATE = hub.endpoint + '/{repo_id}/resolve/{revision}/{filename}'``:
   ``hf_hub_url`` formats this template and only swaps the endpoint when ``endpoint=`` is passed,
   so ``hf_hub_download`` without ``endpoint=`` (timm's loaders) needs it. Never patch 3 without
   4: ``hf_hub_url`` swaps in ``endpoint=`` only if the formatted template starts with
   ``constants.ENDPOINT``, so with ENDPOINT alone patched even ``hf_hub_download(...,
   endpoint=hub.endpoint)`` goes to https://huggingface.co.
5. ``constants.HF_HUB_CACHE = str(tmp_path)``: the default ``cache_dir`` (or pass ``cache_dir=``,
   which ``timm.create_model`` also accepts).
6. ``constants.HF_HUB_DISABLE_IMPLICIT_TOKEN = True``, so a token saved on the machine is never
   sent (hygiene only: the server ignores auth; ``create_repo``/uploads need no token).

With explicit ``endpoint=`` and ``cache_dir=`` on every call, 1 and 2 are enough (tested).

What huggingface_hub 2.4.0 does with a bad download (``set_served_bytes``): it checks the size
only, never the sha256. A body whose length differs from the advertised size raises
``OSError('Consistency check failed: file should be of size ...')``, and nothing is left in the
cache (the per-download temp file is removed, no blob, no snapshot link); a same-size body with
other bytes is accepted silently and stored as the blob named after the advertised sha256.
"""
from __future__ import annotations

import base64
import functools
import hashlib
import importlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ['LocalHub', 'allow_downloads', 'point_client_at']

_TRUE = ('1', 'true', 'True')


def _git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b'blob %d\0' % len(data) + data).hexdigest()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _HubError(Exception):
    def __init__(self, status: int, code: str | None, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


class _Stalled(Exception):
    """A GET answered in part, outside the hub's lock: its first bytes, then a hang until released."""

    def __init__(self, status: int, body: bytes, headers: dict, after: int):
        super().__init__()
        self.status, self.body, self.headers, self.after = status, body, headers, after


class _Repo:
    def __init__(self) -> None:
        self.branches: dict[str, str] = {}           # branch/ref name -> commit sha
        self.commits: dict[str, dict[str, bytes]] = {}  # commit sha -> {filename: bytes}
        self.served: dict[str, bytes] = {}            # filename -> bytes served on GET instead
        self.created = time.strftime('%Y-%m-%dT%H:%M:%S.000Z', time.gmtime())
        self.num_prs = 0

    def resolve(self, revision: str) -> str | None:
        if revision in self.branches:
            return self.branches[revision]
        if revision in self.commits:
            return revision
        return None


class LocalHub:
    """An in-memory Hub served over HTTP on 127.0.0.1; see the module docstring."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._repos: dict[str, _Repo] = {}
        self._counter = 0
        self.requests: list = []  # (method, raw path without the query string)
        self._stalls: dict = {}  # (repo_id, filename) -> bytes sent before a GET hangs
        self._released = threading.Event()
        self._server = ThreadingHTTPServer(('127.0.0.1', 0), _make_handler(self))
        self._server.daemon_threads = True
        self.endpoint = f'http://127.0.0.1:{self._server.server_address[1]}'
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={'poll_interval': 0.05},
                                        name='LocalHub', daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------- public API
    def add_file(self, repo_id: str, filename: str, data: bytes, revision: str = 'main') -> str:
        """Publish a file (creating the repo / a new commit); returns the new commit sha (40 hex)."""
        with self._lock:
            repo = self._repos.setdefault(repo_id, _Repo())
            return self._commit(repo, revision, {filename: bytes(data)}, (), 'add ' + filename)

    def set_served_bytes(self, repo_id: str, filename: str, data: bytes) -> None:
        """Serve these bytes on GET from now on while HEAD keeps advertising the original file's
        sha256 etag and size (to simulate a corrupted / truncated download)."""
        with self._lock:
            if repo_id not in self._repos:
                raise KeyError(f'no repo {repo_id}')
            self._repos[repo_id].served[filename] = bytes(data)

    def stall(self, repo_id: str, filename: str, after: int) -> None:
        """GETs of this file send its first ``after`` bytes, then hang until ``release_stalls()`` (then the
        rest): a download in progress, to kill or to keep alive."""
        with self._lock:
            self._stalls[(repo_id, filename)] = after
            self._released.clear()

    def release_stalls(self) -> None:
        """Serve every file in full again; hanging answers send the rest of their file."""
        with self._lock:
            self._stalls.clear()
        self._released.set()

    def files(self, repo_id: str, revision: str = 'main') -> dict:
        """filename -> bytes at ``revision`` (a branch, ``refs/pr/N`` or a commit sha)."""
        with self._lock:
            repo = self._repos.get(repo_id)
            sha = repo.resolve(revision) if repo else None
            if sha is None:
                raise KeyError(f'{repo_id} has no revision {revision!r}')
            return dict(repo.commits[sha])

    def stop(self) -> None:
        self.release_stalls()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> LocalHub:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ----------------------------------------------------------------- state
    def _repo(self, repo_id: str) -> _Repo:
        repo = self._repos.get(repo_id)
        if repo is None:
            raise _HubError(404, 'RepoNotFound', 'Repository not found')
        return repo

    def _commit(self, repo: _Repo, branch: str, additions: dict, deletions, message: str,
                parent: str | None = None) -> str:
        head = repo.branches.get(branch)
        if parent is not None and head is not None and parent != head:
            raise _HubError(412, None, 'A commit has happened since. Please refresh and try again.')
        base = head or repo.branches.get('main')  # a new branch (e.g. refs/pr/1) forks from main
        tree = dict(repo.commits[base]) if base else {}
        for path in deletions:
            if path.endswith('/'):
                gone = [name for name in tree if name.startswith(path)]
            else:
                gone = [path] if path in tree else []
            if not gone:
                raise _HubError(404, 'EntryNotFound', f"A file with this name doesn't exist: {path}")
            for name in gone:
                del tree[name]
        tree.update(additions)
        self._counter += 1
        key = json.dumps([self._counter, head, message, sorted((k, _sha256(v)) for k, v in tree.items())])
        sha = hashlib.sha1(key.encode()).hexdigest()
        repo.commits[sha] = tree
        repo.branches[branch] = sha
        return sha

    def _resolve(self, repo_id: str, revision: str) -> tuple[_Repo, str]:
        repo = self._repo(repo_id)
        sha = repo.resolve(revision)
        if sha is None:
            raise _HubError(404, 'RevisionNotFound', f'Invalid rev id: {revision}')
        return repo, sha

    # ----------------------------------------------------------------- JSON payloads
    def _model_info(self, repo_id: str, revision: str, blobs: bool) -> dict:
        repo, sha = self._resolve(repo_id, revision)
        siblings = []
        for name, data in sorted(repo.commits[sha].items()):
            sibling: dict = {'rfilename': name}
            if blobs:
                sibling.update(size=len(data), blobId=_git_blob_oid(data),
                               lfs={'sha256': _sha256(data), 'size': len(data), 'pointerSize': 134})
            siblings.append(sibling)
        return {
            '_id': hashlib.sha1(repo_id.encode()).hexdigest()[:24], 'id': repo_id, 'modelId': repo_id,
            'author': repo_id.split('/')[0] if '/' in repo_id else None, 'sha': sha,
            'lastModified': repo.created, 'createdAt': repo.created, 'private': False, 'disabled': False,
            'gated': False, 'downloads': 0, 'likes': 0, 'tags': [], 'siblings': siblings,
        }

    def _tree(self, repo_id: str, revision: str, path: str, recursive: bool) -> list:
        repo, sha = self._resolve(repo_id, revision)
        prefix = path.strip('/') + '/' if path.strip('/') else ''
        files = {name: data for name, data in repo.commits[sha].items() if name.startswith(prefix)}
        if prefix and not files:
            raise _HubError(404, 'EntryNotFound', f'{path} does not exist on "{revision}"')
        entries: dict[str, dict] = {}
        for name, data in sorted(files.items()):
            parts = name[len(prefix):].split('/')
            for depth in range(1, len(parts)):  # folders on the way
                folder = prefix + '/'.join(parts[:depth])
                if depth == 1 or recursive:
                    entries.setdefault(folder, {'type': 'directory', 'path': folder,
                                                'oid': hashlib.sha1(folder.encode()).hexdigest()})
                if not recursive:
                    break
            if len(parts) == 1 or recursive:
                entries[name] = {'type': 'file', 'path': name, 'size': len(data), 'oid': _git_blob_oid(data),
                                 'lfs': {'oid': _sha256(data), 'size': len(data), 'pointerSize': 134}}
        return list(entries.values())

    def _create_repo(self, payload: dict) -> tuple[int, dict]:
        name, org = payload.get('name'), payload.get('organization')
        if payload.get('type') not in (None, 'model'):
            raise _HubError(400, None, 'LocalHub serves model repos only')
        if not name:
            raise _HubError(400, None, 'name is required')
        repo_id = f'{org}/{name}' if org else name
        url = f'{self.endpoint}/{repo_id}'
        if repo_id in self._repos:
            return 409, {'error': 'You already created this model repo', 'url': url}
        repo = self._repos[repo_id] = _Repo()
        self._commit(repo, 'main', {}, (), 'initial commit')
        return 200, {'url': url, 'name': repo_id, 'id': repo_id}

    def _preupload(self, repo_id: str, revision: str, payload: dict) -> dict:
        repo = self._repo(repo_id)
        sha = repo.resolve(revision)
        tree = repo.commits[sha] if sha else {}
        out = []
        for f in payload.get('files', []):
            entry = {'path': f['path'], 'uploadMode': 'regular', 'shouldIgnore': False}
            if f['path'] in tree:
                entry['oid'] = _git_blob_oid(tree[f['path']])
            out.append(entry)
        return {'files': out, 'commitOid': sha}

    def _apply_commit(self, repo_id: str, revision: str, body: bytes, create_pr: bool) -> dict:
        repo = self._repo(repo_id)
        header: dict = {}
        additions: dict[str, bytes] = {}
        deletions: list[str] = []
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item.get('key'), item.get('value', {})
            if key == 'header':
                header = value
            elif key == 'file':
                content = value['content']
                data = base64.b64decode(content) if value.get('encoding') == 'base64' else content.encode()
                additions[value['path']] = data
            elif key == 'deletedFile':
                deletions.append(value['path'])
            elif key == 'deletedFolder':
                deletions.append(value['path'].rstrip('/') + '/')
            else:
                raise _HubError(400, None, f'LocalHub cannot apply commit operation {key!r} (no LFS storage)')
        base = repo.resolve(revision)
        if base is None:
            raise _HubError(404, 'RevisionNotFound', f'Invalid rev id: {revision}')
        branch = revision
        pr_url = None
        if create_pr:
            repo.num_prs += 1
            branch = f'refs/pr/{repo.num_prs}'
            repo.branches[branch] = base
            pr_url = f'{self.endpoint}/{repo_id}/discussions/{repo.num_prs}'
        elif revision not in repo.branches:
            raise _HubError(400, None, f'Cannot commit to {revision}: not a branch')
        sha = self._commit(repo, branch, additions, deletions, header.get('summary', ''), header.get('parentCommit'))
        return {'success': True, 'commitOid': sha, 'commitUrl': f'{self.endpoint}/{repo_id}/commit/{sha}',
                'commitMessage': header.get('summary', ''), 'pullRequestUrl': pr_url}

    # ----------------------------------------------------------------- HTTP dispatch
    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        method = h.command
        split = urlsplit(h.path)
        self.requests.append((method, split.path))
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        body = b''
        length = int(h.headers.get('Content-Length') or 0)
        if length:
            body = h.rfile.read(length)
        segments = split.path.strip('/').split('/')
        try:
            with self._lock:
                if segments[0] == 'api':
                    status, payload = self._api(method, segments[1:], query, body)
                    self._send_json(h, status, payload)
                elif 'resolve' in segments[1:3] and method in ('GET', 'HEAD'):
                    self._resolve_file(h, segments)
                else:
                    raise _HubError(404, None, f'LocalHub does not serve {method} {split.path}')
        except _Stalled as stalled:
            h.send_response(stalled.status)
            for key, value in {**stalled.headers, 'Content-Length': str(len(stalled.body))}.items():
                h.send_header(key, value)
            h.end_headers()
            h.wfile.write(stalled.body[:stalled.after])
            h.wfile.flush()
            self._released.wait(timeout=300)
            try:
                h.wfile.write(stalled.body[stalled.after:])
            except OSError:  # the client was killed meanwhile
                pass
        except _HubError as e:
            self._send_json(h, e.status, {'error': e.message},
                            {**({'X-Error-Code': e.code} if e.code else {}), 'X-Error-Message': e.message, **e.headers})

    def _split_repo(self, parts: list[str]) -> tuple[str, list[str]]:
        """``[ns, name, *rest]`` or ``[name, *rest]`` -> (repo_id, rest)."""
        if len(parts) >= 2 and unquote('/'.join(parts[:2])) in self._repos:
            return unquote('/'.join(parts[:2])), parts[2:]
        if parts and unquote(parts[0]) in self._repos:
            return unquote(parts[0]), parts[1:]
        if len(parts) >= 2:
            return unquote('/'.join(parts[:2])), parts[2:]
        return unquote(parts[0]) if parts else '', []

    def _api(self, method: str, parts: list[str], query: dict, body: bytes) -> tuple[int, object]:
        if method == 'POST' and parts == ['repos', 'create']:
            return self._create_repo(json.loads(body or b'{}'))
        if method == 'POST' and parts == ['validate-yaml']:
            return 200, {'errors': [], 'warnings': []}
        if parts and parts[0] == 'models':
            repo_id, rest = self._split_repo(parts[1:])
            if method == 'GET' and not rest:
                return 200, self._model_info(repo_id, 'main', query.get('blobs') in _TRUE)
            if method == 'GET' and len(rest) == 2 and rest[0] == 'revision':
                return 200, self._model_info(repo_id, unquote(rest[1]), query.get('blobs') in _TRUE)
            if method == 'GET' and len(rest) >= 2 and rest[0] == 'tree':
                path = unquote('/'.join(rest[2:]))
                return 200, self._tree(repo_id, unquote(rest[1]), path, query.get('recursive') in _TRUE)
            if method == 'POST' and len(rest) == 2 and rest[0] == 'preupload':
                return 200, self._preupload(repo_id, unquote(rest[1]), json.loads(body or b'{}'))
            if method == 'POST' and len(rest) == 2 and rest[0] == 'commit':
                return 200, self._apply_commit(repo_id, unquote(rest[1]), body, query.get('create_pr') in _TRUE)
        raise _HubError(404, None, f'LocalHub does not serve {method} /api/{"/".join(parts)}')

    def _resolve_file(self, h: BaseHTTPRequestHandler, segments: list[str]) -> None:
        at = segments.index('resolve', 1)
        repo_id = unquote('/'.join(segments[:at]))
        if len(segments) < at + 3:
            raise _HubError(400, None, 'expected /{repo}/resolve/{revision}/{filename}')
        revision = unquote(segments[at + 1])
        filename = unquote('/'.join(segments[at + 2:]))
        repo, sha = self._resolve(repo_id, revision)
        tree = repo.commits[sha]
        if filename not in tree:
            raise _HubError(404, 'EntryNotFound', f'{filename} does not exist on "{revision}"', {'X-Repo-Commit': sha})
        data = tree[filename]
        etag = f'"{_sha256(data)}"'
        headers = {'X-Repo-Commit': sha, 'ETag': etag, 'X-Linked-Etag': etag, 'X-Linked-Size': str(len(data)),
                   'Accept-Ranges': 'bytes', 'Content-Type': 'application/octet-stream'}
        if h.command == 'HEAD':
            self._send(h, 200, b'', {**headers, 'Content-Length': str(len(data))}, head=True)
            return
        served = repo.served.get(filename, data)
        status = 200
        rng = h.headers.get('Range', '')
        if rng.startswith('bytes=') and rng[6:].endswith('-') and rng[6:-1].isdigit():
            start = int(rng[6:-1])
            headers['Content-Range'] = f'bytes {start}-{len(served) - 1}/{len(served)}'
            served, status = served[start:], 206
        if (repo_id, filename) in self._stalls:
            raise _Stalled(status, served, headers, self._stalls[(repo_id, filename)])
        self._send(h, status, served, headers)

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict, head: bool = False) -> None:
        h.send_response(status)
        for key, value in headers.items():
            h.send_header(key, value)
        if not head:
            h.send_header('Content-Length', str(len(body)))
        h.end_headers()
        if not head and body:
            h.wfile.write(body)

    def _send_json(self, h: BaseHTTPRequestHandler, status: int, payload: object, headers: dict | None = None):
        body = b'' if h.command == 'HEAD' else json.dumps(payload).encode()
        self._send(h, status, body, {'Content-Type': 'application/json', **(headers or {})})


def _make_handler(hub: LocalHub):
    class Handler(BaseHTTPRequestHandler):
        # HTTP/1.0: one request per connection, so stop() never waits on idle keep-alive sockets.
        protocol_version = 'HTTP/1.0'

        def do_GET(self):
            hub._handle(self)

        do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

        def log_message(self, format, *args):  # noqa: A002 - silence the default stderr log
            pass

    return Handler


def allow_downloads(monkeypatch) -> None:
    """Lift the session's offline mode for one test without letting huggingface_hub reach the internet.

    Besides ``constants.HF_HUB_OFFLINE = False``, this pre-empts a hidden request: with telemetry
    on, the first time a process builds request headers while online, huggingface_hub 2.4.0 fetches
    ``{constants.ENDPOINT}/api/agent-harnesses`` (user-agent "agent detection", 3 s timeout, then
    cached in ``utils._detect_agent._registry`` and in ``$HF_HOME/.agent_harnesses.json``), whatever
    ``endpoint=`` the call itself was given. Telemetry off and an empty in-process registry skip it.
    """
    from huggingface_hub import constants

    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', False)
    monkeypatch.setattr(constants, 'HF_HUB_DISABLE_TELEMETRY', True)
    fresh_request_sessions(monkeypatch)
    try:
        detect_agent = importlib.import_module('huggingface_hub.utils._detect_agent')
    except ImportError:  # older huggingface_hub: no agent detection
        return
    if getattr(detect_agent, '_registry', None) is None:
        empty = getattr(detect_agent, '_EMPTY_REGISTRY', {'standardEnvVars': [], 'harnesses': {}})
        monkeypatch.setattr(detect_agent, '_registry', empty, raising=False)


def fresh_request_sessions(monkeypatch) -> None:
    """huggingface_hub < 1.0 (requests) decides offline or online when it builds a session, and caches
    sessions per thread: after switching ``HF_HUB_OFFLINE`` a test needs a fresh cache (the previous one
    comes back afterwards). huggingface_hub >= 1.0 checks the constant on each request: nothing to do."""
    http = importlib.import_module('huggingface_hub.utils._http')
    cached = getattr(http, '_get_session_from_cache', None)
    if hasattr(cached, 'cache_clear') and hasattr(cached, '__wrapped__'):
        monkeypatch.setattr(http, '_get_session_from_cache', functools.lru_cache(cached.__wrapped__))


def point_client_at(monkeypatch, endpoint: str, cache_dir=None) -> None:
    """Point huggingface_hub (and so timm) at ``endpoint`` for the rest of a test: the recipe of
    the module docstring, applied with pytest's ``monkeypatch`` so it is undone afterwards."""
    from huggingface_hub import constants

    endpoint = endpoint.rstrip('/')
    allow_downloads(monkeypatch)
    monkeypatch.setattr(constants, 'ENDPOINT', endpoint)
    monkeypatch.setattr(constants, 'HUGGINGFACE_CO_URL_TEMPLATE', endpoint + '/{repo_id}/resolve/{revision}/{filename}')
    monkeypatch.setattr(constants, 'HF_HUB_DISABLE_IMPLICIT_TOKEN', True)
    if cache_dir is not None:
        monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(cache_dir))
    # huggingface_hub < 1.0 keeps module copies of these constants (`from .constants import ...`)
    for module in ('huggingface_hub.file_download', 'huggingface_hub.hf_api', 'huggingface_hub._commit_api'):
        module = importlib.import_module(module)
        for name in ('ENDPOINT', 'HUGGINGFACE_CO_URL_TEMPLATE') + (('HF_HUB_CACHE',) if cache_dir is not None else ()):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, getattr(constants, name))
    # huggingface_hub's module-level functions (create_repo, upload_folder, ... as timm < 1.0.16 calls
    # them) belong to an HfApi built at import, with the endpoint of that moment
    monkeypatch.setattr(importlib.import_module('huggingface_hub.hf_api').api, 'endpoint', endpoint)
