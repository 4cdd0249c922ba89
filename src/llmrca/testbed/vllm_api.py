"""What vLLM 0.32.0's OpenAI server answers, as data: request checks with its error bodies and messages, the
``/v1/models`` card, the chat and text completion bodies and stream chunks (field for field, ``null`` fields
included), and the final usage chunk of ``stream_options.include_usage``. The emulated engine
(``llmrca.testbed.engine_server``) answers through these; ``llmrca.testbed.parity`` checks a server against the
recorded answers of a real one (``tests/fixtures/vllm_0.32.0``).

The emulated model's tokenizer counts words (one token per whitespace-separated word); vLLM's counts its
tokenizer's tokens plus the chat template's. Everything else here is vLLM's behaviour as recorded: a prompt longer
than the context is a 400, ``max_tokens`` above the context is a 400, and prompt plus ``max_tokens`` beyond the
context is not an error: ``max_tokens`` is cut to what the context leaves (``finish_reason`` ``length``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

VLLM_VERSION = "0.32.0"  # the vLLM release whose API the emulated engine speaks (and /version reports)
COMPLETION_DEFAULT_MAX_TOKENS = 16  # /v1/completions without max_tokens (OpenAI's default, which vLLM keeps)


def dumps(obj: Any) -> str:
    """JSON as vLLM's server writes it (pydantic's compact form)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class ApiError(Exception):
    """A refused request: HTTP status and vLLM's ``{"error": {...}}`` body."""

    status: int
    message: str
    type: str
    param: str | None = None

    def __str__(self) -> str:
        return self.message

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.status)


def error_body(message: str, type_: str, param: str | None, code: int) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None, value: Any = None, *, show_value: bool = True) -> ApiError:
    """vLLM's 400 for a value its checks refuse: ``<message> (parameter=<p>, value=<v>)``."""
    if param is not None:
        message += f" (parameter={param}, value={value})" if show_value else f" (parameter={param})"
    return ApiError(400, message, "BadRequestError", param)


def _shown(value: Any) -> str:
    # vLLM prints a validation error's input as a string, a container by its size
    if isinstance(value, (dict, list)):
        return f"<{type(value).__name__} of {len(value)} items>"
    return str(value)


def validation_error(kind: str, loc: str, msg: str, value: Any) -> ApiError:
    """FastAPI's request validation error as vLLM reports it (400, type ``Bad Request``, the pydantic error
    printed as a Python dict)."""
    err = {"type": kind, "loc": loc, "msg": msg, "input": _shown(value)}
    return ApiError(400, f"1 validation error:\n  {err}", "Bad Request", loc)


_MESSAGE_PARAMS = ("ChatCompletionDeveloperMessageParam", "ChatCompletionSystemMessageParam",
                   "ChatCompletionUserMessageParam", "ChatCompletionAssistantMessageParam",
                   "ChatCompletionToolMessageParam", "ChatCompletionFunctionMessageParam",
                   "CustomChatCompletionMessageParam")


def invalid_message(i: int, value: Any) -> ApiError:
    """A message that is not an object: pydantic tries each message type of vLLM's union (8 errors)."""
    errs = [{"type": "dict_type", "loc": f"body.messages.{i}.{t}", "msg": "Input should be a valid dictionary",
             "input": _shown(value)} for t in _MESSAGE_PARAMS]
    errs.append({"type": "model_attributes_type", "loc": f"body.messages.{i}.Message",
                 "msg": "Input should be a valid dictionary or object to extract fields from", "input": _shown(value)})
    text = "".join(f"\n  {e}" for e in errs)
    return ApiError(400, f"{len(errs)} validation errors:{text}", "Bad Request", errs[0]["loc"])


def invalid_json(e: json.JSONDecodeError) -> ApiError:
    err = {"type": "json_invalid", "loc": f"body.{e.pos}", "msg": "JSON decode error", "input": "<dict of 0 items>",
           "ctx": {"error": e.msg}}
    return ApiError(400, f"1 validation error:\n  {err}", "Bad Request", f"body.{e.pos}")


