#!/usr/bin/env python3
"""A real HTTP receiver for outbound Standard Webhooks, started by the e2e tests as a subprocess.

Usage: python3 webhook_receiver.py --port 0
Binds 127.0.0.1 on the given port (0 = any free port) and prints one line `listening <port>`.

Control endpoints (JSON):
  POST /_control/config   {"secret": "whsec_..." | null, "responses": [503, 503], "default": 200,
                           "hang_seconds": 0, "retry_after": null}
                          Any field left out keeps its previous value. Answers 204.
                          secret: verifies every delivery with it; null records verified=false
                            without rejecting.
                          responses: replaces the queue of statuses for the next deliveries,
                            taken one a delivery in arrival order.
                          default: the status once the queue is empty.
                          hang_seconds: sleep this long before answering every delivery.
                          retry_after: a Retry-After value sent with 429 and 503 answers.
  GET  /_control/received {"received": [{"webhookId", "timestamp", "signature", "verified",
                           "error", "status", "body", "path", "at"}, ...]} in arrival order.

Any other POST is a delivery. It is recorded when it arrives (with the status it gets), then
verified with the configured secret. A delivery that fails verification gets 401 and does not
take a status from the queue.
"""

import argparse
import json
import threading
import time

from standardwebhooks import Webhook

CONTROL_PREFIX = "/_control/"
from json_http import DISCONNECTED, JsonHandler, Server


class State:
    """What the tests configured and what arrived, behind one lock."""

    def __init__(self):
        self.lock = threading.Lock()
        self.secret = None
        self.responses = []
        self.default = 200
        self.hang_seconds = 0.0
        self.retry_after = None
        self.received = []


STATE = State()


def is_status(value):
    return isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599


def apply_config(config):
    """Validates the whole config first, so a bad one changes nothing. Returns an error or None."""
    if not isinstance(config, dict):
        return "the config must be a JSON object"
    if "secret" in config and not (config["secret"] is None or isinstance(config["secret"], str)):
        return "secret must be a string or null"
    if "responses" in config and not (
        isinstance(config["responses"], list) and all(is_status(s) for s in config["responses"])
    ):
        return "responses must be a list of HTTP statuses"
    if "default" in config and not is_status(config["default"]):
        return "default must be an HTTP status"
    hang = config.get("hang_seconds", 0)
    if hang is None:
        hang = 0
    if isinstance(hang, bool) or not isinstance(hang, (int, float)) or hang < 0:
        return "hang_seconds must be a number of seconds, at least 0"
    retry_after = config.get("retry_after")
    if not (retry_after is None or isinstance(retry_after, str)
            or (isinstance(retry_after, int) and not isinstance(retry_after, bool))):
        return "retry_after must be a string, an integer or null"
    with STATE.lock:
        if "secret" in config:
            STATE.secret = config["secret"]
        if "responses" in config:
            STATE.responses = list(config["responses"])
        if "default" in config:
            STATE.default = config["default"]
        if "hang_seconds" in config:
            STATE.hang_seconds = float(hang)
        if "retry_after" in config:
            STATE.retry_after = None if retry_after is None else str(retry_after)
    return None


def verify(secret, body, headers):
    """(verified, error) for one delivery under the configured secret."""
    if secret is None:
        return False, None
    try:
        Webhook(secret).verify(body, headers, json_parse=False)
        return True, None
    except Exception as error:  # WebhookVerificationError, or a secret that is not base64
        return False, str(error) or type(error).__name__


class Handler(JsonHandler):
    server_version = "webhook-receiver"

    def do_GET(self):
        try:
            if self.path.split("?", 1)[0] == CONTROL_PREFIX + "received":
                with STATE.lock:
                    received = [dict(r) for r in STATE.received]
                self.answer(200, {"received": received})
            else:
                self.answer(404, {"error": "not found"})
        except DISCONNECTED:
            self.close_connection = True

    def do_POST(self):
        try:
            body = self.read_body()
        except DISCONNECTED:
            self.close_connection = True
            return
        except ValueError:
            self.answer(400, {"error": "unreadable body"})
            self.close_connection = True
            return
        path = self.path.split("?", 1)[0]
        if path.startswith(CONTROL_PREFIX):
            self.control(path, body)
        else:
            self.deliver(body)

    def control(self, path, body):
        if path != CONTROL_PREFIX + "config":
            self.answer(404, {"error": "not found"})
            return
        self.configure(body, apply_config)

    def deliver(self, body):
        arrived = time.time()
        headers = {name.lower(): value for name, value in self.headers.items()}
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        with STATE.lock:
            secret = STATE.secret
            hang = STATE.hang_seconds
            retry_after = STATE.retry_after
        verified, error = verify(secret, body, headers)
        with STATE.lock:
            if secret is not None and not verified:
                status = 401
            elif STATE.responses:
                status = STATE.responses.pop(0)
            else:
                status = STATE.default
            STATE.received.append({
                "webhookId": headers.get("webhook-id"),
                "timestamp": headers.get("webhook-timestamp"),
                "signature": headers.get("webhook-signature"),
                "verified": verified,
                "error": error,
                "status": status,
                "body": parsed,
                "path": self.path,
                "at": arrived,
            })
        if hang > 0:
            time.sleep(hang)
        extra = []
        if retry_after is not None and status in (429, 503):
            extra.append(("Retry-After", retry_after))
        payload = {"status": status}
        if error:
            payload["error"] = error
        self.answer(status, payload, extra)


def main():
    parser = argparse.ArgumentParser(description="A Standard Webhooks receiver for the e2e tests.")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1; 0 picks a free one")
    args = parser.parse_args()
    server = Server(("127.0.0.1", args.port), Handler)
    print("listening {}".format(server.server_address[1]), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
