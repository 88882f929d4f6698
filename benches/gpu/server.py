#!/usr/bin/env python3
"""A small LLM inference server for the GPU cold-start benchmark (aiohttp, PyTorch, transformers).

  server.py prepare --model-dir DIR [--preset NAME]   build a causal LM from a config with random weights
                                                      (seeded) and save it there as safetensors, once
  server.py serve --model-dir DIR                     load it onto the GPU from those files and serve on
                                                      $HOST:$PORT

Nothing is downloaded: the model is built from a config, and there is no tokenizer (a prompt's UTF-8 bytes are
its token ids; a generated id is shown as one printable character). The weights are random, so the text is
meaningless; the work per token is a real model's.

Endpoints: `POST /v1/completions` (OpenAI style: prompt, max_tokens, stream; greedy decoding, `stream: true`
answers with server-sent events, one per token, then `data: [DONE]`), `GET /health` and `GET /ready` (200 once
the model is loaded: the server only listens from then on, so a TCP probe sees the same).

Concurrent requests with prompts of equal length are decoded together as one batch (static batching: a batch
runs until its longest request is done; requests that arrive meanwhile wait for the next batch). With
`--engine continuous`, transformers' continuous batching serves them instead (after the same warm-up).

Start-up phases go to the file named by $EBB_GPU_EVENTS (JSON lines: event, t in epoch seconds, pid): `exec`
(from $EBB_GPU_T_EXEC, set by the shell that execs this), `interpreter` (first line of this file), `imported`
(torch and transformers), `cuda` (context created), `loaded` (weights on the GPU), `warm` (one short generation
done: kernels and the cuBLAS handle ready), `listening`; then `request` and `first_token` for the first request
this process serves. Nothing is written to stdout (`ebb up` reads its pods' stdout).
"""
import time

T_INTERPRETER = time.time()

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import queue  # noqa: E402
import signal  # noqa: E402
import threading  # noqa: E402

# Sizes of a Llama-style model; "small" is the default (about 370 M parameters, 0.74 GB in bf16).
PRESETS = {
    "tiny": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=4, vocab_size=32000),
    "small": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=24, num_attention_heads=16,
                  num_key_value_heads=16, vocab_size=32000),
    "medium": dict(hidden_size=1536, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                   num_key_value_heads=16, vocab_size=32000),
}
TOKEN_OFFSET = 3  # ids 0..2 are left for special tokens; byte b is id b + 3


def log(msg):
    # One write, so the line is not split by the queue-proxy's log lines (both go to ebb up's stderr).
    os.write(2, f"[gpu-server {os.getpid()}] {msg}\n".encode())


class Events:
    """Appends phase events to $EBB_GPU_EVENTS, if set."""

    def __init__(self):
        path = os.environ.get("EBB_GPU_EVENTS")
        self.f = open(path, "a", buffering=1) if path else None

    def write(self, event, t=None, **extra):
        if self.f:
            self.f.write(json.dumps({"event": event, "t": t or time.time(), "pid": os.getpid(), **extra}) + "\n")


def offline():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def prepare(args):
    """Builds the model from its config with seeded random weights and saves it as safetensors."""
    offline()
    import torch
    import transformers

    cfg_path = os.path.join(args.model_dir, "config.json")
    want = dict(PRESETS[args.preset], max_position_embeddings=4096, tie_word_embeddings=False)
    if os.path.exists(cfg_path) and any(f.endswith(".safetensors") for f in os.listdir(args.model_dir)):
        with open(cfg_path) as f:
            have = json.load(f)
        if all(have.get(k) == v for k, v in want.items()):
            log(f"model already in {args.model_dir}")
            return
    config = transformers.LlamaConfig(**want)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    t = time.time()
    with torch.device(device):
        model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    n = sum(p.numel() for p in model.parameters())
    model.save_pretrained(args.model_dir, safe_serialization=True)
    size = sum(os.path.getsize(os.path.join(args.model_dir, f)) for f in os.listdir(args.model_dir)
               if f.endswith(".safetensors"))
    log(f"built and saved {n / 1e6:.0f} M parameters ({size / 1e9:.2f} GB) in {time.time() - t:.1f} s "
        f"to {args.model_dir}")
    with open(os.path.join(args.model_dir, "params.json"), "w") as f:
        json.dump({"parameters": n, "safetensors_bytes": size, "preset": args.preset}, f)