def unknown_model(model: str, served: str) -> ApiError:
    return ApiError(404, f"The model `{model}` does not exist. Valid aliases: {served}.", "NotFoundError", "model")


def not_found_detail() -> dict[str, str]:
    """FastAPI's body for a path no route serves (404) ..."""
    return {"detail": "Not Found"}


def method_not_allowed_detail() -> dict[str, str]:
    """... and for a route asked with another method (405)."""
    return {"detail": "Method Not Allowed"}


# -- request fields -----------------------------------------------------------------------------------------------
def _int(body: dict[str, Any], key: str, default: int | None) -> int | None:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool):  # pydantic's lax mode takes a JSON boolean for an int
        return int(v)
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        if v.is_integer():
            return int(v)
        raise validation_error("int_from_float", f"body.{key}",
                               "Input should be a valid integer, got a number with a fractional part", v)
    if isinstance(v, str):
        try:
            return int(v.strip())
        except ValueError:
            raise validation_error("int_parsing", f"body.{key}",
                                   "Input should be a valid integer, unable to parse string as an integer", v) from None
    raise validation_error("int_type", f"body.{key}", "Input should be a valid integer", v)


def _float(body: dict[str, Any], key: str, default: float) -> float:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, (bool, int, float)):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v.strip())
        except ValueError:
            raise validation_error("float_parsing", f"body.{key}",
                                   "Input should be a valid number, unable to parse string as a number", v) from None
    raise validation_error("float_type", f"body.{key}", "Input should be a valid number", v)


def _model(body: dict[str, Any], served: str) -> None:
    model = body.get("model")
    if model is not None and model != served:  # no model field: the served one
        raise unknown_model(str(model), served)


def _stream(body: dict[str, Any]) -> tuple[bool, bool, bool]:
    """stream, include_usage, continuous_usage_stats."""
    stream = bool(body.get("stream") or False)
    opts = body.get("stream_options")
    if opts is None:
        return stream, False, False
    if not isinstance(opts, dict):
        raise validation_error("model_type", "body.stream_options",
                               "Input should be a valid dictionary or instance of StreamOptions", opts)
    if not stream:
        raise bad_request("Stream options can only be defined when `stream=True`.", "stream_options",
                          show_value=False)
    return stream, bool(opts.get("include_usage") or False), bool(opts.get("continuous_usage_stats") or False)


def _sampling(body: dict[str, Any]) -> dict[str, Any]:
    n = _int(body, "n", 1)
    temperature = _float(body, "temperature", 1.0)
    top_p = _float(body, "top_p", 1.0)
    if n is None or n < 1:
        raise bad_request(f"n must be at least 1, got {n}.")  # recorded: no parameter named
    if temperature < 0.0:
        raise bad_request(f"temperature must be non-negative, got {temperature}.", "temperature", temperature)
    if temperature > 2.0:
        raise bad_request(f"temperature must be in [0, 2], got {temperature}.", "temperature", temperature)
    if not 0.0 < top_p <= 1.0:
        raise bad_request(f"top_p must be in (0, 1], got {top_p}.", "top_p", top_p)
    return {"n": n, "temperature": temperature, "top_p": top_p}


def _lengths(n_prompt: int, exact: bool, max_tokens: int | None, context: int) -> int:
    """``max_tokens`` as vLLM runs the request: above the context a 400; unset or beyond what the prompt leaves,
    what it leaves; a prompt longer than the context a 400 (a text prompt is tokenized only to one token past the
    context, so its count reads "at least")."""
    if max_tokens is not None and max_tokens > context:
        raise bad_request(f"max_tokens={max_tokens} cannot be greater than max_model_len={context}. Please request "
                          "fewer output tokens.", "max_tokens", max_tokens)
    if n_prompt > context:
        shown = n_prompt if exact else context + 1
        raise bad_request(f"This model's maximum context length is {context} tokens. However, your prompt contains "
                          f"{'' if exact else 'at least '}{shown} input tokens, which exceeds this limit even "
                          "without any output tokens. Please reduce the length of the input prompt.", "input_tokens",
                          shown)
    left = context - n_prompt
    mt = left if max_tokens is None else min(max_tokens, left)
    if mt < 1:
        raise bad_request(f"max_tokens must be at least 1, got {mt}.", "max_tokens", mt)
    return mt


