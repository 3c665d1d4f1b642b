"""A local HTTP server that answers byte-range requests, for reading GGUF headers over HTTP."""
from __future__ import annotations

import http.server
import os


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """A file server that answers Range requests (Python's own ignores them) and counts bytes."""
    served = 0

    def do_GET(self):  # noqa: N802 - http.server API
        path = self.translate_path(self.path)
        size = os.path.getsize(path)
        start, _, end = self.headers["Range"].removeprefix("bytes=").partition("-")
        start, end = int(start), min(int(end), size - 1)
        with open(path, "rb") as handle:
            handle.seek(start)
            body = handle.read(end - start + 1)
        RangeHandler.served += len(body)
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass
