#!/usr/bin/env python3
"""Local cold start, phase by phase: runs `ebb up` with a demo model that takes 100 ms to start, waits for it to
be at zero, sends one request, and splits the time to its first byte using ebb up's JSON log:

  arrival -> decision        the activator's cold-start stat reaches the autoscaler, which decides (1 pod)
  decision -> spawned        pod-supervisor, queue-proxy and model processes started, queue-proxy listening
  spawned -> ready           the queue-proxy finds the model accepting (includes the model's 100 ms start-up)
  ready -> first byte        the activator's probe sees the pod ready, forwards, the response starts

ebb's share is the total minus the model's start-up. Usage: cold_start.py EBB_BINARY [ROUNDS]
"""
import os, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ebb_up import EbbUp, decision_time, http_request, message_time  # noqa: E402

EBB = sys.argv[1]
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 5
STARTUP_MS = 100

up = EbbUp(EBB, f"""config:
  scale-to-zero-grace-period: 1s
services:
  - name: cold
    command: [{EBB}, demo-model, --startup-delay, {STARTUP_MS}ms, --time-to-first-token, 0s, --tokens-per-second, '0']
    annotations:
      autoscaling.knative.dev/window: 6s
      ebb.dev/container-concurrency: 4
""", workdir=None)
gw_host, gw_port = up.gateway.rsplit(":", 1)

body = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":1}'
rows = []
try:
    for i in range(ROUNDS):
        up.wait_zero("cold")
        time.sleep(0.2)
        s, req = http_request(gw_host, gw_port, "POST", "/v1/chat/completions", body,
                              [("Content-Type", "application/json")], service="cold")
        t0 = time.time()
        s.sendall(req)
        s.recv(1)
        t_fb = time.time()
        while s.recv(65536):
            pass
        s.close()
        time.sleep(0.3)
        ev = up.events(t0)
        t_dec = decision_time(ev)
        t_qp = message_time(ev, "queue-proxy listening", target="ebb::up::pods")
        t_ready = message_time(ev, "user container is ready")
        if None in (t_dec, t_qp, t_ready):
            print(f"round {i}: missing log events", file=sys.stderr)
            continue
        rows.append((t_dec - t0, t_qp - t_dec, t_ready - t_qp, t_fb - t_ready, t_fb - t0))
finally:
    up.stop()

if not rows:
    raise SystemExit(f"no complete round; see {up.log_path}")
ms = lambda x: f"{x * 1000:7.1f}"
names = ["arrival->decision", "decision->spawned", "spawned->ready", "ready->first byte", "total"]
print(f"local cold start, {len(rows)} rounds, model start-up {STARTUP_MS} ms (milliseconds)")
print(f"{'phase':<20} {'median':>7} {'min':>7} {'max':>7}")
for j, n in enumerate(names):
    col = sorted(r[j] for r in rows)
    print(f"{n:<20} {ms(col[len(col) // 2])} {ms(col[0])} {ms(col[-1])}")
tot = sorted(r[4] for r in rows)
print(f"{'ebb share (total - start-up)':<20} median {ms(tot[len(tot) // 2] - STARTUP_MS / 1000)}")
