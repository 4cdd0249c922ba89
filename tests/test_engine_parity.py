"""The emulated engine speaks like vLLM 0.32.0's OpenAI server, alone and through the gateway (proxy and nginx):
the official ``openai`` client streams with usage, lists models, completes; ``parity.check_server`` finds no
difference from the recorded real server (``tests/fixtures/vllm_0.32.0``) and does find them in a server that
answers otherwise; its recorded shapes are the fixtures'. The real engine is compared in ``test_vllm_e2e`` (through the gateway,
with one real replica's /metrics)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("aiohttp", reason="the testbed extra is not installed (pip install -e '.[testbed]')")
pytest.importorskip("prometheus_client", reason="the testbed extra is not installed")
pytest.importorskip("opentelemetry.sdk", reason="the testbed extra is not installed")
pytest.importorskip("openai", reason="the official openai client is not installed (pip install -e '.[test]')")

from llmrca.testbed import parity

FIXTURES = Path(__file__).parent / "fixtures" / "vllm_0.32.0"
MODEL = "llmrca/tiny-llama"


def _fixture(name: str):
    idx = json.loads((FIXTURES / "index.json").read_text())[name]
    text = (FIXTURES / idx["file"]).read_text()
    return idx, (parity.sse_events(text) if idx["file"].endswith(".sse") else (json.loads(text) if text else text))


# -- the recorded shapes are the fixtures' -----------------------------------------------------------------------
def test_parity_shapes_are_the_recorded_answers():
    _, models = _fixture("models")
    card = models["data"][0]
    assert tuple(card) == parity.MODEL_KEYS and tuple(card["permission"][0]) == parity.PERMISSION_KEYS
    for name, kind in (("chat", "chat"), ("completion", "completion")):
        _, r = _fixture(name)
        assert tuple(r) == parity.SHAPES[kind]
        assert tuple(r["choices"][0]) == parity.SHAPES[f"{kind}.choice"]
        assert tuple(r["usage"]) == parity.SHAPES["usage"]
    _, r = _fixture("chat")
    assert tuple(r["choices"][0]["message"]) == parity.SHAPES["chat.message"]
    _, ev = _fixture("chat_stream")
    assert ev[-1] == "[DONE]"
    first, *tokens, fin = ev[:-1]
    assert tuple(first) == parity.SHAPES["chat.first"]
    assert tuple(first["choices"][0]) == parity.SHAPES["chat.first.choice"]
    assert all(tuple(c) == parity.SHAPES["chat.token"] for c in tokens)
    assert all(tuple(c["choices"][0]) == parity.SHAPES["chat.token.choice"] for c in tokens)
    assert tuple(fin) == parity.SHAPES["chat.finish"]
    assert tuple(fin["choices"][0]) == parity.SHAPES["chat.finish.choice"]
    _, ev = _fixture("chat_stream_usage")
    *_, fin, usage, _ = ev
    assert tuple(fin) == parity.SHAPES["chat.finish_before_usage"] and tuple(usage) == parity.SHAPES["usage_chunk"]
    assert tuple(usage["usage"]) == parity.SHAPES["usage_chunk.usage"] and usage["choices"] == []
    _, ev = _fixture("completion_stream")
    *tokens, fin, _ = ev
    assert all(tuple(c) == parity.SHAPES["completion.token"] for c in tokens)
    assert all(tuple(c["choices"][0]) == parity.SHAPES["completion.token.choice"] for c in [*tokens, fin])
    assert tuple(fin) == parity.SHAPES["completion.finish"]
    _, ev = _fixture("completion_stream_usage")
    assert tuple(ev[-3]) == parity.SHAPES["completion.token"] and tuple(ev[-2]) == parity.SHAPES["usage_chunk"]
    # the errors: status, type, param and message as recorded (the fixtures were taken at max_model_len 2048)
    for name, fx in (("empty_messages", "err_empty_messages"), ("unknown_model", "err_unknown_model"),
                     ("unknown_model_completion", "err_unknown_model_completion"),
                     ("max_tokens_zero", "err_max_tokens_zero"),
                     ("stream_options_without_stream", "err_stream_nonstream_opts"), ("n_zero", "err_n_zero"),
                     ("temperature_high", "err_temperature_high"), ("max_tokens_float", "err_max_tokens_float")):
        idx, body = _fixture(fx)
        path, _, status, type_, param, msg = parity.ERRORS[name]
        assert (idx["path"], idx["status"]) == (path, status), name
        sent = parity.ERRORS[name][1]
        assert {k: v for k, v in idx["body"].items() if k != "model" or "model" in sent} == sent, name
        assert tuple(body["error"]) == parity.SHAPES["error"]
        assert body["error"] == {"message": parity.fill(msg, model=MODEL), "type": type_, "param": param,
                                 "code": status}
    idx, body = _fixture("err_no_messages")
    assert body["error"]["message"] == parity.ERRORS["missing_messages"][5] and idx["status"] == 400
    assert {k for k in idx["body"] if k != "model"} == set(parity.ERRORS["missing_messages"][1])
    idx, body = _fixture("err_long_prompt")
    assert body["error"]["message"] == parity.fill(parity.ERRORS["long_prompt"][5], ctx=2048, ctx1=2049)
    assert body["error"]["param"] == parity.ERRORS["long_prompt"][4] and idx["path"] == parity.ERRORS["long_prompt"][0]
    idx, body = _fixture("err_max_tokens_context")
    assert body["error"]["message"] == parity.fill(parity.ERRORS["max_tokens_context"][5], ctx=2048, mt=5000)
    assert _fixture("version")[1] == {"version": parity.VERSION} and _fixture("health")[1] == ""
    assert _fixture("chat_stream")[0]["content_type"] == parity.SSE_TYPE
    assert _fixture("chat")[0]["content_type"] == parity.JSON_TYPE


def test_parity_metric_families_are_the_recorded_ones():
    fams = parity.parse_metrics((FIXTURES / "metrics.txt").read_text())
    assert set(fams) == set(parity.FAMILIES)
    for name, (kind, extra) in parity.FAMILIES.items():
        f = fams[name]
        assert f["type"] == kind, name
        labels = {k for _, lab in f["samples"] for k in lab}
        if name == "vllm:cache_config_info":
            assert sorted(labels) == list(parity.CACHE_CONFIG_LABELS)
            continue
        base = {"model_name"} if name in parity.NO_ENGINE_LABEL else {"engine", "model_name"}
        assert labels == base | set(extra) | ({"le"} if kind == "histogram" else set()), name
        for label in extra:
            assert {lab[label] for _, lab in f["samples"]} == set(parity.LABEL_VALUES[label][name]), (name, label)
        if kind == "histogram":
            edges = [float(lab["le"]) for s, lab in f["samples"] if s.endswith("_bucket") and lab["le"] != "+Inf"]
            want = parity.BUCKETS[name]
            assert edges == [float(b) for b in (parity.token_buckets(2048) if want == parity.TOKENS else want)], name


def test_emulated_buckets_and_lines_are_vllms():
    from llmrca.deploy.telemetry import line, strip_process_prefix, template_of
    from llmrca.testbed import vllm_metrics

    assert vllm_metrics.token_buckets(2048) == parity.token_buckets(2048) == (1, 2, 5, 10, 20, 50, 100, 200, 500,
                                                                              1000, 2000)
    assert vllm_metrics.ITERATION_BUCKETS == parity.BUCKETS["vllm:iteration_tokens_total"]
    # the periodic stats line: the recorded text, its catalogue template (the device is "CPU" on vLLM's CPU build,
    # "GPU" on the emulated GPU and in the simulator)
    kind = line("vllm.engine_stats")
    for rec in (FIXTURES / "engine_stats.log").read_text().splitlines():
        bare = strip_process_prefix(rec)
        assert rec.startswith("(APIServer pid=") and bare.startswith("INFO 12-07 ")
        assert template_of(bare) == kind.template(device="CPU") != kind.template()
    rec = strip_process_prefix((FIXTURES / "engine_stats.log").read_text().splitlines()[2])
    ours = kind.at(0.0, "000", "31.7", "98.5", 1, 0, "4.3", "0.0", device="CPU")
    assert ours[len("INFO 01-01 00:00:00"):] == rec[len("INFO 12-07 02:30:59"):]
    assert "GPU KV cache usage: 4.3%" in kind.at(0.0, "000", "31.7", "98.5", 1, 0, "4.3", "0.0")


# -- a light deployment: the emulated engine, the Serve-like proxy, nginx -------------------------------------------
class _Loop:
    """An asyncio loop in a thread, for the servers, while the test talks to them with blocking clients."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 60.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def _wait_http(url: str, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if parity.http("GET", url, timeout=2.0)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {timeout:g} s")


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    """One emulated replica (the tiny model, on an emulated A100: fast tokens) behind the proxy and, where the
    nginx binary exists, the gateway."""
    from llmrca.deploy import DeployConfig
    from llmrca.testbed import auth
    from llmrca.testbed import nginx as nginxmod
    from llmrca.testbed.config import TestbedConfig
    from llmrca.testbed.engine_server import Engine
    from llmrca.testbed.engine_server import make_app as engine_app
    from llmrca.testbed.proxy_server import Proxy
    from llmrca.testbed.proxy_server import make_app as proxy_app
    from llmrca.testbed.rundir import RunDir
    from llmrca.testbed.service import start_site
    from llmrca.testbed.supervisor import CONFIG_FILE, plan_state

    tmp = tmp_path_factory.mktemp("parity")
    rd = RunDir(tmp / "tb")
    rd.create()
    auth.create_token(rd.path)
    cfg = TestbedConfig(deploy=DeployConfig(replicas=1, model=MODEL, gpu="a100"), seed=1)
    (rd.path / CONFIG_FILE).write_text(json.dumps({"config": cfg.to_dict()}), encoding="utf-8")
    state = plan_state(rd, cfg)
    state["otlp_endpoint"] = None
    rd.write_state(state)
    ports = state["ports"]
    lp = _Loop()
    stop = asyncio.Event()

    async def up():
        eng = Engine(state["proxy"], state, rd)
        driver = asyncio.get_running_loop().create_task(eng.drive(stop))
        r1 = await start_site(engine_app(eng, auth.read_token(rd.path)), ports[f"engine:{state['proxy']}"])
        proxy = Proxy(state, rd)
        await proxy.start()
        r2 = await start_site(proxy_app(proxy, auth.read_token(rd.path)), ports["proxy"])
        return eng, driver, proxy, (r1, r2)

    eng, driver, proxy, runners = lp.run(up())
    urls = {"engine": f"http://127.0.0.1:{ports['engine:' + state['proxy']]}",
            "proxy": f"http://127.0.0.1:{ports['proxy']}"}
    ng = nginxmod.nginx_binary()
    nginx = None
    if ng is not None:
        conf_dir = tmp / "nginx"
        (conf_dir / "tmp").mkdir(parents=True)
        os.chmod(conf_dir / "tmp", 0o777)
        conf = conf_dir / "nginx.conf"
        conf.write_text(nginxmod.config(conf_dir, ports["gateway"], ports["proxy"], cfg.read_timeout_s,
                                        tmp / "access.log", tmp / "error.log"))
        nginx = subprocess.Popen([ng, "-p", str(conf_dir), "-c", str(conf), "-e", str(tmp / "error.log"), "-g",
                                  "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 start_new_session=True)
        urls["gateway"] = f"http://127.0.0.1:{ports['gateway']}"
    try:
        for u in urls.values():
            _wait_http(u + "/health")
        yield urls, eng
    finally:
        if nginx is not None:
            os.killpg(nginx.pid, signal.SIGTERM)
            nginx.wait(10)

        async def down():
            for r in runners:
                await r.cleanup()
            await proxy.session.close()
            stop.set()
            driver.cancel()
            eng.log.close()
            proxy.log.close()

        lp.run(down())
        lp.close()


def test_openai_client_streams_lists_and_completes_through_every_hop(emulated):
    import openai

    urls, _ = emulated
    for hop, url in urls.items():
        client = openai.OpenAI(base_url=url + "/v1", api_key="EMPTY", max_retries=0, timeout=60)
        assert [m.id for m in client.models.list()] == [MODEL], hop
        assert client.models.list().data[0].owned_by == "vllm"
        chunks = list(client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hello there"}], max_tokens=5, stream=True,
            stream_options={"include_usage": True}))
        assert chunks[0].choices[0].delta.role == "assistant"
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5, hop
        assert chunks[-1].usage.prompt_tokens == 2 and chunks[-1].usage.total_tokens == 7
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert len(text.split()) == 5
        c = client.completions.create(model=MODEL, prompt="one two three", max_tokens=4)
        assert c.object == "text_completion" and c.usage.completion_tokens == 4 and len(c.choices[0].text.split()) == 4
        assert c.choices[0].finish_reason == "length" and c.id.startswith("cmpl-")
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="other/model", messages=[{"role": "user", "content": "x"}])
        with pytest.raises(openai.BadRequestError, match="empty conversation"):
            client.chat.completions.create(model=MODEL, messages=[])


