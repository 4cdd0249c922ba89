"""Does a server speak like vLLM 0.32.0's OpenAI server? :func:`check_server` asks a running server (a bare engine,
emulated or real, or the testbed's gateway) what a client asks, with the official ``openai`` client and plain HTTP,
and compares the answers field by field with the shapes recorded from the real server
(``tests/fixtures/vllm_0.32.0``, which ``tests/test_engine_parity.py`` checks these constants against).

Compared: status codes; the JSON keys of every answer (``/v1/models`` and its permission card, chat and text
completions, each kind of stream chunk, the usage chunk of ``stream_options.include_usage``); fixed values (object
names, ``owned_by``, ``/version``, an empty ``/health``); the error body, type, param and message of each request
in :data:`ERRORS` (an empty or missing ``messages``, an unknown model: 404, ``max_tokens`` beyond the context, 0 or
fractional, a prompt past the context, ``n`` 0, ``temperature`` above 2, ``stream_options`` without ``stream``);
usage arithmetic; and, given a replica's ``/metrics``, every ``vllm:*`` family with its type, label names, label
values and bucket edges. Not compared: generated text, token counts (tokenizers differ), ids, times.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from typing import Any

VERSION = "0.32.0"
# -- the recorded shapes --------------------------------------------------------------------------------------------
MODEL_KEYS = ("id", "object", "created", "owned_by", "root", "parent", "max_model_len", "permission")
PERMISSION_KEYS = ("id", "object", "created", "allow_create_engine", "allow_sampling", "allow_logprobs",
                   "allow_search_indices", "allow_view", "allow_fine_tuning", "organization", "group", "is_blocking")
_TOP = ("id", "object", "created", "model")
SHAPES: dict[str, tuple[str, ...]] = {
    "chat": (*_TOP, "choices", "service_tier", "system_fingerprint", "usage", "prompt_logprobs", "prompt_token_ids",
             "prompt_text", "kv_transfer_params", "ec_transfer_params", "metrics"),
    "chat.choice": ("index", "message", "logprobs", "finish_reason", "stop_reason", "token_ids", "routed_experts"),
    "chat.message": ("role", "content", "refusal", "annotations", "audio", "function_call", "reasoning"),
    "usage": ("prompt_tokens", "total_tokens", "completion_tokens", "prompt_tokens_details",
              "completion_tokens_details"),
    "completion": (*_TOP, "choices", "service_tier", "system_fingerprint", "usage", "kv_transfer_params",
                   "ec_transfer_params", "metrics"),
    "completion.choice": ("index", "text", "logprobs", "finish_reason", "stop_reason", "token_ids",
                          "prompt_logprobs", "prompt_token_ids", "routed_experts"),
    # stream chunks: the chat's role chunk, a token chunk, the finish chunk (fingerprint there unless a usage chunk
    # follows), the usage chunk; the text completion's token and finish chunks
    "chat.first": (*_TOP, "choices", "prompt_token_ids", "prompt_text"),
    "chat.first.choice": ("index", "delta", "logprobs", "finish_reason"),
    "chat.token": (*_TOP, "choices"),
    "chat.token.choice": ("index", "delta", "logprobs", "finish_reason", "token_ids"),
    "chat.finish": (*_TOP, "choices", "system_fingerprint"),
    "chat.finish.choice": ("index", "delta", "logprobs", "finish_reason", "stop_reason", "token_ids"),
    "chat.finish_before_usage": (*_TOP, "choices"),
    "usage_chunk": (*_TOP, "choices", "usage", "system_fingerprint"),
    "usage_chunk.usage": ("prompt_tokens", "total_tokens", "completion_tokens"),
    "completion.token": (*_TOP, "choices"),
    "completion.token.choice": ("index", "text", "logprobs", "finish_reason", "stop_reason", "prompt_token_ids",
                                "token_ids"),
    "completion.finish": (*_TOP, "choices", "system_fingerprint"),
    "error": ("message", "type", "param", "code"),
}
SSE_TYPE = "text/event-stream; charset=utf-8"
JSON_TYPE = "application/json"
# the errors: request body -> (status, error type, param, message with {model}, {ctx}, {mt} filled)
ERRORS: dict[str, tuple[str, dict[str, Any], int, str, str | None, str]] = {
    "empty_messages": ("/v1/chat/completions", {"messages": [], "max_tokens": 3}, 400, "BadRequestError", None,
                       "Cannot apply chat template to an empty conversation. Provide at least one message."),
    "unknown_model": ("/v1/chat/completions", {"model": "nope/none", "messages": [{"role": "user", "content": "hi"}],
                                               "max_tokens": 3}, 404, "NotFoundError", "model",
                      "The model `nope/none` does not exist. Valid aliases: {model}."),
    "unknown_model_completion": ("/v1/completions", {"model": "nope/none", "prompt": "hi", "max_tokens": 3}, 404,
                                 "NotFoundError", "model",
                                 "The model `nope/none` does not exist. Valid aliases: {model}."),
    "max_tokens_context": ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                                                    "max_tokens": "{mt}"}, 400, "BadRequestError", "max_tokens",
                           ("max_tokens={mt} cannot be greater than max_model_len={ctx}. Please request fewer output "
                           "tokens. (parameter=max_tokens, value={mt})")),
    "max_tokens_zero": ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0},
                        400, "BadRequestError", "max_tokens",
                        "max_tokens must be at least 1, got 0. (parameter=max_tokens, value=0)"),
    "n_zero": ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "n": 0},
               400, "BadRequestError", None, "n must be at least 1, got 0."),
    "temperature_high": ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
                                                  "temperature": 5}, 400, "BadRequestError", "temperature",
                         "temperature must be in [0, 2], got 5.0. (parameter=temperature, value=5.0)"),
    "max_tokens_float": ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2.5},
                         400, "Bad Request", "body.max_tokens",
                         ("1 validation error:\n  {'type': 'int_from_float', 'loc': 'body.max_tokens', 'msg': 'Input "
                          "should be a valid integer, got a number with a fractional part', 'input': '2.5'}")),
    "missing_messages": ("/v1/chat/completions", {"max_tokens": 3}, 400, "Bad Request", "body.messages",
                         ("1 validation error:\n  {'type': 'missing', 'loc': 'body.messages', 'msg': 'Field required', "
                         "'input': '<dict of 2 items>'}")),
    "long_prompt": ("/v1/completions", {"prompt": "{long}", "max_tokens": 3}, 400, "BadRequestError", "input_tokens",
                    ("This model's maximum context length is {ctx} tokens. However, your prompt contains at least "
                    "{ctx1} input tokens, which exceeds this limit even without any output tokens. Please reduce the "
                    "length of the input prompt. (parameter=input_tokens, value={ctx1})")),
    "stream_options_without_stream": ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                                                               "max_tokens": 3, "stream_options": {
                                                                   "include_usage": True}},
                                      400, "BadRequestError", "stream_options",
                                      ("Stream options can only be defined when `stream=True`. "
                                      "(parameter=stream_options)")),
}
# /metrics: family -> (type, label names besides engine and model_name); label values where vLLM enumerates them
FAMILIES: dict[str, tuple[str, tuple[str, ...]]] = {
    **{f"vllm:{n}": ("gauge", ()) for n in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc")},
    "vllm:num_requests_waiting_by_reason": ("gauge", ("reason",)),
    "vllm:engine_sleep_state": ("gauge", ("sleep_state",)),
    **{f"vllm:{n}_total": ("counter", ()) for n in (
        "estimated_flops_per_gpu", "estimated_read_bytes_per_gpu", "estimated_write_bytes_per_gpu",
        "prefix_cache_queries", "prefix_cache_hits", "external_prefix_cache_queries", "external_prefix_cache_hits",
        "mm_cache_queries", "mm_cache_hits", "num_preemptions", "prompt_tokens", "prompt_tokens_cached",
        "generation_tokens")},
    "vllm:prompt_tokens_by_source_total": ("counter", ("source",)),
    "vllm:prompt_tokens_cached_by_source_total": ("counter", ("source",)),
    "vllm:request_success_total": ("counter", ("finished_reason",)),
    "vllm:admission_rejections_total": ("counter", ("reason",)),
    **{f"vllm:{n}": ("histogram", ()) for n in (
        "request_prompt_tokens", "request_generation_tokens", "iteration_tokens_total",
        "request_max_num_generation_tokens", "request_params_n", "request_params_max_tokens",
        "time_to_first_token_seconds", "inter_token_latency_seconds", "request_time_per_output_token_seconds",
        "e2e_request_latency_seconds", "request_queue_time_seconds", "request_inference_time_seconds",
        "request_prefill_time_seconds", "request_decode_time_seconds", "request_num_preemptions",
        "request_prefill_kv_computed_tokens")},
    "vllm:cache_config_info": ("gauge", ()),  # its labels are CacheConfig's fields: compared as a set below
}
NO_ENGINE_LABEL = ("vllm:admission_rejections_total",)  # vLLM's one family without the engine label
LABEL_VALUES = {
    "reason": {"vllm:num_requests_waiting_by_reason": ("capacity", "deferred"),
               "vllm:admission_rejections_total": ("max_num_queued_reqs", "max_num_queued_tokens")},
    "sleep_state": {"vllm:engine_sleep_state": ("awake", "weights_offloaded", "discard_all")},
    "source": {"vllm:prompt_tokens_by_source_total": ("local_compute", "local_cache_hit", "external_kv_transfer"),
               "vllm:prompt_tokens_cached_by_source_total": ("device", "host", "p2p", "disk",
                                                             "external_unspecified")},
    "finished_reason": {"vllm:request_success_total": ("stop", "length", "abort", "error", "repetition")},
}
CACHE_CONFIG_LABELS = (
    "_block_size_resolved", "block_size", "cache_dtype", "cache_hit_alignment_tokens",
    "effective_attention_block_size", "enable_mamba_shared_prefix_checkpoint", "enable_prefix_caching", "engine",
    "gpu_memory_utilization", "hash_block_size", "is_attention_free", "kv_cache_dtype_skip_layers", "kv_cache_layout",
    "kv_cache_max_concurrency", "kv_cache_memory_bytes", "kv_cache_size_tokens", "kv_offloading_backend",
    "kv_offloading_size", "kv_sharing_fast_prefill", "mamba_block_size", "mamba_cache_dtype", "mamba_cache_mode",
    "mamba_page_size_padded", "mamba_ssm_cache_dtype", "num_cpu_blocks", "num_gpu_blocks", "num_gpu_blocks_override",
    "prefix_cache_retention_interval", "prefix_caching_hash_algo", "prefix_match_unit", "replayssm_buffer_len",
    "skip_page_size_padded", "sliding_window", "swa_bounded_replay", "use_kda_recoverssm", "use_replayssm",
    "user_specified_block_size")
_REQUEST_S = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0,
              960.0, 1920.0, 7680.0)
_ITL_S = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
TOKENS = "1-2-5 up to max_model_len"
BUCKETS: dict[str, tuple[float, ...] | str] = {
    "vllm:time_to_first_token_seconds": (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                                         5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0),
    "vllm:inter_token_latency_seconds": _ITL_S, "vllm:request_time_per_output_token_seconds": _ITL_S,
    **{f"vllm:{n}": _REQUEST_S for n in ("e2e_request_latency_seconds", "request_queue_time_seconds",
                                         "request_inference_time_seconds", "request_prefill_time_seconds",
                                         "request_decode_time_seconds")},
    "vllm:iteration_tokens_total": (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384),
    "vllm:request_params_n": (1, 2, 5, 10, 20),
    "vllm:request_num_preemptions": (1, 2, 3, 4, 5, 10, 20),
    **{f"vllm:{n}": TOKENS for n in ("request_prompt_tokens", "request_generation_tokens",
                                     "request_max_num_generation_tokens", "request_params_max_tokens",
                                     "request_prefill_kv_computed_tokens")},
}


def fill(text: str, **values: Any) -> str:
    """A recorded message with ``{model}``, ``{ctx}``, ``{mt}`` filled (and every other brace kept)."""
    for k, v in values.items():
        text = text.replace("{" + k + "}", str(v))
    return text


def token_buckets(max_model_len: int) -> tuple[int, ...]:
    out, k = [], 1
    while True:
        for m in (1, 2, 5):
            if m * k > max_model_len:
                return tuple(out)
            out.append(m * k)
        k *= 10


# -- reading answers ------------------------------------------------------------------------------------------------
def http(method: str, url: str, body: Any = None, timeout: float = 60.0) -> tuple[int, str, str]:
    """(status, content type, body text) of one request; an HTTP error status is an answer, not an exception."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data is not None else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode()


