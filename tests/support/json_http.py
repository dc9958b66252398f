"""What the tests' small HTTP servers share (webhook_receiver.py, smtp_sink.py): a quiet,
threaded server that ignores clients going away, and a handler that reads bodies (chunked too),
answers JSON and applies a JSON configuration."""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DISCONNECTED = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)


class JsonHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    sys_version = ""

    def log_message(self, format, *args):
        pass

    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def answer(self, status, payload=None, headers=()):
        data = b"" if payload is None else json.dumps(payload).encode()
        try:
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            if payload is not None:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if data:
                self.wfile.write(data)
            self.wfile.flush()
        except DISCONNECTED:
            self.close_connection = True

    def configure(self, body, apply_config):
        """Applies a JSON configuration body with `apply_config` (which returns an error or
        None): 204, or 400 saying what is wrong."""
        try:
            config = json.loads(body or b"{}")
        except ValueError as error:
            self.answer(400, {"error": "the config is not JSON: {}".format(error)})
            return
        error = apply_config(config)
        if error:
            self.answer(400, {"error": error})
        else:
            self.answer(204)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        # A client that went away is normal (a test that timed out a hanging request); any other
        # failure is printed to stderr, and the server keeps serving.
        if isinstance(sys.exc_info()[1], DISCONNECTED):
            return
        super().handle_error(request, client_address)