def test_check_server_finds_no_difference_in_the_emulated_engine(emulated):
    urls, _ = emulated
    assert parity.check_server(urls["engine"], MODEL, metrics_url=urls["engine"] + "/metrics") == []
    for hop in ("proxy", "gateway"):
        if hop in urls:  # through the gateway: the same answers (its /metrics is the proxy's own)
            assert parity.check_server(urls[hop], MODEL) == [], hop


def test_emulated_prompt_beyond_the_context_is_cut_as_vllm_cuts_it(emulated):
    """vLLM 0.32.0 runs prompt + max_tokens beyond the context with max_tokens cut to what is left (recorded: a
    317-token prompt with max_tokens 2000 ran 1731 tokens, finish_reason length)."""
    urls, eng = emulated
    ctx = eng.model.context_tokens
    body = {"model": MODEL, "prompt": " ".join(["w"] * (ctx - 3)), "max_tokens": 100}
    status, _, text = parity.http("POST", urls["engine"] + "/v1/completions", body)
    r = json.loads(text)
    assert status == 200 and r["usage"]["completion_tokens"] == 3 and r["choices"][0]["finish_reason"] == "length"
    body["prompt"] = " ".join(["w"] * (ctx + 5))
    status, _, text = parity.http("POST", urls["engine"] + "/v1/completions", body)
    assert status == 400 and f"at least {ctx + 1} input tokens" in json.loads(text)["error"]["message"]


