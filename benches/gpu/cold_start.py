#!/usr/bin/env python3
"""GPU cold start behind `ebb up`, phase by phase, then warm streaming throughput. Run by cold-start.sh.

Cold rounds: `ebb up` runs benches/gpu/server.py as service `llm` (scale to zero, 1 s grace period, at most one
pod). Each round waits until the service is at zero with no pod left, sends one streaming completion through
the gateway and splits the time until its first token reached the client, from ebb up's JSON log, the server's
phase events ($EBB_GPU_EVENTS, see server.py) and the activator's Server-Timing header:

  arrival -> decision            ebb   the activator's cold-start stat reaches the autoscaler, which decides 1 pod
  decision -> pod spawned        ebb   ebb up starts the pod supervisor
  spawned -> server exec         ebb   the supervisor starts the queue-proxy and `sh -c` execs the server
  exec -> interpreter            model Python starts
  interpreter -> imported        model import torch, transformers
  imported -> CUDA ready         model CUDA context
  CUDA -> model loaded           model safetensors -> GPU (from_pretrained)
  loaded -> warmed up            model one 2-token generation (kernels, cuBLAS handle)
  warmed -> listening            model aiohttp binds
  listening -> qp ready          ebb   the queue-proxy's probe finds the server accepting
  qp ready -> activator ready    ebb   the activator's probe finds the queue-proxy ready (Server-Timing)
  activator ready -> at server   ebb   the request is forwarded through the queue-proxy
  at server -> first token       model prefill and the first decoding step
  first token -> client          ebb   the SSE event back through queue-proxy and activator

ebb's share is the sum of the `ebb` rows. With --drop-caches, one more round first drops the page cache
(root only), so the interpreter, the libraries and the weights are read from disk.

Warm: a second `ebb up` keeps one pod (min-scale 1) and closed-loop clients stream completions at each
concurrency, directly to the server, to its queue-proxy, and through the activator (gateway).

Usage: cold_start.py --ebb EBB --python PY --model-dir DIR --out DIR [--rounds N] ...
"""
import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "local"))
from ebb_up import (EbbUp, decision_time, dechunk, fields, http_request, median, message_time,  # noqa: E402
                    percentile)

HERE = os.path.dirname(os.path.abspath(__file__))
SERVICE = "llm"
PORT = 8000

PHASES = [  # (name, from, to, whose)
    ("arrival -> decision", "t0", "decision", "ebb"),
    ("decision -> pod spawned", "decision", "pod_started", "ebb"),
    ("spawned -> server exec", "pod_started", "exec", "ebb"),
    ("exec -> interpreter", "exec", "interpreter", "model"),
    ("interpreter -> imported", "interpreter", "imported", "model"),
    ("imported -> CUDA ready", "imported", "cuda", "model"),
    ("CUDA -> model loaded", "cuda", "loaded", "model"),
    ("loaded -> warmed up", "loaded", "warm", "model"),
    ("warmed -> listening", "warm", "listening", "model"),
    ("listening -> qp ready", "listening", "qp_ready", "ebb"),
    ("qp ready -> activator ready", "qp_ready", "activator_ready", "ebb"),
    ("activator ready -> at server", "activator_ready", "request", "ebb"),
    ("at server -> first token", "request", "first_token", "model"),
    ("first token -> client", "first_token", "client_first_token", "ebb"),
]


def service_yaml(args, events_path, warm):
    cmd = (f"export EBB_GPU_T_EXEC=$(date +%s.%N); exec {args.python} {HERE}/server.py serve "
           f"--model-dir {args.model_dir} {args.server_args}").strip()
    scale = ("      autoscaling.knative.dev/min-scale: 1\n      autoscaling.knative.dev/initial-scale: 1\n"
             if warm else "")
    return f"""config:
  scale-to-zero-grace-period: 1s
services:
  - name: {SERVICE}
    port: {PORT}
    command: {json.dumps(cmd)}
    env:
      EBB_GPU_EVENTS: {events_path}
    annotations:
      autoscaling.knative.dev/window: 6s
      autoscaling.knative.dev/max-scale: 1
      ebb.dev/activation-timeout: 300s
{scale}"""


def completion_body(prompt, tokens, stream=True):
    return json.dumps({"model": "random-llama", "prompt": prompt, "max_tokens": tokens, "stream": stream}).encode()


def server_timing(head):
    """{name: ms} from a Server-Timing header, if any."""
    out = {}
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"server-timing:"):
            for part in line.split(b":", 1)[1].decode().split(","):
                bits = [b.strip() for b in part.split(";")]
                for b in bits[1:]:
                    if b.startswith("dur="):
                        out[bits[0]] = float(b[4:])
    return out


