"""Driving `ebb up` from a benchmark: start it with an `ebb.yaml`, read its `/status`, wait for a service to be at
zero, and read its JSON log back as timestamped events. Shared by benches/local/cold_start.py and
benches/gpu/cold_start.py. Standard library only.
"""
import json
import os
import socket
import subprocess
import tempfile
import threading
import time
from datetime import datetime


def log_time(line):
    """The epoch seconds of one JSON log line ("2026-11-22T04:03:12.523523Z", as tracing writes it)."""
    t = line["timestamp"].rstrip("Z")
    base, frac = (t.split(".") + ["0"])[:2]
    return datetime.fromisoformat(base + "+00:00").timestamp() + float("0." + frac)


def fields(line):
    """A log line's fields (message included)."""
    return line.get("fields", {})


def http_request(host, port, method, path, body=b"", headers=(), service=None):
    """An open connection to host:port and the bytes of one HTTP/1.1 request (Connection: close) to send on it."""
    s = socket.create_connection((host, int(port)))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    head = f"{method} {path} HTTP/1.1\r\nHost: {service or host}\r\nContent-Length: {len(body)}\r\n"
    head += "Connection: close\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    return s, head.encode() + body


def get_json(addr, path):
    """GET a JSON document over HTTP/1.1 from "host:port"."""
    host, port = addr.rsplit(":", 1)
    s, req = http_request(host, port, "GET", path)
    s.sendall(req)
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    head, body = data.split(b"\r\n\r\n", 1)
    if b"chunked" in head.lower():
        body = dechunk(body)
    return json.loads(body)


def dechunk(body):
    """The payload of a complete chunked body."""
    out = b""
    while body:
        size, rest = body.split(b"\r\n", 1)
        n = int(size.split(b";")[0], 16)
        if n == 0:
            break
        out += rest[:n]
        body = rest[n + 2:]
    return out


class EbbUp:
    """One `ebb up` process with a given ebb.yaml, logging JSON to a file, on free ports."""

    def __init__(self, ebb, yaml_text, workdir=None, env=None, extra_args=()):
        self.dir = workdir or tempfile.mkdtemp(prefix="ebb-up-")
        os.makedirs(self.dir, exist_ok=True)
        self.yaml = os.path.join(self.dir, "ebb.yaml")
        with open(self.yaml, "w") as f:
            f.write(yaml_text)
        self.log_path = os.path.join(self.dir, "up.log")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [ebb, "up", "--port", "0", "--metrics-port", "0", "--log-format", "json", *extra_args, "-f", self.yaml],
            stdout=subprocess.PIPE, stderr=self._log, text=True, start_new_session=True,
            env=dict(os.environ, **(env or {})))
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"ebb up exited before listening; see {self.log_path}")
        addrs = json.loads(line)
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()
        self.gateway = addrs["gateway"]
        self.metrics = addrs["metrics"]

    def status(self, service):
        """The service's entry in /status (autoscaler view plus in_flight, queued, terminating)."""
        for s in get_json(self.metrics, "/status")["services"]:
            if s["name"] == service:
                return s
        raise KeyError(service)

    def wait_for(self, service, pred, what, timeout=60):
        end = time.time() + timeout
        while time.time() < end:
            s = self.status(service)
            if pred(s):
                return s
            time.sleep(0.05)
        raise SystemExit(f"{service}: {what} not reached in {timeout} s; see {self.log_path}")

    def wait_zero(self, service, timeout=60):
        """Until the service wants no pod and none is left, terminating ones included."""
        return self.wait_for(service, lambda s: s["desired"] == 0 and s["pods"] == 0
                             and s.get("terminating", 0) == 0, "zero pods", timeout)

    def events(self, since=0.0):
        """The JSON log lines written at or after `since` (epoch seconds), each with its time as `_t`."""
        out = []
        with open(self.log_path) as f:
            for raw in f:
                # A workload's own stderr shares the file; a JSON line may follow its text on one line.
                at = raw.find('{"timestamp"')
                if at > 0:
                    raw = raw[at:]
                try:
                    line = json.loads(raw)
                    t = log_time(line)
                except (ValueError, KeyError):
                    continue
                if t >= since - 0.001:
                    line["_t"] = t
                    out.append(line)
        return out

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()
        self._log.close()


def first(events, pred):
    """The time of the first event that matches, or None."""
    for e in events:
        if pred(e):
            return e["_t"]
    return None


def decision_time(events, desired=1):
    """When the autoscaler first decided `desired` pods."""
    return first(events, lambda e: e.get("target") == "ebb::decision" and fields(e).get("desired") == desired)


def message_time(events, message, target=None):
    """When a log line with this message first appeared (optionally from this target)."""
    return first(events, lambda e: fields(e).get("message") == message
                 and (target is None or e.get("target") == target))


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else None


def percentile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else None
