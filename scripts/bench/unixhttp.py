"""HTTP/1.1 over a unix socket with the standard library, for the benchmark clients."""
import http.client
import socket


class UnixHTTPConnection(http.client.HTTPConnection):
    """An http.client connection to the server listening on the unix socket `path`."""

    def __init__(self, path, timeout=None):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if self.timeout is not None:
            s.settimeout(self.timeout)
        s.connect(self.unix_path)
        self.sock = s
