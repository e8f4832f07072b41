"""A file server on 127.0.0.1 for the download tests: serves bytes from memory, honours
``Range`` requests (or pretends not to), counts requests, and can drop a connection
midway the way a flaky mirror does."""

from __future__ import annotations

import hashlib
import re
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class LoopbackServer:
    """Use as a context manager; ``url(name)`` is where ``files[name]`` is served."""

    def __init__(self, files: dict[str, bytes] | None = None, ranges: bool = True):
        self.files = dict(files or {})
        self.ranges = ranges
        self.content_types: dict[str, str] = {}
        self.requests: list[tuple[str, str | None]] = []  # (name, Range header)
        self._drops: dict[str, int] = {}
        self._lock = threading.Lock()

    def serve(self, name: str, data: bytes, content_type: str | None = None) -> str:
        """Serve ``data`` as ``name`` (with a Content-Type header if given, as a package
        index's pages need); returns its URL."""
        self.files[name] = data
        if content_type is not None:
            self.content_types[name] = content_type
        return self.url(name)

    def url(self, name: str) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/{urllib.parse.quote(name)}"

    def drop_next(self, name: str, after_bytes: int) -> None:
        """The next request for ``name`` sends ``after_bytes`` of the body, then hangs up."""
        self._drops[name] = after_bytes

    def requests_for(self, name: str) -> list[str | None]:
        """The Range header of each request for ``name`` (None: a plain GET)."""
        return [ranged for served, ranged in self.requests if served == name]

    def __enter__(self) -> LoopbackServer:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


def _handler_for(server: LoopbackServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            name = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")
            requested_range = self.headers.get("Range")
            with server._lock:
                server.requests.append((name, requested_range))
                drop_after = server._drops.pop(name, None)
            data = server.files.get(name)
            if data is None:
                self.send_error(404, "no such file")
                return
            start = 0
            match = re.fullmatch(r"bytes=(\d+)-", requested_range or "")
            if server.ranges and match:
                start = int(match.group(1))
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            if server.ranges:
                self.send_header("Accept-Ranges", "bytes")
            if name in server.content_types:
                self.send_header("Content-Type", server.content_types[name])
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if drop_after is not None:
                self.wfile.write(body[:drop_after])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    return Handler


def md5_of(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
