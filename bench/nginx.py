"""Start nginx on 127.0.0.1 serving a directory, for side-by-side benchmarks.

One process (``master_process off``, ``daemon off``), so its pid is the one serving: its CPU time
and memory can be read from ``/proc``. The access log records ``$bytes_sent`` (headers and body
of every response) so a bench can sum what nginx put on the wire.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

CONFIG = """\
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{ worker_connections 256; }}
http {{
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    default_type application/octet-stream;
    log_format bytes '$status $bytes_sent $request_uri';
    access_log {prefix}/access.log bytes;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""


class NginxError(Exception):
    """nginx is missing or did not start."""


def free_port() -> int:
    """A port nobody listens on right now (nginx cannot be told to pick one)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """Wait until something accepts connections on ``port``; NginxError if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise NginxError(f"server exited with {proc.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise NginxError(f"nothing listens on port {port} after {timeout:.0f} s")


class Nginx:
    """A running nginx serving ``root`` at ``url``; its files (config, logs) live in ``prefix``."""

    def __init__(self, root: Path, prefix: Path) -> None:
        nginx = shutil.which("nginx")
        if nginx is None:
            raise NginxError("nginx is not installed (apt-get install nginx-light)")
        prefix.mkdir(parents=True, exist_ok=True)
        (prefix / "tmp").mkdir(exist_ok=True)
        self.prefix = prefix
        self.access_log = prefix / "access.log"
        # Another process may take the port between free_port() and nginx's bind: try again.
        for _ in range(3):
            self.port = free_port()
            conf = prefix / "nginx.conf"
            conf.write_text(CONFIG.format(prefix=prefix, port=self.port, root=root))
            cmd = [nginx, "-c", str(conf), "-p", str(prefix), "-e", str(prefix / "error.log")]
            self.proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
            try:
                wait_for_port(self.port, self.proc)
                break
            except NginxError:
                self.stop()
        else:
            raise NginxError(f"nginx did not start: {(prefix / 'error.log').read_text().strip()}")
        self.url = f"http://127.0.0.1:{self.port}/"

    @property
    def pid(self) -> int:
        """The serving process."""
        return self.proc.pid

    def log_offset(self) -> int:
        """The access log's current size, to sum only the lines written after it."""
        return self.access_log.stat().st_size if self.access_log.exists() else 0

    def bytes_sent_since(self, offset: int) -> tuple[int, int]:
        """Responses logged since ``offset`` (each line written once it is sent), and their bytes."""
        with open(self.access_log, "rb") as f:
            f.seek(offset)
            lines = f.read().splitlines()
        return len(lines), sum(int(line.split()[1]) for line in lines)

    def stop(self) -> None:
        """Stop nginx (SIGTERM, then SIGKILL after 10 s)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
