#!/usr/bin/env python3
"""The picture in the README: a real `ebb up` run plotted by `ebb status --service --plot`. A demo model that
takes 1 s to load starts at zero; one request cold-starts it, 24 streaming clients scale it out, 4 keep it at
fewer pods, then it idles back to zero. Usage: run_plot.py EBB_BINARY OUT.svg
"""
import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ebb_up import EbbUp, http_request  # noqa: E402

EBB, OUT = sys.argv[1], sys.argv[2]
YAML = f"""config:
  scale-to-zero-grace-period: 4s
services:
  - name: demo
    command: [{EBB}, demo-model, --startup-delay, 1s, --time-to-first-token, 20ms, --tokens-per-second, '100']
    annotations:
      autoscaling.knative.dev/window: 6s
      ebb.dev/container-concurrency: 4
"""
BODY = b'{"messages":[{"role":"user","content":"hi"}],"max_tokens":32,"stream":true}'


def chat(up):
    host, port = up.gateway.rsplit(":", 1)
    s, req = http_request(host, port, "POST", "/v1/chat/completions", BODY,
                          [("Content-Type", "application/json")], service="demo")
    s.sendall(req)
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    if b" 200 " not in data.split(b"\r\n", 1)[0]:
        raise SystemExit(f"a request failed: {data[:200]!r}")


def load(up, clients, seconds):
    end = time.time() + seconds

    def client():
        while time.time() < end:
            chat(up)
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


up = EbbUp(EBB, YAML)
try:
    up.wait_zero("demo")
    time.sleep(2)
    chat(up)                # the cold start
    load(up, 24, 20)        # scale out
    load(up, 4, 15)         # fewer pods
    up.wait_zero("demo", timeout=90)
    time.sleep(2)
    url = f"http://{up.metrics}"
    subprocess.run([EBB, "status", "--url", url, "--service", "demo", "--plot", OUT], check=True,
                   stdout=subprocess.DEVNULL)
finally:
    up.stop()
