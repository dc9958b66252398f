#!/usr/bin/env python3
"""A real SMTP server for outbound email, started by the e2e tests as a subprocess.

Usage: python3 smtp_sink.py --smtp-port 0 --http-port 0
Binds 127.0.0.1 on the given ports (0 = any free port): plain SMTP with aiosmtpd (PyPI
`aiosmtpd`; no TLS, no authentication) on one, a JSON control API on the other. Once both
listen, prints one line `listening <smtp port> <http port>`.

Control endpoints (JSON):
  POST /configure  {"reject": N, "rejectPermanent": M}
                   Any field left out keeps its previous value. Answers 204.
                   reject: the next N messages get `451 4.3.0 try again later` at DATA.
                   rejectPermanent: the next M messages after those get `550 5.1.1 no such user`
                     at DATA.
  GET  /messages   [{"from", "to", "subject", "messageId", "body", "receivedAt"}, ...]: every
                   accepted message in arrival order. from: the envelope sender (`<>` for the
                   null sender); to: the envelope recipients; subject: the decoded Subject
                   header; messageId: the Message-ID header; body: the text/plain body, decoded,
                   its lines ending in LF (not the wire's CRLF); receivedAt: unix seconds (a
                   float). A header or body the message lacks is null.
  GET  /rejected   The messages rejected at DATA, in the same form plus "code" (451 or 550).
"""

import argparse
import asyncio
import email
import email.policy
import logging
import threading
import time

from aiosmtpd.smtp import SMTP

from json_http import DISCONNECTED, JsonHandler, Server
TRANSIENT = "451 4.3.0 try again later"
PERMANENT = "550 5.1.1 no such user"


class State:
    """What the tests configured and what arrived, behind one lock."""

    def __init__(self):
        self.lock = threading.Lock()
        self.reject = 0
        self.reject_permanent = 0
        self.messages = []
        self.rejected = []


STATE = State()


def is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def apply_config(config):
    """Validates the whole config first, so a bad one changes nothing. Returns an error or None."""
    if not isinstance(config, dict):
        return "the config must be a JSON object"
    for field in ("reject", "rejectPermanent"):
        if field in config and not is_count(config[field]):
            return "{} must be a number of messages, at least 0".format(field)
    with STATE.lock:
        if "reject" in config:
            STATE.reject = config["reject"]
        if "rejectPermanent" in config:
            STATE.reject_permanent = config["rejectPermanent"]
    return None


def header(message, name):
    value = message[name]
    return None if value is None else str(value)


def describe(envelope, received_at):
    """One message as GET /messages lists it."""
    raw = envelope.original_content or envelope.content or b""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogateescape")
    message = email.message_from_bytes(raw, policy=email.policy.default)
    part = message.get_body(preferencelist=("plain",))
    try:
        body = None if part is None else part.get_content().replace("\r\n", "\n")
    except (LookupError, ValueError):  # an unknown charset or a broken encoding
        body = None
    return {
        "from": envelope.mail_from,
        "to": list(envelope.rcpt_tos),
        "subject": header(message, "Subject"),
        "messageId": header(message, "Message-ID"),
        "body": body,
        "receivedAt": received_at,
    }


class Sink:
    """The aiosmtpd handler: every message is recorded, or rejected as configured."""

    async def handle_DATA(self, server, session, envelope):
        received_at = time.time()
        with STATE.lock:
            if STATE.reject > 0:
                STATE.reject -= 1
                answer = TRANSIENT
            elif STATE.reject_permanent > 0:
                STATE.reject_permanent -= 1
                answer = PERMANENT
            else:
                answer = None
        message = describe(envelope, received_at)
        with STATE.lock:
            if answer is None:
                STATE.messages.append(message)
            else:
                message["code"] = int(answer[:3])
                STATE.rejected.append(message)
        return answer or "250 2.0.0 OK"


class Handler(JsonHandler):
    server_version = "smtp-sink"

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        with STATE.lock:
            if path == "/messages":
                listed = [dict(m) for m in STATE.messages]
            elif path == "/rejected":
                listed = [dict(m) for m in STATE.rejected]
            else:
                listed = None
        if listed is None:
            self.answer(404, {"error": "not found"})
        else:
            self.answer(200, listed)

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
        if self.path.split("?", 1)[0] != "/configure":
            self.answer(404, {"error": "not found"})
            return
        self.configure(body, apply_config)


async def serve(smtp_port, http):
    loop = asyncio.get_running_loop()
    handler = Sink()
    # A fixed hostname: aiosmtpd would otherwise ask for the FQDN, which can be slow.
    smtp = await loop.create_server(
        lambda: SMTP(handler, hostname="smtp-sink", ident="smtp-sink", enable_SMTPUTF8=True),
        host="127.0.0.1",
        port=smtp_port,
    )
    threading.Thread(target=http.serve_forever, daemon=True).start()
    print("listening {} {}".format(smtp.sockets[0].getsockname()[1], http.server_address[1]), flush=True)
    async with smtp:
        await smtp.serve_forever()


def main():
    parser = argparse.ArgumentParser(description="An SMTP sink for the e2e tests.")
    parser.add_argument("--smtp-port", type=int, default=0, help="SMTP on 127.0.0.1; 0 picks a free port")
    parser.add_argument("--http-port", type=int, default=0, help="control on 127.0.0.1; 0 picks a free port")
    args = parser.parse_args()
    # aiosmtpd logs every session; only its errors reach stderr.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    http = Server(("127.0.0.1", args.http_port), Handler)
    try:
        asyncio.run(serve(args.smtp_port, http))
    except KeyboardInterrupt:
        pass
    finally:
        http.server_close()


if __name__ == "__main__":
    main()
