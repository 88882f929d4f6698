#!/usr/bin/env python3
"""Local cold start, phase by phase: runs `ebb up` with a demo model that takes 100 ms to start, waits for it to
be at zero, sends one request, and splits the time to its first byte using ebb up's JSON log:

  arrival -> decision        the activator's cold-start stat reaches the autoscaler, which decides (1 pod)
  decision -> spawned        pod-supervisor, queue-proxy and model processes started, queue-proxy listening
  spawned -> ready           the queue-proxy finds the model accepting (includes the model's 100 ms start-up)
  ready -> first byte        the activator's probe sees the pod ready, forwards, the response starts

ebb's share is the total minus the model's start-up. Usage: cold_start.py EBB_BINARY [ROUNDS]
"""
import json, os, socket, subprocess, sys, tempfile, threading, time
from datetime import datetime

EBB = sys.argv[1]
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 5
STARTUP_MS = 100

def ts(line):
    # "2026-11-22T04:03:12.523523Z" -> epoch seconds
    t = line["timestamp"].rstrip("Z")
    base, frac = (t.split(".") + ["0"])[:2]
    return datetime.fromisoformat(base + "+00:00").timestamp() + float("0." + frac)

tmp = tempfile.mkdtemp(prefix="ebb-cold-")
yaml = os.path.join(tmp, "ebb.yaml")
with open(yaml, "w") as f:
    f.write(f"""config:
  scale-to-zero-grace-period: 1s
services:
  - name: cold
    command: [{EBB}, demo-model, --startup-delay, {STARTUP_MS}ms, --time-to-first-token, 0s, --tokens-per-second, '0']
    annotations:
      autoscaling.knative.dev/window: 6s
      ebb.dev/container-concurrency: 4
""")
log_path = os.path.join(tmp, "up.log")
log = open(log_path, "w")
up = subprocess.Popen([EBB, "up", "--port", "0", "--metrics-port", "0", "--log-format", "json", "-f", yaml],
                      stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True)
addrs = json.loads(up.stdout.readline())
threading.Thread(target=lambda: [None for _ in up.stdout], daemon=True).start()
gw_host, gw_port = addrs["gateway"].rsplit(":", 1)
m_host, m_port = addrs["metrics"].rsplit(":", 1)

def http(host, port, method, path, body=b"", headers=()):
    s = socket.create_connection((host, int(port)))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    head = f"{method} {path} HTTP/1.1\r\nHost: cold\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    return s, head.encode() + body

def status():
    s, req = http(m_host, m_port, "GET", "/status")
    s.sendall(req)
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    return json.loads(data.split(b"\r\n\r\n", 1)[1])["services"][0]

def wait_zero(timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        s = status()
        if s["desired"] == 0 and s["pods"] == 0:
            return
        time.sleep(0.1)
    raise SystemExit("the service did not return to zero")

def events_since(t0):
    out = []
    with open(log_path) as f:
        for raw in f:
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if ts(line) >= t0 - 0.001:
                out.append(line)
    return out

def first(events, pred):
    for e in events:
        if pred(e):
            return ts(e)
    return None

body = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":1}'
rows = []
try:
    for i in range(ROUNDS):
        wait_zero()
        time.sleep(0.2)
        s, req = http(gw_host, gw_port, "POST", "/v1/chat/completions", body, [("Content-Type", "application/json")])
        t0 = time.time()
        s.sendall(req)
        s.recv(1)
        t_fb = time.time()
        while s.recv(65536):
            pass
        s.close()
        time.sleep(0.3)
        ev = events_since(t0)
        f = lambda e: e.get("fields", {})
        t_dec = first(ev, lambda e: e.get("target") == "ebb::decision" and f(e).get("desired") == 1)
        t_qp = first(ev, lambda e: f(e).get("message") == "queue-proxy listening" and e.get("target") == "ebb::up::pods")
        t_ready = first(ev, lambda e: f(e).get("message") == "user container is ready")
        if None in (t_dec, t_qp, t_ready):
            print(f"round {i}: missing log events", file=sys.stderr)
            continue
        rows.append((t_dec - t0, t_qp - t_dec, t_ready - t_qp, t_fb - t_ready, t_fb - t0))
finally:
    up.terminate()
    try:
        up.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(up.pid, 9)

if not rows:
    raise SystemExit(f"no complete round; see {log_path}")
ms = lambda x: f"{x * 1000:7.1f}"
names = ["arrival->decision", "decision->spawned", "spawned->ready", "ready->first byte", "total"]
print(f"local cold start, {len(rows)} rounds, model start-up {STARTUP_MS} ms (milliseconds)")
print(f"{'phase':<20} {'median':>7} {'min':>7} {'max':>7}")
for j, n in enumerate(names):
    col = sorted(r[j] for r in rows)
    print(f"{n:<20} {ms(col[len(col) // 2])} {ms(col[0])} {ms(col[-1])}")
tot = sorted(r[4] for r in rows)
print(f"{'ebb share (total - start-up)':<20} median {ms(tot[len(tot) // 2] - STARTUP_MS / 1000)}")