# -- check_server can fail ---------------------------------------------------------------------------------------
def test_check_server_reports_a_server_that_answers_otherwise(tmp_path):
    """A server that answers the emulated engine's old way (a JSON /health, no /v1/models or /v1/completions, errors
    without vLLM's envelope, chunks without the null fields, no usage chunk) is reported, route by route."""
    from aiohttp import web

    from llmrca.testbed.rundir import free_ports
    from llmrca.testbed.service import start_site

    async def health(request):
        return web.json_response({"status": "ok"})

    async def chat(request):
        body = await request.json()
        if not body.get("messages"):
            return web.json_response({"object": "error", "message": "bad", "code": 400}, status=400)
        if not body.get("stream"):
            return web.json_response({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": MODEL,
                                      "choices": [{"index": 0, "message": {"role": "assistant", "content": "a b"},
                                                   "finish_reason": "length"}],
                                      "usage": {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": MODEL}
        for i in range(body.get("max_tokens", 3)):
            await resp.write(f"data: {json.dumps({**head, 'choices': [{'index': 0, 'delta': {'content': ' w'}}]})}"
                             "\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_post("/v1/chat/completions", chat)
    port = free_ports(1)[0]
    lp = _Loop()
    runner = lp.run(start_site(app, port))
    try:
        diffs = parity.check_server(f"http://127.0.0.1:{port}", MODEL, metrics_url=f"http://127.0.0.1:{port}/metrics",
                                    timeout=10)
    finally:
        lp.run(runner.cleanup())
        lp.close()
    text = "\n".join(diffs)
    for expected in ("GET /health body", "GET /version status", "openai models.list()", "GET /v1/models status",
                     "POST /v1/completions status", "POST /v1/chat/completions: keys differ",
                     "POST /v1/chat/completions stream content type", "usage chunk",
                     "error empty_messages", "error unknown_model status", "metric vllm:num_requests_running"):
        assert expected in text, (expected, text)


def test_an_aborted_request_is_not_counted_as_vllm_does_not_count_it(emulated):
    """Recorded on vLLM 0.32.0: two requests whose clients left mid-answer left ``request_success_total`` (every
    finished_reason, "abort" included) and the e2e histogram's count unchanged."""
    import urllib.request

    urls, eng = emulated

    def counts() -> tuple[float, float]:
        text = parity.http("GET", urls["engine"] + "/metrics")[2]
        fams = parity.parse_metrics(text)
        e2e = next(float(ln.split()[-1]) for ln in text.splitlines()
                   if ln.startswith("vllm:e2e_request_latency_seconds_count"))
        assert fams["vllm:request_success_total"]["samples"]
        ok = sum(float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith("vllm:request_success_total{"))
        return ok, e2e

    before = counts()
    aborted = len(eng.rt.aborted)
    req = urllib.request.Request(urls["engine"] + "/v1/chat/completions", data=json.dumps({
        "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2000, "stream": True}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:  # the first event, then the client hangs up
        assert r.readline().startswith(b"data: ")
    end = time.monotonic() + 10
    while time.monotonic() < end and len(eng.rt.aborted) == aborted:
        time.sleep(0.05)
    assert len(eng.rt.aborted) == aborted + 1, "the engine did not abort the request"
    time.sleep(0.2)
    assert counts() == before


def test_access_lines_name_the_method_and_route(emulated):
    """Ray Serve's access lines through the proxy: the method (``GET /`` for /v1/models) and, on the replica, the
    route of the call (``/v1/completions``), each with the catalogue's template for that variant."""
    from llmrca.deploy.telemetry import line, template_of

    urls, eng = emulated
    assert parity.http("GET", urls["proxy"] + "/v1/models")[0] == 200
    assert parity.http("POST", urls["proxy"] + "/v1/completions", {"model": MODEL, "prompt": "a b", "max_tokens": 2}
                       )[0] == 200
    time.sleep(0.2)
    proxy_lines = [json.loads(x) for x in eng.rd.log("proxy").read_text().splitlines()]
    engine_lines = [json.loads(x) for x in eng.rd.log(f"engine-{eng.service}").read_text().splitlines()]
    get = [r for r in proxy_lines if r.get("kind") == "serve.proxy_access" and " -- GET / 200 " in r["message"]]
    assert get and get[-1]["template"] == line("serve.proxy_access").template(method="GET")
    assert template_of(get[-1]["message"]) == get[-1]["template"]
    comp = [r for r in engine_lines if r.get("kind") == "serve.replica_access"
            and " -- POST /v1/completions 200 " in r["message"]]
    assert comp and comp[-1]["template"] == line("serve.replica_access").template(route="/v1/completions")