def cold_request(gateway, tokens):
    """One streaming completion through the gateway: its send time, header and first-token arrival, timings."""
    host, port = gateway.rsplit(":", 1)
    s, req = http_request(host, port, "POST", "/v1/completions", completion_body("Hello, cold start", tokens),
                          [("Content-Type", "application/json")], service=SERVICE)
    t0 = time.time()
    s.sendall(req)
    data, t_head, t_tok = b"", None, None
    while chunk := s.recv(65536):
        now = time.time()
        data += chunk
        if t_head is None and b"\r\n\r\n" in data:
            t_head = now
        if t_tok is None and t_head is not None and b'"text": "' in data.split(b"\r\n\r\n", 1)[1]:
            t_tok = now
    t_end = time.time()
    s.close()
    head, body = data.split(b"\r\n\r\n", 1)
    status = int(head.split(b" ", 2)[1])
    if b"chunked" in head.lower():
        body = dechunk(body)
    tokens_seen = body.count(b'"finish_reason": null')
    return {"t0": t0, "client_headers": t_head, "client_first_token": t_tok, "client_done": t_end,
            "status": status, "tokens": tokens_seen, "server_timing": server_timing(head)}


def read_server_events(path, pid=None):
    out = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
    return out


def cold_rounds(args, out):
    events_path = os.path.join(out["workdir"], "server-events-cold.jsonl")
    up = EbbUp(args.ebb, service_yaml(args, events_path, warm=False),
               workdir=os.path.join(out["workdir"], "cold"), extra_args=["--grace-period", "5s"], env=args.up_env)
    rounds = []
    plan = (["dropped"] if args.drop_caches else []) + ["cached"] * args.rounds
    try:
        for i, cache in enumerate(plan):
            up.wait_zero(SERVICE, timeout=120)
            time.sleep(0.5)
            if cache == "dropped":
                os.sync()
                with open("/proc/sys/vm/drop_caches", "w") as f:
                    f.write("3\n")
                time.sleep(0.5)
            before = len(read_server_events(events_path))
            r = cold_request(up.gateway, args.cold_tokens)
            time.sleep(0.3)
            ev = up.events(r["t0"])
            r["decision"] = decision_time(ev)
            r["pod_started"] = message_time(ev, "pod started", target="ebb::up::pods")
            r["qp_listening"] = message_time(ev, "queue-proxy listening", target="ebb::up::pods")
            r["qp_ready"] = message_time(ev, "user container is ready")
            st = r["server_timing"]
            if "ebb-scale" in st and "ebb-pod-start" in st:
                # The activator's clock for the same instants: its arrival is the client's send (loopback).
                r["activator_ready"] = r["t0"] + (st["ebb-scale"] + st["ebb-pod-start"]) / 1000
            sev = read_server_events(events_path)[before:]
            for e in sev:
                r.setdefault(e["event"], e["t"])
            r["cache"] = cache
            r["round"] = i
            missing = sorted({k for _, a, b, _ in PHASES for k in (a, b) if r.get(k) is None})
            r["missing"] = missing
            r["ok"] = r["status"] == 200 and r["tokens"] == args.cold_tokens
            total = (r["client_first_token"] or r["client_done"]) - r["t0"]
            print(f"round {i} ({cache} page cache): status {r['status']}, {r['tokens']} tokens, first token "
                  f"after {total * 1000:.0f} ms" + (f"; missing {missing}" if missing else ""), file=sys.stderr)
            rounds.append(r)
    finally:
        up.stop()
    return rounds


def phase_rows(rounds):
    rows = []
    for name, a, b, whose in PHASES:
        vals = [r[b] - r[a] for r in rounds if r.get(a) is not None and r.get(b) is not None]
        rows.append((name, whose, vals))
    totals = [r["client_first_token"] - r["t0"] for r in rounds if r.get("client_first_token")]
    ebb = []
    for r in rounds:
        if not r["missing"]:
            ebb.append(sum(r[b] - r[a] for _, a, b, w in PHASES if w == "ebb"))
    return rows, totals, ebb


# ---------------------------------------------------------------- warm throughput (closed loop, SSE)