class Job:
    """One request's place in the engine: its prompt ids, how many tokens it wants, where its tokens go."""

    def __init__(self, ids, max_tokens, loop):
        self.ids = ids
        self.max_tokens = max_tokens
        self.loop = loop
        self.out = asyncio.Queue()
        self.cancelled = False

    def emit(self, item):
        self.loop.call_soon_threadsafe(self.out.put_nowait, item)


class Engine:
    """Greedy decoding on one GPU thread, batching waiting requests whose prompts have the same length."""

    def __init__(self, model, torch, device, max_batch):
        self.model = model
        self.torch = torch
        self.device = device
        self.max_batch = max_batch
        self.jobs = queue.Queue()
        threading.Thread(target=self._run, name="engine", daemon=True).start()

    def submit(self, job):
        self.jobs.put(job)

    def generate(self, ids, max_tokens):
        """Synchronous generation for the warm-up: the ids of `max_tokens` greedy tokens."""
        job = Job(ids, max_tokens, None)
        out = []
        job.emit = lambda item: out.append(item)
        self._batch([job])
        return [item[1] for item in out if item[0] == "token"]

    def _run(self):
        while True:
            job = self.jobs.get()
            batch, later = [job], []
            while len(batch) < self.max_batch:
                try:
                    other = self.jobs.get_nowait()
                except queue.Empty:
                    break
                (batch if len(other.ids) == len(job.ids) else later).append(other)
            for other in later:
                self.jobs.put(other)
            try:
                self._batch(batch)
            except Exception as err:  # a failed batch fails its requests, not the server
                log(f"generation failed: {err!r}")
                for j in batch:
                    j.emit(("error", repr(err)))

    def _batch(self, batch):
        torch = self.torch
        steps = max(j.max_tokens for j in batch)
        with torch.inference_mode():
            ids = torch.tensor([j.ids for j in batch], device=self.device)
            out = self.model(input_ids=ids, use_cache=True)
            for step in range(steps):
                nxt = out.logits[:, -1, :].argmax(-1)
                tokens = nxt.tolist()  # waits for the GPU
                now = time.time()
                for j, tok in zip(batch, tokens):
                    if step < j.max_tokens and not j.cancelled:
                        j.emit(("token", tok, now))
                        if step + 1 == j.max_tokens:
                            j.emit(("done", None))
                if step + 1 == steps or all(j.cancelled or step + 1 >= j.max_tokens for j in batch):
                    break
                out = self.model(input_ids=nxt[:, None], past_key_values=out.past_key_values, use_cache=True)


class ContinuousEngine:
    """transformers' continuous batching manager (paged KV cache; requests join and leave the batch at every
    step), for warm throughput under concurrency. Its handlers run on the event loop."""

    def __init__(self, model, max_new_tokens):
        from transformers import GenerationConfig

        config = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=-1)
        self.manager = model.init_continuous_batching(generation_config=config)
        self.manager.start()
        self.count = 0

    def submit(self, job):
        self.count += 1
        job.rid = f"r{self.count}"
        job.sent = 0

        def on_result(result):
            now = time.time()
            if result.error:
                job.out.put_nowait(("error", str(result.error)))
                return
            for tok in result.generated_tokens[job.sent:job.max_tokens]:
                job.out.put_nowait(("token", tok, now))
            job.sent = len(result.generated_tokens)
            if result.is_finished() or job.sent >= job.max_tokens:
                job.out.put_nowait(("done", None))

        self.manager.register_result_handler(job.rid, on_result)
        self.manager.add_request(job.ids, request_id=job.rid, max_new_tokens=job.max_tokens, streaming=True)

    def cancel(self, job):
        self.manager.cancel_request(job.rid)


def token_text(tok):
    return chr(32 + tok % 95)


