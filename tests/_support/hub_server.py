"""A small Hugging Face Hub-compatible HTTP server for tests (standard library only).

It answers the routes that ``huggingface_hub`` 2.4 calls for a push and a download, so tests run the
real client over real HTTP on 127.0.0.1:

=====  ==============================================  ==============================================
verb   route                                           answer
=====  ==============================================  ==============================================
POST   /api/repos/create                               {"url"}; 409 when the repo exists
POST   /api/validate-yaml                              {} or 400 when the model card YAML is invalid
POST   /api/models/{id}/preupload/{rev}                every file "regular" (content inline in commit)
POST   /api/models/{id}/commit/{rev}                   NDJSON header + file/deletedFile/deletedFolder
POST   /api/models/{id}/branch/{name}                  new branch at a revision; 409 when it exists
GET    /api/models/{id}[/revision/{rev}]               {id, sha, private, siblings}
GET    /api/models/{id}/tree/{rev}[/{path}]            [{type, path, size, oid}]
HEAD   /{id}/resolve/{rev}/{file}                      X-Repo-Commit, ETag, Content-Length
GET    /{id}/resolve/{rev}/{file}                      the bytes (Range "bytes=N-" honoured; ``cut_downloads``
                                                        cuts the next N GETs of a file off halfway)
=====  ==============================================  ==============================================

Revisions are branch names or full commit shas. Storage is in memory: every commit keeps a full
``{path: bytes}`` snapshot, so old commits stay downloadable after later pushes. Errors carry the
``X-Error-Code`` header the client maps to ``RepositoryNotFoundError`` / ``RevisionNotFoundError`` /
``EntryNotFoundError``. Auth headers are accepted and ignored. Every request is recorded in
``HubServer.requests`` as ``(method, path)``.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

__all__ = ["HubServer", "git_blob_oid"]

_REPO = r"(?P<repo>[\w.\-]+(?:/[\w.\-]+)?)"
_REV = r"(?P<rev>[^/]+)"


def git_blob_oid(data: bytes) -> str:
    """The git blob sha1 of ``data``: what the Hub reports as a regular file's ``oid`` and ETag."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class _Repo:
    private: bool
    branches: dict[str, str] = field(default_factory=dict)  # branch name -> commit sha
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit sha -> {path: bytes}

    def resolve(self, rev: str) -> str | None:
        if rev in self.branches:
            return self.branches[rev]
        return rev if rev in self.commits else None


class _HttpError(Exception):
    def __init__(
        self, status: int, message: str, code: str | None = None, headers: dict | None = None, extra: dict | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}
        self.extra = extra or {}  # more fields of the JSON body