async def _stream_worker(addr, body, deadline, stats):
    host, port = addr.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    req = (f"POST /v1/completions HTTP/1.1\r\nHost: {SERVICE}\r\nContent-Type: application/json\r\n"
           f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    while time.time() < deadline:
        t0 = time.time()
        writer.write(req)
        status = int((await reader.readline()).split(b" ", 2)[1])
        chunked = False
        while (line := await reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower():
                chunked = True
        if not chunked:
            raise RuntimeError(f"{addr}: expected a chunked SSE response, got status {status}")
        t_first, n = None, 0
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                await reader.readline()
                break
            data = await reader.readexactly(size + 2)
            k = data.count(b'"finish_reason": null')
            if k and t_first is None:
                t_first = time.time()
            n += k
        t1 = time.time()
        stats.append((t0, t_first, t1, n, status))
    writer.close()


def _stream_process(addr, body, conns, start, duration, q):
    stats = []

    async def main():
        await asyncio.sleep(max(0, start - time.time()))
        await asyncio.gather(*[_stream_worker(addr, body, start + duration, stats) for _ in range(conns)])

    try:
        asyncio.run(main())
        q.put(("ok", stats))
    except Exception as err:  # reported, not hidden: the run counts as failed
        q.put(("error", f"{type(err).__name__}: {err}", stats))


def stream_load(addr, concurrency, duration, tokens, procs):
    body = completion_body("x" * 32, tokens)
    procs = min(procs, concurrency)
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    start = time.time() + 0.5
    ps = []
    for i in range(procs):
        conns = concurrency // procs + (1 if i < concurrency % procs else 0)
        p = ctx.Process(target=_stream_process, args=(addr, body, conns, start, duration, q))
        p.start()
        ps.append(p)
    results = [q.get(timeout=duration + 120) for _ in ps]
    for p in ps:
        p.join()
    stats = [s for r in results for s in r[1 if r[0] == "ok" else 2]]
    errors = [r[1] for r in results if r[0] == "error"]
    done = [s for s in stats if s[4] == 200 and s[3] == tokens]
    failed = len(stats) - len(done) + len(errors)
    if not done:
        return {"requests": 0, "failed": failed, "errors": errors}
    span = max(s[2] for s in done) - min(s[0] for s in done)
    ttft = [s[1] - s[0] for s in done]
    per_tok = [(s[2] - s[1]) / (s[3] - 1) for s in done if s[3] > 1]
    return {"requests": len(done), "failed": failed, "errors": errors, "seconds": span,
            "requests_per_s": len(done) / span, "tokens_per_s": sum(s[3] for s in done) / span,
            "ttft_p50_ms": median(ttft) * 1000, "ttft_p99_ms": percentile(ttft, 99) * 1000,
            "inter_token_p50_ms": median(per_tok) * 1000 if per_tok else None}


def warm(args, out):
    events_path = os.path.join(out["workdir"], "server-events-warm.jsonl")
    up = EbbUp(args.ebb, service_yaml(args, events_path, warm=True), workdir=os.path.join(out["workdir"], "warm"),
               extra_args=["--grace-period", "5s"], env=args.up_env)
    results = []
    try:
        up.wait_for(SERVICE, lambda s: s["ready"] >= 1, "one ready pod", timeout=180)
        ev = up.events()
        ours = [e for e in ev if e.get("target") == "ebb::up::pods"]
        started = [e for e in ours if fields(e).get("message") == "pod started"]
        listening = [e for e in ours if fields(e).get("message") == "queue-proxy listening"]
        paths = {"direct": f"{fields(started[-1])['ip']}:{PORT}", "queue-proxy": fields(listening[-1])["data"],
                 "activator+queue-proxy": up.gateway}
        out["warm_addresses"] = paths
        # One warm-up run through every path, then the measured ones, paths interleaved per concurrency.
        for addr in paths.values():
            stream_load(addr, 4, 1.0, args.warm_tokens, args.client_procs)
        for c in [c for c in args.concurrency for _ in range(args.repeat)]:
            for name, addr in paths.items():
                r = stream_load(addr, c, args.duration, args.warm_tokens, args.client_procs)
                r.update(path=name, concurrency=c, tokens=args.warm_tokens)
                print(f"warm {name} c={c}: {r.get('tokens_per_s', 0):.0f} tokens/s, "
                      f"{r.get('requests_per_s', 0):.1f} req/s, failed {r['failed']}", file=sys.stderr)
                results.append(r)
    finally:
        up.stop()
    return results


def report(out):
    lines = []
    ms = lambda x: f"{x * 1000:.1f}" if x is not None else "-"  # noqa: E731
    cached = [r for r in out["rounds"] if r["cache"] == "cached"]
    dropped = [r for r in out["rounds"] if r["cache"] == "dropped"]
    if not cached:
        lines.append("Cold start: not run (--skip-cold)")
    rows, totals, ebb = phase_rows(cached)
    d_rows = phase_rows(dropped)[0] if dropped else None
    lines.append(f"Cold start: {len(cached)} rounds with the page cache warm (milliseconds; median, min, max)"
                 + (", and one round after dropping the page cache" if dropped else ""))
    lines.append("")
    head = "| phase | whose | median | min | max |" + (" dropped cache |" if dropped else "")
    lines.append(head)
    lines.append("|---|---|---:|---:|---:|" + ("---:|" if dropped else ""))
    for j, (name, whose, vals) in enumerate(rows if cached else []):
        cells = f"| {name} | {whose} | {ms(median(vals))} | {ms(min(vals) if vals else None)} | " \
                f"{ms(max(vals) if vals else None)} |"
        if dropped:
            dv = d_rows[j][2]
            cells += f" {ms(dv[0] if dv else None)} |"
        lines.append(cells)
    d_tot = [r["client_first_token"] - r["t0"] for r in dropped if r.get("client_first_token")]
    d_ebb = phase_rows(dropped)[2] if dropped else []
    lines.append(f"| **total (arrival -> first token at client)** | | **{ms(median(totals))}** | "
                 f"{ms(min(totals) if totals else None)} | {ms(max(totals) if totals else None)} |"
                 + (f" {ms(d_tot[0] if d_tot else None)} |" if dropped else ""))
    lines.append(f"| **ebb's share (sum of ebb rows)** | ebb | **{ms(median(ebb))}** | "
                 f"{ms(min(ebb) if ebb else None)} | {ms(max(ebb) if ebb else None)} |"
                 + (f" {ms(d_ebb[0] if d_ebb else None)} |" if dropped else ""))
    st = [r["server_timing"] for r in cached if r["server_timing"]]
    if st:
        lines.append("")
        lines.append("Activator's Server-Timing on the cold request (median ms): " + ", ".join(
            f"{k} {median([s[k] for s in st if k in s]):.1f}" for k in st[0]))
    if out.get("warm"):
        lines.append("")
        lines.append(f"Warm streaming (SSE), closed loop, {out['warm'][0]['tokens']} tokens per request, "
                     f"{out['args']['duration']} s per run:")
        lines.append("")
        lines.append("| concurrency | path | requests/s | tokens/s | vs direct | TTFT p50 ms | TTFT p99 ms | "
                     "inter-token p50 ms | failed |")
        lines.append("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in out["warm"]:
            direct = next((d for d in out["warm"] if d["concurrency"] == r["concurrency"]
                           and d["path"] == "direct"), None)
            ratio = (r["tokens_per_s"] / direct["tokens_per_s"]) if r.get("tokens_per_s") and direct \
                and direct.get("tokens_per_s") else None
            f = lambda k, p=1: f"{r[k]:.{p}f}" if r.get(k) is not None else "-"  # noqa: E731
            lines.append(f"| {r['concurrency']} | {r['path']} | {f('requests_per_s')} | {f('tokens_per_s', 0)} | "
                         f"{f'{ratio:.3f}' if ratio else '-'} | {f('ttft_p50_ms')} | {f('ttft_p99_ms')} | "
                         f"{f('inter_token_p50_ms', 2)} | {r['failed']} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description="GPU cold start behind ebb up")
    ap.add_argument("--ebb", required=True)
    ap.add_argument("--python", default=sys.executable, help="the Python that has torch and transformers")
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--drop-caches", action="store_true", help="one extra round after dropping the page cache")
    ap.add_argument("--cold-tokens", type=int, default=16)
    ap.add_argument("--warm-tokens", type=int, default=64)
    ap.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32])
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--client-procs", type=int, default=4)
    ap.add_argument("--skip-warm", action="store_true")
    ap.add_argument("--skip-cold", action="store_true")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each warm concurrency, paths alternating")
    ap.add_argument("--up-env", type=lambda s: dict(kv.split("=", 1) for kv in s.split(",") if kv), default={},
                    help="K=V,... for ebb up's environment (its queue-proxies inherit it: EBB_PROBE_*)")
    ap.add_argument("--server-args", default="", help="extra arguments of `server.py serve`, e.g. --allow-cpu")
    ap.add_argument("--workdir", default="/tmp/ebb-gpu-cold-start", help="ebb up's files and logs")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    workdir = args.workdir
    out = {"args": vars(args), "workdir": workdir, "started": time.time()}
    os.makedirs(workdir, exist_ok=True)
    try:
        out["rounds"] = [] if args.skip_cold else cold_rounds(args, out)
        if not args.skip_warm:
            out["warm"] = warm(args, out)
    finally:
        with open(os.path.join(args.out, "gpu-cold-start.json"), "w") as f:
            json.dump(out, f, indent=1)
    text = report(out)
    with open(os.path.join(args.out, "gpu-cold-start.md"), "w") as f:
        f.write(text + "\n")
    print(text)
    failed = sum(not r["ok"] for r in out["rounds"]) + sum(r["failed"] for r in out.get("warm", []))
    print(f"\nfailed requests: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