def serve(args):
    events = Events()
    events.write("interpreter", T_INTERPRETER)
    if os.environ.get("EBB_GPU_T_EXEC"):
        events.write("exec", float(os.environ["EBB_GPU_T_EXEC"]))
    offline()
    import torch
    import transformers
    from aiohttp import web

    events.write("imported")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.allow_cpu:
        raise SystemExit("no CUDA device (pass --allow-cpu to serve on the CPU)")
    torch.zeros(1, device=device)
    if device == "cuda":
        torch.cuda.synchronize()
    events.write("cuda", device=device)

    model = transformers.AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.bfloat16,
                                                              device_map=device)
    model.eval()
    if device == "cuda":
        torch.cuda.synchronize()
    events.write("loaded")

    engine = Engine(model, torch, device, args.max_batch)
    engine.generate([TOKEN_OFFSET + b for b in b"warm up"], 2)
    events.write("warm")
    if args.engine == "continuous":
        engine = ContinuousEngine(model, 4096)
        events.write("continuous_batching_ready")

    state = {"first": True, "requests": 0}

    async def completions(request):
        t_req = time.time()
        first = state["first"]
        state["first"] = False
        state["requests"] += 1
        try:
            body = await request.json()
            prompt = body.get("prompt", "")
            if isinstance(prompt, list):
                prompt = prompt[0] if prompt else ""
            max_tokens = int(body.get("max_tokens", 16))
            stream = bool(body.get("stream", False))
            if not 1 <= max_tokens <= 4096 or not isinstance(prompt, str):
                raise ValueError("max_tokens must be 1..4096 and prompt a string")
        except (ValueError, TypeError) as err:
            return web.json_response({"error": {"message": str(err), "type": "invalid_request_error"}},
                                     status=400)
        ids = [TOKEN_OFFSET + b for b in prompt.encode()[:2048]] or [TOKEN_OFFSET]
        job = Job(ids, max_tokens, asyncio.get_running_loop())
        engine.submit(job)
        rid = f"cmpl-{os.getpid()}-{state['requests']}"
        created = int(t_req)
        model_name = body.get("model", "random-llama")

        def chunk(text, finish=None):
            return {"id": rid, "object": "text_completion", "created": created, "model": model_name,
                    "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}

        resp = None
        if stream:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
            await resp.prepare(request)
        texts = []
        try:
            while True:
                item = await job.out.get()
                if item[0] == "error":
                    if resp is None:
                        return web.json_response({"error": {"message": item[1]}}, status=500)
                    await resp.write(f"data: {json.dumps({'error': item[1]})}\n\n".encode())
                    break
                if item[0] == "done":
                    if resp is not None:
                        await resp.write(b"data: " + json.dumps(chunk("", "length")).encode()
                                         + b"\n\ndata: [DONE]\n\n")
                    break
                _, tok, t_tok = item
                if first and not texts:
                    events.write("request", t_req)
                    events.write("first_token", t_tok)
                texts.append(token_text(tok))
                if resp is not None:
                    await resp.write(b"data: " + json.dumps(chunk(texts[-1])).encode() + b"\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            job.cancelled = True
            if hasattr(engine, "cancel"):
                engine.cancel(job)
            raise
        if resp is not None:
            await resp.write_eof()
            return resp
        out = chunk("".join(texts), "length")
        out["usage"] = {"prompt_tokens": len(ids), "completion_tokens": len(texts),
                        "total_tokens": len(ids) + len(texts)}
        return web.json_response(out)

    async def health(_request):
        return web.json_response({"status": "ok", "device": device})

    async def main():
        app = web.Application(client_max_size=1 << 20)
        app.router.add_post("/v1/completions", completions)
        app.router.add_get("/health", health)
        app.router.add_get("/ready", health)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        host, port = os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "8000"))
        await web.TCPSite(runner, host, port, backlog=1024).start()
        events.write("listening", host=host, port=port)
        log(f"listening on {host}:{port} ({device})")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(main())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="build the model and save it as safetensors")
    p.add_argument("--model-dir", required=True)
    p.add_argument("--preset", choices=sorted(PRESETS), default="small")
    s = sub.add_parser("serve", help="load the model and serve on $HOST:$PORT")
    s.add_argument("--model-dir", required=True)
    s.add_argument("--max-batch", type=int, default=64)
    s.add_argument("--engine", choices=["static", "continuous"], default="static",
                   help="static: this file's batching (the default; starts fastest); continuous: transformers' "
                        "continuous batching, for warm throughput under concurrency")
    s.add_argument("--allow-cpu", action="store_true", help="serve on the CPU when there is no GPU")
    args = parser.parse_args()
    if args.cmd == "prepare":
        os.makedirs(args.model_dir, exist_ok=True)
        prepare(args)
    else:
        if not os.path.isdir(args.model_dir):
            parser.exit(2, f"server.py: no model in {args.model_dir}; run `server.py prepare` first\n")
        serve(args)


if __name__ == "__main__":
    main()
