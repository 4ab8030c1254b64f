"""A small stand-in for the Hugging Face Hub on 127.0.0.1, for push tests.

It speaks just what huggingface_hub 1.33 sends for an upload (read from its sources:
hf_api.py whoami/create_repo/create_branch/_validate_yaml, _commit_api.py preupload and commit,
lfs.py batch + basic transfer + verify), keeps the repositories in memory and records every
request, so a test can check what arrived, with which flags and which credentials.

    with HubServer(token="hf_x") as hub:   # hub.url is the HF_ENDPOINT
        ...
        hub.repos["me/model"].files("main")  → {path: bytes}

Failures on demand: `hub.fail[route] = status` answers a route (a regular expression matched against
"METHOD /path") with that status, `hub.drop.add(route)` closes the connection without an answer (a
transport error); `hub.transient[route] = [503, None]` answers the first matching requests in turn
(None drops the connection), then normally: failures that huggingface_hub retries. Error answers echo the request's URL (query string included) and its
Authorization header back in the body and in X-Error-Message, as a careless proxy would, so a
client that shows server messages as they are would show the token.
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
from urllib.parse import unquote, urlsplit

LFS_MIN_SIZE = 1_000_000  # the real Hub sends big or binary files to LFS; so do we


@dataclass
class Repo:
    private: bool
    branches: dict[str, dict[str, bytes]] = field(default_factory=lambda: {"main": {}})
    commits: list[dict] = field(default_factory=list)

    def files(self, branch: str = "main") -> dict[str, bytes]:
        return self.branches[branch]


@dataclass
class Request:
    method: str
    path: str
    authorization: str | None
    body: bytes
    target: str = ""  # the request target as sent: path and query string
    headers: list[tuple[str, str]] = field(default_factory=list)  # every header, Authorization included


class HubServer:
    def __init__(self, token: str, user: str = "tester"):
        self.token, self.user = token, user
        self.repos: dict[str, Repo] = {}
        self.blobs: dict[str, bytes] = {}  # LFS objects by sha256
        self.requests: list[Request] = []
        self.fail: dict[str, int] = {}  # route regex → status to answer with
        self.drop: set[str] = set()  # route regexes whose connection is closed without an answer
        self.transient: dict[str, list] = {}  # route regex → statuses (None: drop) for its next requests
        self.signature = "sIgNeDuRlSeCrEt42"  # the query string of our pre-signed upload URLs
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "HubServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def received(self) -> bytes:
        """Everything a client sent except the Authorization header of Hub API calls (where the token
        belongs): request lines with their query strings, the other headers and the bodies, to search
        for leaks. Uploads to storage URLs (/lfs-store/, pre-signed) must not carry the token at all."""
        parts = []
        for r in self.requests:
            headers = [(k, v) for k, v in r.headers
                       if k.lower() != "authorization" or r.path.startswith("/lfs-store/")]
            parts.append(f"{r.method} {r.target}\n".encode() + "".join(f"{k}: {v}\n" for k, v in headers).encode()
                         + r.body)
        return b"\n".join(parts)

    def _matches(self, routes, method: str, path: str) -> bool:
        return any(re.fullmatch(route, f"{method} {path}") for route in routes)

    # ---- endpoints ---------------------------------------------------------------------------------------------

    def route(self, method: str, path: str, body: bytes, authorized: bool) -> tuple[int, object]:
        if path.startswith("/lfs-store/") and method == "PUT":  # our own pre-signed upload URLs: no auth
            return self.lfs_store(path.rsplit("/", 1)[1], body)
        if not authorized:
            return 401, {"error": "Invalid credentials in Authorization header"}
        if method == "GET" and path == "/api/whoami-v2":
            return 200, {"type": "user", "name": self.user, "orgs": [], "auth": {"type": "access_token"}}
        if method == "POST" and path == "/api/repos/create":
            return self.create_repo(json.loads(body))
        if method == "POST" and path == "/api/validate-yaml":
            return 200, {"errors": [], "warnings": []}
        match = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(branch|preupload|commit)/(.+)", path)
        if match and method == "POST":
            repo_id, action, revision = match.group(1), match.group(2), unquote(match.group(3))
            if repo_id not in self.repos:
                return 404, {"error": "Repository not found"}
            return getattr(self, action)(self.repos[repo_id], repo_id, revision, body)
        match = re.fullmatch(r"/([^/]+/[^/]+)\.git/info/lfs/objects/batch", path)
        if match and method == "POST":
            return self.lfs_batch(json.loads(body))
        match = re.fullmatch(r"/lfs-verify/([0-9a-f]{64})", path)
        if match and method == "POST":
            return (200, {}) if match.group(1) in self.blobs else (404, {"error": "object not found"})
        return 404, {"error": f"no route {method} {path}"}

    def create_repo(self, payload: dict) -> tuple[int, object]:
        repo_id = f"{payload.get('organization') or self.user}/{payload['name']}"
        if repo_id in self.repos:
            return 409, {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"}
        self.repos[repo_id] = Repo(private=payload.get("visibility") == "private")
        return 200, {"url": f"{self.url}/{repo_id}", "name": repo_id}

    def branch(self, repo: Repo, repo_id: str, name: str, body: bytes) -> tuple[int, object]:
        if name in repo.branches:
            return 409, {"error": "Reference already exists"}
        start = (json.loads(body) if body else {}).get("startingPoint") or "main"
        repo.branches[name] = dict(repo.branches[start])
        return 200, {}

    def preupload(self, repo: Repo, repo_id: str, revision: str, body: bytes) -> tuple[int, object]:
        files = []
        for item in json.loads(body)["files"]:
            sample = base64.b64decode(item["sample"])
            lfs = item["size"] >= LFS_MIN_SIZE or b"\x00" in sample
            files.append({"path": item["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                          "oid": None})
        return 200, {"files": files, "commitOid": "0" * 40}

    def lfs_batch(self, payload: dict) -> tuple[int, object]:
        objects = []
        for obj in payload["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.blobs:
                entry["actions"] = {"upload": {"href": f"{self.url}/lfs-store/{obj['oid']}?X-Amz-Signature="
                                                       f"{self.signature}"},
                                    "verify": {"href": f"{self.url}/lfs-verify/{obj['oid']}"}}
            objects.append(entry)
        return 200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}

    def lfs_store(self, oid: str, body: bytes) -> tuple[int, object]:
        if hashlib.sha256(body).hexdigest() != oid:
            return 400, {"error": "content does not match its oid"}
        self.blobs[oid] = body
        return 200, {}

    def commit(self, repo: Repo, repo_id: str, revision: str, body: bytes) -> tuple[int, object]:
        if revision not in repo.branches:
            return 404, {"error": f"Invalid rev id: {revision}"}
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next(line["value"] for line in lines if line["key"] == "header")
        staged = dict(repo.branches[revision])
        for line in lines:
            value = line["value"]
            if line["key"] == "file":
                staged[value["path"]] = base64.b64decode(value["content"])
            elif line["key"] == "lfsFile":
                if value["oid"] not in self.blobs:
                    return 422, {"error": f"LFS object {value['oid']} was never uploaded"}
                staged[value["path"]] = self.blobs[value["oid"]]
        repo.branches[revision] = staged
        oid = hashlib.sha1(json.dumps(sorted((k, hashlib.sha256(v).hexdigest()) for k, v in staged.items()))
                           .encode()).hexdigest()
        repo.commits.append({"branch": revision, "summary": header["summary"], "oid": oid})
        return 200, {"success": True, "commitOid": oid, "commitUrl": f"{self.url}/{repo_id}/commit/{oid}"}


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                handler.rfile.readline()
                return b"".join(chunks)
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
    return handler.rfile.read(int(handler.headers.get("Content-Length") or 0))


def _handler(server: HubServer) -> type:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            body = _read_body(self)
            path = urlsplit(self.path).path
            auth = self.headers.get("Authorization")
            with server.lock:
                server.requests.append(Request(self.command, path, auth, body, self.path, list(self.headers.items())))
                queued = next((answers for route, answers in server.transient.items()
                               if answers and re.fullmatch(route, f"{self.command} {path}")), None)
                once = queued.pop(0) if queued else 0
                if once is None or server._matches(server.drop, self.command, path):
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                injected = once or next((status for route, status in server.fail.items()
                                         if re.fullmatch(route, f"{self.command} {path}")), None)
                if injected is not None:  # a careless proxy: echoes the URL and the credentials
                    code, payload = injected, {"error": f"failed {self.command} {self.path} (Authorization: {auth})"}
                else:
                    code, payload = server.route(self.command, path, body, auth == f"Bearer {server.token}")
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if code >= 400:
                self.send_header("X-Error-Message", str(payload.get("error", "")) if isinstance(payload, dict) else "")
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = _serve

        def log_message(self, *args) -> None:  # keep test output clean
            pass

    return Handler
