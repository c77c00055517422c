"""``view --serve PORT``: the site over HTTP on 127.0.0.1 only, for a remote machine's users (through an
SSH tunnel). Read-only (GET and HEAD), files under the site folder only, no directory listings, one
request at a time with a timeout, so a slow client cannot hold threads or memory."""
from __future__ import annotations

import http.server
import os
from functools import partial
from pathlib import Path

from ...errors import ConfigError
from .site import SiteError

HOST = "127.0.0.1"
REQUEST_TIMEOUT_S = 10


class SiteHandler(http.server.SimpleHTTPRequestHandler):
    """Files of one folder; anything that resolves outside it (a link, ``..``) or is a folder is 404."""

    timeout = REQUEST_TIMEOUT_S
    server_version = "tract-eval-view"
    sys_version = ""

    def send_head(self):
        resolved = Path(self.translate_path(self.path)).resolve()
        target = resolved / "index.html" if resolved.is_dir() else resolved  # a folder: its index.html only
        if not target.is_file() or Path(self.directory).resolve() not in target.parents:
            self.send_error(404, "File not found")
            return None
        return super().send_head()



def make_server(site: Path, port: int) -> http.server.HTTPServer:
    """A server bound to 127.0.0.1:``port`` (0: any free port) serving ``site``; call ``serve_forever``."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--serve {port}: a port is 1-65535")
    if not (Path(site) / "index.html").is_file():
        raise SiteError(f"{site}: no index.html; write the site first")
    handler = partial(SiteHandler, directory=os.fspath(Path(site).resolve()))
    try:
        return http.server.HTTPServer((HOST, port), handler)
    except OSError as exc:
        raise SiteError(f"--serve {port}: cannot listen on {HOST}:{port} ({exc.strerror or exc})") from None