def words(text: str) -> int:
    """The emulated model's tokenizer: one token per whitespace-separated word."""
    return len(text.split())


def parse_chat(body: Any, context: int, served: str) -> dict[str, Any]:
    """A ``/v1/chat/completions`` request checked as vLLM checks it; raises :class:`ApiError`. ``max_tokens``
    is what the request runs with; ``max_tokens_set`` whether the client set it."""
    if not isinstance(body, dict):
        raise validation_error("model_attributes_type", "body", "Input should be a valid dictionary or object to "
                               "extract fields from", body)
    if "messages" not in body:
        raise validation_error("missing", "body.messages", "Field required", body)
    msgs = body["messages"]
    if not isinstance(msgs, list):
        raise validation_error("list_type", "body.messages", "Input should be a valid list", msgs)
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise invalid_message(i, m)
    stream, usage, continuous = _stream(body)
    mt = _int(body, "max_completion_tokens", None)
    mt = _int(body, "max_tokens", mt)
    sampling = _sampling(body)
    _model(body, served)
    if not msgs:
        raise bad_request("Cannot apply chat template to an empty conversation. Provide at least one message.")
    text = "\n".join(_content(m.get("content")) for m in msgs)
    n_prompt = words(text)
    return {"text": text, "prompt_tokens": n_prompt, "max_tokens": _lengths(n_prompt, False, mt, context),
            "max_tokens_set": mt is not None, "stream": stream, "include_usage": usage,
            "continuous_usage": continuous, **sampling}


def _content(c: Any) -> str:
    if isinstance(c, list):  # content parts: the text ones
        return " ".join(str(p.get("text", "")) for p in c if isinstance(p, dict))
    return "" if c is None else str(c)


def parse_completion(body: Any, context: int, served: str) -> dict[str, Any]:
    """A ``/v1/completions`` request (one prompt: a string, a list of one string, or token ids)."""
    if not isinstance(body, dict):
        raise validation_error("model_attributes_type", "body", "Input should be a valid dictionary or object to "
                               "extract fields from", body)
    stream, usage, continuous = _stream(body)
    mt = _int(body, "max_tokens", COMPLETION_DEFAULT_MAX_TOKENS)
    sampling = _sampling(body)
    _model(body, served)
    p = body.get("prompt")
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str):
        p = p[0]
    if isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
        text, n_prompt, exact = "", len(p), True
    elif isinstance(p, str) and p:
        text, n_prompt, exact = p, words(p), False
    elif isinstance(p, list) and len(p) > 1:
        # vLLM serves a batch of prompts as one response with a choice per prompt; the emulated engine runs one
        # request per prompt only.
        raise bad_request("The emulated engine takes one prompt per request.", "prompt", show_value=False)
    else:
        raise bad_request("Either prompt or prompt_embeds must be provided and non-empty.", "prompt",
                          show_value=False)
    return {"text": text, "prompt_tokens": n_prompt, "max_tokens": _lengths(n_prompt, exact, mt, context),
            "max_tokens_set": True, "stream": stream, "include_usage": usage, "continuous_usage": continuous,
            **sampling}


# -- answers ------------------------------------------------------------------------------------------------------
def models(served: str, root: str, context: int, created: int, perm_id: str) -> dict[str, Any]:
    """``GET /v1/models``: the one served model."""
    return {"object": "list", "data": [{
        "id": served, "object": "model", "created": created, "owned_by": "vllm", "root": root, "parent": None,
        "max_model_len": context, "permission": [{
            "id": f"modelperm-{perm_id}", "object": "model_permission", "created": created,
            "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True,
            "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False, "organization": "*",
            "group": None, "is_blocking": False}]}]}


def usage(prompt: int, completion: int, *, details: bool) -> dict[str, Any]:
    u: dict[str, Any] = {"prompt_tokens": prompt, "total_tokens": prompt + completion, "completion_tokens": completion}
    if details:
        u["prompt_tokens_details"] = None
        u["completion_tokens_details"] = None
    return u