def sse_events(text: str) -> list[Any]:
    """The ``data:`` payloads of an event stream (``[DONE]`` as the string)."""
    out: list[Any] = []
    for block in text.split("\n\n"):
        block = block.strip()
        if block.startswith("data: "):
            payload = block[len("data: "):]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def parse_metrics(text: str) -> dict[str, dict[str, Any]]:
    """``vllm:*`` families of a Prometheus text exposition: type and samples (name, labels) per family."""
    types: dict[str, str] = {}
    fams: dict[str, dict[str, Any]] = {}
    sample = re.compile(r"^([^\s{]+)(?:\{(.*)\})?\s+\S+")
    for ln in text.splitlines():
        if ln.startswith("# TYPE "):
            _, _, name, kind = ln.split(maxsplit=3)
            if name.startswith("vllm:") and not name.endswith("_created"):
                types[name] = kind
                fams[name] = {"type": kind, "samples": []}
            continue
        m = sample.match(ln)
        if not m or not m.group(1).startswith("vllm:"):
            continue
        name = m.group(1)
        labels = dict(re.findall(r'([\w]+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        for fam in (name, name.removesuffix("_bucket"), name.removesuffix("_sum"), name.removesuffix("_count")):
            if fam in types and (fam == name or types[fam] == "histogram"):
                fams[fam]["samples"].append((name, labels))
                break
    return fams


# -- the comparison -------------------------------------------------------------------------------------------------
class _Diffs:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, what: str) -> None:
        self.items.append(f"{where}: {what}")

    def keys(self, where: str, obj: Any, shape: str) -> None:
        want = SHAPES[shape]
        if not isinstance(obj, dict):
            self.add(where, f"not a JSON object: {str(obj)[:120]!r}")
            return
        if tuple(obj) != want:
            missing = [k for k in want if k not in obj]
            extra = [k for k in obj if k not in want]
            self.add(where, f"keys differ from vLLM {VERSION}'s: missing {missing}, extra {extra}"
                     if missing or extra else f"keys in another order: {list(obj)}")

    def equal(self, where: str, got: Any, want: Any) -> None:
        if got != want:
            self.add(where, f"{got!r}, vLLM {VERSION} answers {want!r}")


def check_server(base_url: str, model: str, *, metrics_url: str | None = None, timeout: float = 60.0) -> list[str]:
    """The differences between what the server at ``base_url`` answers and what vLLM 0.32.0 serving ``model``
    answers (empty: it speaks like vLLM). ``metrics_url``: a replica's ``/metrics`` to compare too (a gateway's
    ``/metrics`` is its own, so it is not asked unless named)."""
    import openai

    base = base_url.rstrip("/")
    d = _Diffs()
    client = openai.OpenAI(base_url=base + "/v1", api_key="EMPTY", timeout=timeout, max_retries=0)

    status, ctype, text = http("GET", base + "/health", timeout=timeout)
    d.equal("GET /health status", status, 200)
    d.equal("GET /health body", text, "")
    status, ctype, text = http("GET", base + "/version", timeout=timeout)
    d.equal("GET /version status", status, 200)
    d.equal("GET /version content type", ctype, JSON_TYPE)
    if status == 200:
        d.equal("GET /version body", json.loads(text), {"version": VERSION})

    # /v1/models, through the client and as JSON
    ctx = 0
    try:
        ids = [m.id for m in client.models.list()]
        d.equal("openai models.list() ids", ids, [model])
    except openai.OpenAIError as e:
        d.add("openai models.list()", f"raised {type(e).__name__}: {e}")
    status, ctype, text = http("GET", base + "/v1/models", timeout=timeout)
    d.equal("GET /v1/models status", status, 200)
    if status == 200:
        d.equal("GET /v1/models content type", ctype, JSON_TYPE)
        body = json.loads(text)
        d.equal("GET /v1/models keys", list(body), ["object", "data"])
        d.equal("GET /v1/models object", body.get("object"), "list")
        cards = body.get("data") or [{}]
        card = cards[0]
        if tuple(card) != MODEL_KEYS:
            d.add("GET /v1/models data[0]", f"keys {list(card)}, vLLM {VERSION}: {list(MODEL_KEYS)}")
        for k, v in (("id", model), ("object", "model"), ("owned_by", "vllm"), ("parent", None)):
            d.equal(f"GET /v1/models data[0].{k}", card.get(k), v)
        ctx = card.get("max_model_len") if isinstance(card.get("max_model_len"), int) else 0
        if ctx <= 0:
            d.add("GET /v1/models data[0].max_model_len", f"not a positive integer: {card.get('max_model_len')!r}")
        perm = (card.get("permission") or [{}])[0]
        if tuple(perm) != PERMISSION_KEYS:
            d.add("GET /v1/models data[0].permission[0]", f"keys {list(perm)}, vLLM {VERSION}: {list(PERMISSION_KEYS)}")
        d.equal("GET /v1/models data[0].permission[0].object", perm.get("object"), "model_permission")

    chat_body = {"model": model, "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 4}
    comp_body = {"model": model, "prompt": "hello there how are you", "max_tokens": 4}
    _check_whole(d, base, "chat", chat_body, timeout)
    _check_whole(d, base, "completion", comp_body, timeout)
    for usage in (False, True):
        _check_stream(d, base, "chat", chat_body, usage, timeout)
        _check_stream(d, base, "completion", comp_body, usage, timeout)
    _check_client(d, client, model)
    for name, (path, body, want_status, want_type, want_param, want_msg) in ERRORS.items():
        mt = 2 * ctx + 1000
        # a prompt past the context in any tokenizer (a word is at least one token)
        long = " ".join(["word"] * (ctx + 52))
        filled = json.loads(json.dumps(body).replace('"{mt}"', str(mt)).replace('"{long}"', json.dumps(long)))
        filled.setdefault("model", model)
        status, ctype, text = http("POST", base + path, filled, timeout)
        where = f"error {name}"
        d.equal(f"{where} status", status, want_status)
        try:
            err = json.loads(text)
        except ValueError:
            d.add(where, f"body is not JSON: {text[:120]!r}")
            continue
        if not (isinstance(err, dict) and list(err) == ["error"]):
            d.add(where, f"body {text[:160]!r} is not vLLM's {{\"error\": {{...}}}}")
            continue
        d.keys(f"{where} error", err["error"], "error")
        e = err["error"]
        d.equal(f"{where} type", e.get("type"), want_type)
        d.equal(f"{where} param", e.get("param"), want_param)
        d.equal(f"{where} code", e.get("code"), want_status)
        d.equal(f"{where} message", e.get("message"), fill(want_msg, model=model, ctx=ctx, mt=mt, ctx1=ctx + 1))
    if metrics_url is not None:
        _check_metrics(d, metrics_url, model, ctx, timeout)
    return d.items


def _check_whole(d: _Diffs, base: str, kind: str, body: dict[str, Any], timeout: float) -> None:
    path = "/v1/chat/completions" if kind == "chat" else "/v1/completions"
    status, ctype, text = http("POST", base + path, body, timeout)
    where = f"POST {path}"
    d.equal(f"{where} status", status, 200)
    if status != 200:
        d.add(where, f"answered {text[:200]!r}")
        return
    d.equal(f"{where} content type", ctype, JSON_TYPE)
    r = json.loads(text)
    d.keys(where, r, kind)
    d.equal(f"{where} object", r.get("object"), "chat.completion" if kind == "chat" else "text_completion")
    d.equal(f"{where} model", r.get("model"), body["model"])
    if not str(r.get("id", "")).startswith("chatcmpl-" if kind == "chat" else "cmpl-"):
        d.add(f"{where} id", f"{r.get('id')!r} lacks vLLM's prefix")
    if not str(r.get("system_fingerprint", "")).startswith(f"vllm-{VERSION}-"):
        d.add(f"{where} system_fingerprint", f"{r.get('system_fingerprint')!r}")
    choice = (r.get("choices") or [{}])[0]
    d.keys(f"{where} choices[0]", choice, f"{kind}.choice")
    if kind == "chat":
        d.keys(f"{where} choices[0].message", choice.get("message"), "chat.message")
    d.equal(f"{where} finish_reason", choice.get("finish_reason"), "length")
    u = r.get("usage") or {}
    d.keys(f"{where} usage", u, "usage")
    d.equal(f"{where} usage.completion_tokens", u.get("completion_tokens"), body["max_tokens"])
    if u.get("total_tokens") != (u.get("prompt_tokens") or 0) + (u.get("completion_tokens") or 0):
        d.add(f"{where} usage", f"total_tokens is not prompt + completion: {u}")


def _check_stream(d: _Diffs, base: str, kind: str, body: dict[str, Any], usage: bool, timeout: float) -> None:
    path = "/v1/chat/completions" if kind == "chat" else "/v1/completions"
    req = {**body, "stream": True, **({"stream_options": {"include_usage": True}} if usage else {})}
    status, ctype, text = http("POST", base + path, req, timeout)
    where = f"POST {path} stream{' include_usage' if usage else ''}"
    d.equal(f"{where} status", status, 200)
    if status != 200:
        return
    d.equal(f"{where} content type", ctype, SSE_TYPE)
    ev = sse_events(text)
    if not ev or ev[-1] != "[DONE]":
        d.add(where, "does not end with data: [DONE]")
        return
    chunks = ev[:-1]
    tail = chunks[-1:] if usage else []
    if usage:
        uc = tail[0] if tail else {}
        d.keys(f"{where} usage chunk", uc, "usage_chunk")
        d.equal(f"{where} usage chunk choices", uc.get("choices"), [])
        d.keys(f"{where} usage chunk usage", uc.get("usage"), "usage_chunk.usage")
        u = uc.get("usage") or {}
        d.equal(f"{where} usage.completion_tokens", u.get("completion_tokens"), body["max_tokens"])
        chunks = chunks[:-1]
    if kind == "chat":
        if not chunks:
            d.add(where, "no chunks")
            return
        first, chunks = chunks[0], chunks[1:]
        d.keys(f"{where} first chunk", first, "chat.first")
        d.keys(f"{where} first chunk choice", (first.get("choices") or [{}])[0], "chat.first.choice")
        d.equal(f"{where} first chunk delta", (first.get("choices") or [{}])[0].get("delta"),
                {"role": "assistant", "content": ""})
    if not chunks:
        d.add(where, "no token chunks")
        return
    *tokens, fin = chunks
    # One chunk per token at rest; a server whose loop falls behind its client merges the deltas not yet sent
    # into one chunk (vLLM's output collector does: 1 chunk for 4 tokens on a loaded 2-core machine), so fewer
    # chunks than tokens is vLLM's behaviour too, more is not.
    if not 1 <= len(tokens) + 1 <= body["max_tokens"]:
        d.add(f"{where} token chunks", f"{len(tokens) + 1}, vLLM 0.32.0 answers 1 to {body['max_tokens']}")
    for i, c in enumerate(tokens):
        d.keys(f"{where} token chunk {i}", c, f"{kind}.token")
        d.keys(f"{where} token chunk {i} choice", (c.get("choices") or [{}])[0], f"{kind}.token.choice")
    d.keys(f"{where} finish chunk", fin, "chat.finish_before_usage" if usage and kind == "chat"
           else ("completion.token" if usage else f"{kind}.finish"))
    fc = (fin.get("choices") or [{}])[0]
    d.keys(f"{where} finish chunk choice", fc, "chat.finish.choice" if kind == "chat" else "completion.token.choice")
    d.equal(f"{where} finish_reason", fc.get("finish_reason"), "length")
    d.equal(f"{where} chunk object", {c.get("object") for c in chunks},
            {"chat.completion.chunk" if kind == "chat" else "text_completion"})


def _check_client(d: _Diffs, client: Any, model: str) -> None:
    """What an application using the official client sees: a streamed chat with usage, a completion, errors."""
    import openai

    try:
        stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hello"}],
                                                max_tokens=3, stream=True, stream_options={"include_usage": True})
        chunks = list(stream)
        last = chunks[-1] if chunks else None
        if last is None or last.usage is None or last.choices:
            d.add("openai chat stream include_usage", "the last chunk does not carry the usage alone")
        elif last.usage.completion_tokens != 3:
            d.add("openai chat stream include_usage", f"usage {last.usage}")
        text = "".join((c.choices[0].delta.content or "") for c in chunks if c.choices)
        if not text:
            d.add("openai chat stream", "no content streamed")
    except openai.OpenAIError as e:
        d.add("openai chat stream include_usage", f"raised {type(e).__name__}: {e}")
    try:
        c = client.completions.create(model=model, prompt="hello there", max_tokens=3)
        if c.usage is None or c.usage.completion_tokens != 3 or not c.choices:
            d.add("openai completions.create", f"answer {c}")
    except openai.OpenAIError as e:
        d.add("openai completions.create", f"raised {type(e).__name__}: {e}")
    for what, call, want in (
        ("an empty messages list", lambda: client.chat.completions.create(model=model, messages=[], max_tokens=3),
         openai.BadRequestError),
        ("an unknown model", lambda: client.chat.completions.create(
            model="nope/none", messages=[{"role": "user", "content": "hi"}], max_tokens=3), openai.NotFoundError),
    ):
        try:
            call()
            d.add(f"openai client, {what}", f"no error; vLLM {VERSION} raises {want.__name__}")
        except openai.APIStatusError as e:
            if not isinstance(e, want):
                d.add(f"openai client, {what}", f"raised {type(e).__name__}; vLLM {VERSION} raises {want.__name__}")
        except openai.OpenAIError as e:
            d.add(f"openai client, {what}", f"raised {type(e).__name__}: {e}")


def _check_metrics(d: _Diffs, url: str, model: str, ctx: int, timeout: float) -> None:
    status, _, text = http("GET", url, timeout=timeout)
    d.equal("GET /metrics status", status, 200)
    fams = parse_metrics(text)
    for name, (kind, extra) in FAMILIES.items():
        f = fams.get(name)
        where = f"metric {name}"
        if f is None:
            d.add(where, "missing")
            continue
        d.equal(f"{where} type", f["type"], kind)
        if not f["samples"]:
            d.add(where, "no series")
            continue
        if name == "vllm:cache_config_info":
            d.equal(f"{where} labels", sorted({k for _, lab in f["samples"] for k in lab}), list(CACHE_CONFIG_LABELS))
            continue
        base = ("model_name",) if name in NO_ENGINE_LABEL else ("engine", "model_name")
        want = sorted({*base, *extra, *(("le",) if kind == "histogram" else ())})
        got = sorted({k for _, lab in f["samples"] for k in lab})
        d.equal(f"{where} label names", got, want)
        d.equal(f"{where} model_name", sorted({lab.get("model_name") for _, lab in f["samples"]}), [model])
        if "engine" in base:
            d.equal(f"{where} engine", sorted({lab.get("engine") for _, lab in f["samples"]}), ["0"])
        for label in extra:
            values = LABEL_VALUES[label][name]
            seen = sorted({lab.get(label) for s, lab in f["samples"]})
            d.equal(f"{where} {label} values", seen, sorted(values))
        if kind == "histogram":
            edges = BUCKETS[name]
            want_edges = [float(b) for b in (token_buckets(ctx) if edges == TOKENS else edges)]
            got_edges = [float(lab["le"]) for s, lab in f["samples"] if s.endswith("_bucket") and lab["le"] != "+Inf"]
            d.equal(f"{where} bucket edges", got_edges, want_edges)
    extra = sorted(set(fams) - set(FAMILIES))
    if extra:
        d.add("metrics", f"vllm:* families vLLM {VERSION} does not export: {extra}")
