#!/usr/bin/env python3
"""A fault proxy in front of moto, for the fault tests: it forwards AWS requests, or fails them as an outage
would, and counts what it saw. Standard library only.

    fault-proxy.py --port P --upstream http://127.0.0.1:M

Control (not forwarded):
    POST /fault-proxy/mode   {"mode": "pass" | "refuse" | "blackhole" | "throttle" | "slow" | "unavailable" | "deny",
                              "region": "us-east-1" (optional)}
        refuse:    the connection is closed without an answer (AWS unreachable)
        blackhole: the connection is accepted and never answered, until the mode changes
        throttle:  Secrets Manager and SQS calls get 400 ThrottlingException; STS passes
        stale-list: ListSecrets answers stay what the first one after the switch said (a lagging listing);
                   everything else passes
        slow:      Secrets Manager calls are forwarded after SLOW_SECONDS; STS passes at once
        unavailable: every call gets 503 ServiceUnavailable (a regional outage's server errors)
        deny:      Secrets Manager calls get 400 AccessDeniedException; STS passes
    With "region", only requests signed for that region (the SigV4 credential scope) are faulted; the
    others pass: one moto serves every region, and this fails one of them.
    GET  /fault-proxy/stats  {"mode": ..., "forwarded": n, "faulted": n, "faulted_by_action": {...}}
"""

import argparse
import http.client
import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

state = {"mode": "pass", "region": None, "forwarded": 0, "faulted": 0, "faulted_by_action": {}, "frozen_list": None}
lock = threading.Lock()
mode_changed = threading.Condition(lock)
SLOW_SECONDS = 0.3


def region_of(headers):
    """The region of a SigV4 signature: Credential=AKID/date/REGION/service/aws4_request."""
    authorization = headers.get("Authorization") or ""
    credential = authorization.partition("Credential=")[2].split(",")[0]
    parts = credential.split("/")
    return parts[2] if len(parts) > 2 else None


def action_of(headers, body):
    target = headers.get("X-Amz-Target")
    if target:
        return target.rsplit(".", 1)[-1]
    params = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
    return params.get("Action", ["?"])[0]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    upstream = None

    def log_message(self, *args):
        pass

    def control(self, body):
        if self.path == "/fault-proxy/mode" and self.command == "POST":
            with lock:
                request = json.loads(body)
                state["mode"] = request["mode"]
                state["region"] = request.get("region")
                state["frozen_list"] = None
                mode_changed.notify_all()
        with lock:
            answer = json.dumps({k: v for k, v in state.items() if k != "frozen_list"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def count_fault(self, action):
        state["faulted"] += 1
        by_action = state["faulted_by_action"]
        by_action[action] = by_action.get(action, 0) + 1

    def handle_any(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path.startswith("/fault-proxy/"):
            return self.control(body)
        action = action_of(self.headers, body)
        is_sts = self.headers.get("X-Amz-Target") is None
        with lock:
            mode = state["mode"]
            if mode in ("throttle", "slow", "deny") and is_sts:
                mode = "pass"
            if state["region"] is not None and region_of(self.headers) != state["region"]:
                mode = "pass"
            if mode == "stale-list":
                if action != "ListSecrets":
                    mode = "pass"
                elif state["frozen_list"] is not None:
                    self.count_fault(action)
                    return self.answer(*state["frozen_list"])
            if mode not in ("pass", "slow"):
                self.count_fault(action)
            if mode == "blackhole":
                while state["mode"] == "blackhole":
                    mode_changed.wait()
                self.close_connection = True
                return
        if mode == "refuse":
            self.close_connection = True
            return
        if mode == "slow":
            time.sleep(SLOW_SECONDS)
        if mode == "throttle":
            return self.error(400, "ThrottlingException", "Rate exceeded")
        if mode == "unavailable":
            return self.error(503, "ServiceUnavailable", "Service is unavailable in this region")
        if mode == "deny":
            return self.error(400, "AccessDeniedException", "not authorized to perform this action")
        self.forward(body)

    def error(self, status, code, message):
        answer = json.dumps({"__type": code, "message": message}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def forward(self, body):
        connection = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
        connection.request(self.command, self.path, body=body, headers=headers)
        response = connection.getresponse()
        answer = (response.status, response.getheaders(), response.read())
        connection.close()
        with lock:
            state["forwarded"] += 1
            if state["mode"] == "stale-list" and action_of(self.headers, body) == "ListSecrets":
                state["frozen_list"] = answer
        self.answer(*answer)

    def answer(self, status, headers, body):
        self.send_response(status)
        for key, value in headers:
            if key.lower() not in ("connection", "transfer-encoding", "content-length", "server", "date"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = handle_any


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    Handler.upstream = urllib.parse.urlparse(args.upstream)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