def chat_response(rid: str, created: int, model: str, content: str, reason: str, prompt: int, completion: int,
                  fingerprint: str) -> dict[str, Any]:
    return {
        "id": rid, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "refusal": None,
                                             "annotations": None, "audio": None, "function_call": None,
                                             "reasoning": None},
                     "logprobs": None, "finish_reason": reason, "stop_reason": None, "token_ids": None,
                     "routed_experts": None}],
        "service_tier": None, "system_fingerprint": fingerprint, "usage": usage(prompt, completion, details=True),
        "prompt_logprobs": None, "prompt_token_ids": None, "prompt_text": None, "kv_transfer_params": None,
        "ec_transfer_params": None, "metrics": None}


def completion_response(rid: str, created: int, model: str, text: str, reason: str, prompt: int, completion: int,
                        fingerprint: str) -> dict[str, Any]:
    return {
        "id": rid, "object": "text_completion", "created": created, "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": reason, "stop_reason": None,
                     "token_ids": None, "prompt_logprobs": None, "prompt_token_ids": None, "routed_experts": None}],
        "service_tier": None, "system_fingerprint": fingerprint, "usage": usage(prompt, completion, details=True),
        "kv_transfer_params": None, "ec_transfer_params": None, "metrics": None}


class Stream:
    """The ``data:`` events of one streamed answer (chat or text completion), as vLLM sends them: for a chat a
    first chunk with the role, one chunk per token, the last token's chunk with the finish reason; with
    ``include_usage`` a last chunk without choices that carries the usage (and the fingerprint, which is
    otherwise on the finish chunk); then ``[DONE]``."""

    def __init__(self, chat: bool, rid: str, created: int, model: str, fingerprint: str, prompt_tokens: int,
                 include_usage: bool, continuous_usage: bool):
        self.chat = chat
        self.head = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion", "created": created,
                     "model": model}
        self.fingerprint = fingerprint
        self.prompt_tokens = prompt_tokens
        self.include_usage = include_usage
        self.continuous = continuous_usage and include_usage
        self.sent = 0

    def _event(self, choices: list[dict[str, Any]], **extra: Any) -> str:
        return "data: " + dumps({**self.head, "choices": choices, **extra}) + "\n\n"

    def _running_usage(self) -> dict[str, Any]:
        if not self.continuous:
            return {}
        return {"usage": {**usage(self.prompt_tokens, self.sent, details=False), "completion_tokens_details": None}}

    def first(self) -> str:
        """The chat's role chunk (a text completion has none)."""
        if not self.chat:
            return ""
        return self._event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                             "finish_reason": None}], **self._running_usage(), prompt_token_ids=None, prompt_text=None)

    def _choice(self, text: str, reason: str | None) -> dict[str, Any]:
        if self.chat:
            c: dict[str, Any] = {"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": reason}
            if reason is not None:
                c["stop_reason"] = None
            c["token_ids"] = None
            return c
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": reason, "stop_reason": None,
                "prompt_token_ids": None, "token_ids": None}

    def token(self, text: str) -> str:
        self.sent += 1
        return self._event([self._choice(text, None)], **self._running_usage())

    def finish(self, text: str, reason: str, tokens: int) -> str:
        """The finish chunk (with the last token's text, ``tokens`` the count with it), the usage chunk, [DONE]."""
        self.sent = tokens
        out = self._event([self._choice(text, reason)], **self._running_usage(),
                          **({} if self.include_usage else {"system_fingerprint": self.fingerprint}))
        if self.include_usage:
            out += self._event([], usage=usage(self.prompt_tokens, tokens, details=False),
                               system_fingerprint=self.fingerprint)
        return out + "data: [DONE]\n\n"

    @staticmethod
    def error(message: str, type_: str, code: int) -> str:
        """A failure after the stream began: vLLM sends the error as one event, then [DONE]."""
        return "data: " + dumps(error_body(message, type_, None, code)) + "\n\ndata: [DONE]\n\n"