class HubServer:
    """The server: ``start()`` binds a free port on 127.0.0.1 and serves from a daemon thread.

    Use as a context manager, or call ``start()`` / ``stop()``. ``endpoint`` is the base URL.
    """

    def __init__(self) -> None:
        self.repos: dict[str, _Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.cut_downloads: dict[str, int] = {}  # file path -> GETs still to cut off halfway (fault injection)
        self._lock = threading.Lock()
        self._counter = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        if self._httpd is None:
            raise RuntimeError("HubServer is not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> str:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="hub-server", daemon=True)
        self._thread.start()
        return self.endpoint

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self._httpd = None

    def __enter__(self) -> HubServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- storage helpers
    def _repo(self, repo_id: str) -> _Repo:
        if repo_id not in self.repos:
            raise _HttpError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return self.repos[repo_id]

    def _resolve(self, repo_id: str, rev: str) -> tuple[_Repo, str]:
        repo = self._repo(repo_id)
        sha = repo.resolve(unquote(rev))
        if sha is None:
            raise _HttpError(404, f"Invalid rev id: {unquote(rev)}", "RevisionNotFound")
        return repo, sha

    def _new_commit(self, repo: _Repo, files: dict[str, bytes], parent: str | None, message: str) -> str:
        self._counter += 1
        digest = hashlib.sha1(f"{parent}\n{message}\n{self._counter}".encode())
        for path in sorted(files):
            digest.update(f"{path}:{git_blob_oid(files[path])}\n".encode())
        sha = digest.hexdigest()
        repo.commits[sha] = dict(files)
        return sha

    # ----------------------------------------------------------------- routes
    def create_repo(self, body: dict) -> dict:
        name, org = body.get("name"), body.get("organization")
        if not name:
            raise _HttpError(400, "missing repo name")
        repo_id = f"{org}/{name}" if org else name
        if repo_id in self.repos:
            raise _HttpError(409, "You already created this model repo", extra={"url": f"{self.endpoint}/{repo_id}"})
        private = body.get("visibility") == "private" or bool(body.get("private"))
        repo = _Repo(private=private)
        repo.branches["main"] = self._new_commit(repo, {}, None, "initial commit")
        self.repos[repo_id] = repo
        return {"url": f"{self.endpoint}/{repo_id}", "name": repo_id}

    def validate_yaml(self, body: dict) -> dict:
        content = body.get("content", "")
        front = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", content, re.DOTALL)
        try:
            meta = yaml.safe_load(front[1]) if front else {}
            if not isinstance(meta, (dict, type(None))):
                raise yaml.YAMLError(f"the metadata must be a mapping, got {type(meta).__name__}")
        except yaml.YAMLError as err:
            raise _HttpError(400, f"Invalid metadata in README.md: {err}", extra={"errors": [{"message": str(err)}]}) from err
        return {"errors": [], "warnings": []}

    def preupload(self, repo_id: str, rev: str, body: dict) -> dict:
        repo, sha = self._resolve(repo_id, rev)
        head = repo.commits[sha]
        files = [
            {
                "path": f["path"],
                "uploadMode": "regular",
                "shouldIgnore": False,
                "oid": git_blob_oid(head[f["path"]]) if f["path"] in head else None,
            }
            for f in body.get("files", [])
        ]
        return {"files": files, "commitOid": sha}

    def commit(self, repo_id: str, rev: str, raw: bytes) -> dict:
        branch = unquote(rev)
        repo = self._repo(repo_id)
        if branch not in repo.branches:
            raise _HttpError(404, f"Invalid rev id: {branch} (commits go to an existing branch)", "RevisionNotFound")
        lines = [json.loads(line) for line in raw.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise _HttpError(400, "commit payload must start with a header line")
        header, parent = lines[0]["value"], repo.branches[branch]
        if header.get("parentCommit") not in (None, parent):
            raise _HttpError(412, f"parentCommit {header['parentCommit']} is not the head of {branch} ({parent})")
        files = dict(repo.commits[parent])
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value", {})
            if key == "file":
                if value.get("encoding") != "base64":
                    raise _HttpError(400, f"unsupported encoding {value.get('encoding')!r}")
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    raise _HttpError(404, f"cannot delete {value['path']}: no such file", "EntryNotFound")
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {p: d for p, d in files.items() if not p.startswith(prefix)}
            else:
                raise _HttpError(400, f"unsupported commit operation {key!r} (this server accepts regular files)")
        sha = self._new_commit(repo, files, parent, header.get("summary", ""))
        repo.branches[branch] = sha
        return {"commitUrl": f"{self.endpoint}/{repo_id}/commit/{sha}", "commitOid": sha, "success": True}

    def create_branch(self, repo_id: str, name: str, body: dict) -> dict:
        repo = self._repo(repo_id)
        name = unquote(name)
        if name in repo.branches:
            raise _HttpError(409, f"Reference refs/heads/{name} already exists")
        _, sha = self._resolve(repo_id, body.get("startingPoint") or "main")
        repo.branches[name] = sha
        return {}

    def repo_info(self, repo_id: str, rev: str) -> dict:
        repo, sha = self._resolve(repo_id, rev)
        files = repo.commits[sha]
        siblings = [{"rfilename": p, "size": len(d), "blobId": git_blob_oid(d)} for p, d in sorted(files.items())]
        return {"id": repo_id, "modelId": repo_id, "sha": sha, "private": repo.private, "siblings": siblings}

    def tree(self, repo_id: str, rev: str, path: str, recursive: bool) -> list[dict]:
        repo, sha = self._resolve(repo_id, rev)
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        entries, folders = [], set()
        for p, data in sorted(repo.commits[sha].items()):
            if not p.startswith(prefix):
                continue
            rest = p[len(prefix):]
            if "/" in rest and not recursive:
                folders.add(prefix + rest.split("/")[0])
                continue
            entries.append({"type": "file", "path": p, "size": len(data), "oid": git_blob_oid(data)})
        return [{"type": "directory", "path": f, "oid": "0" * 40, "size": 0} for f in sorted(folders)] + entries

    def resolve(self, repo_id: str, rev: str, path: str) -> tuple[str, bytes]:
        repo, sha = self._resolve(repo_id, rev)
        files = repo.commits[sha]
        if path not in files:
            raise _HttpError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": sha})
        return sha, files[path]


def _make_handler(server: HubServer) -> type[BaseHTTPRequestHandler]:
    posts = [
        (re.compile(r"^/api/repos/create$"), lambda m, b, raw: server.create_repo(json.loads(raw or b"{}"))),
        (re.compile(r"^/api/validate-yaml$"), lambda m, b, raw: server.validate_yaml(json.loads(raw or b"{}"))),
        (re.compile(rf"^/api/models/{_REPO}/preupload/{_REV}$"),
         lambda m, b, raw: server.preupload(m["repo"], m["rev"], json.loads(raw or b"{}"))),
        (re.compile(rf"^/api/models/{_REPO}/commit/{_REV}$"), lambda m, b, raw: server.commit(m["repo"], m["rev"], raw)),
        (re.compile(rf"^/api/models/{_REPO}/branch/{_REV}$"),
         lambda m, b, raw: server.create_branch(m["repo"], m["rev"], json.loads(raw or b"{}"))),
    ]
    gets = [
        (re.compile(rf"^/api/models/{_REPO}/revision/{_REV}$"), lambda m, q: server.repo_info(m["repo"], m["rev"])),
        (re.compile(rf"^/api/models/{_REPO}/tree/{_REV}(?:/(?P<path>.*))?$"),
         lambda m, q: server.tree(m["repo"], m["rev"], unquote(m["path"] or ""), q.get("recursive", [""])[0] in ("1", "true", "True"))),
        (re.compile(rf"^/api/models/{_REPO}$"), lambda m, q: server.repo_info(m["repo"], "main")),
    ]
    resolve = re.compile(rf"^/{_REPO}/resolve/{_REV}/(?P<path>.+)$")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
            pass

        def _send(self, status: int, body: bytes, headers: dict | None = None, head: bool = False) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, str(value))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _json(self, status: int, obj: object, headers: dict | None = None) -> None:
            self._send(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})

        def _fail(self, err: _HttpError, head: bool = False) -> None:
            headers = {"Content-Type": "application/json", "X-Error-Message": " ".join(err.message.split()), **err.headers}
            if err.code:
                headers["X-Error-Code"] = err.code
            self._send(err.status, json.dumps({"error": err.message, **err.extra}).encode(), headers, head=head)

        def _dispatch(self, method: str) -> None:
            url = urlsplit(self.path)
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if method == "POST" else b""
            server.requests.append((method, url.path))
            try:
                with server._lock:
                    if method == "POST":
                        for pattern, route in posts:
                            if m := pattern.match(url.path):
                                return self._json(200, route(m, None, raw))
                    elif (m := resolve.match(url.path)) and not url.path.startswith("/api/"):
                        return self._file(m, head=method == "HEAD")
                    elif method == "GET":
                        for pattern, route in gets:
                            if m := pattern.match(url.path):
                                return self._json(200, route(m, parse_qs(url.query)))
                raise _HttpError(404, f"no route for {method} {url.path}")
            except _HttpError as err:
                self._fail(err, head=method == "HEAD")
            except (ValueError, KeyError) as err:  # malformed request body
                self._fail(_HttpError(400, f"bad request: {err!r}"), head=method == "HEAD")

        def _file(self, m: re.Match, head: bool) -> None:
            sha, data = server.resolve(m["repo"], m["rev"], unquote(m["path"]))
            headers = {"X-Repo-Commit": sha, "ETag": f'"{git_blob_oid(data)}"', "Content-Type": "application/octet-stream"}
            status, rng = 200, self.headers.get("Range")
            if rng and (r := re.match(r"bytes=(\d+)-(\d*)$", rng)):
                start, end = int(r[1]), int(r[2]) if r[2] else len(data) - 1
                headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                data, status = data[start:end + 1], 206
            path = unquote(m["path"])
            if not head and server.cut_downloads.get(path, 0) > 0 and len(data) > 1:
                server.cut_downloads[path] -= 1
                return self._send_cut(status, data, headers)
            self._send(status, data, headers, head=head)

        def _send_cut(self, status: int, body: bytes, headers: dict) -> None:
            """Announce the whole body, send half of it, then drop the connection (a download cut off)."""
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, str(value))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

        def do_GET(self) -> None:
            self._dispatch("GET")

        def do_HEAD(self) -> None:
            self._dispatch("HEAD")

        def do_POST(self) -> None:
            self._dispatch("POST")

    return Handler
