"""The emulated engine's ``vllm:*`` series as vLLM 0.32.0 exports them (recorded in
``tests/fixtures/vllm_0.32.0/metrics.txt``): every family, its type, its labels (``engine`` and ``model_name``,
plus ``finished_reason``, ``reason``, ``source``, ``sleep_state`` where vLLM has them, each with vLLM's label
values from the start) and its bucket edges. What the emulated engine does not model is exported as vLLM exports
it on a deployment that does not use it: multi-modal and external (KV-connector) caches at 0, MFU estimates at 0
(vLLM counts them only with ``--enable-mfu-metrics``), the engine awake, no admission rejections (no queue limit).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llmrca.deploy.telemetry import VLLM_ENGINE_INDEX
from llmrca.sim.metrics import ITL_BUCKETS, REQUEST_BUCKETS, TTFT_BUCKETS
from llmrca.testbed.telemetry import WeightedHistograms

ITERATION_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
PARAMS_N_BUCKETS = (1, 2, 5, 10, 20)
PREEMPTION_BUCKETS = (1, 2, 3, 4, 5, 10, 20)
FINISHED_REASONS = ("stop", "length", "abort", "error", "repetition")
WAITING_REASONS = ("capacity", "deferred")
SLEEP_STATES = ("awake", "weights_offloaded", "discard_all")
PROMPT_SOURCES = ("local_compute", "local_cache_hit", "external_kv_transfer")
CACHED_SOURCES = ("device", "host", "p2p", "disk", "external_unspecified")
ADMISSION_REASONS = ("max_num_queued_reqs", "max_num_queued_tokens")


def token_buckets(max_model_len: int) -> tuple[int, ...]:
    """vLLM's 1-2-5 series up to the model's context (its buckets of the per-request token histograms)."""
    out: list[int] = []
    k = 1
    while True:
        for m in (1, 2, 5):
            if m * k > max_model_len:
                return tuple(out)
            out.append(m * k)
        k *= 10


class VllmMetrics:
    """The registry of one engine's ``vllm:*`` series and the updates the engine makes to it."""

    def __init__(self, model: str, *, context: int, config_info: Mapping[str, str]):
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.model = model
        reg = self.registry = CollectorRegistry()
        eng = str(VLLM_ENGINE_INDEX)
        base = {"engine": eng, "model_name": model}
        lm = list(base)

        def gauge(name: str, doc: str, extra: tuple[str, ...] = ()) -> Any:
            return Gauge(f"vllm:{name}", doc, [*lm, *extra], registry=reg)

        def counter(name: str, doc: str, extra: tuple[str, ...] = (), values: tuple[str, ...] = ()) -> Any:
            c = Counter(f"vllm:{name}", doc, [*lm, *extra], registry=reg)
            for v in values or [None]:  # each series exists (at 0) before its first event, as vLLM's do
                c.labels(eng, model, *([v] if v is not None else []))
            return c

        self.running = gauge("num_requests_running", "Number of requests in model execution batches.")
        self.waiting = gauge("num_requests_waiting", "Number of requests waiting to be processed.")
        self.waiting_by = gauge("num_requests_waiting_by_reason", "Number of waiting requests by reason.",
                                ("reason",))
        sleep = gauge("engine_sleep_state", "Engine sleep state.", ("sleep_state",))
        for s in SLEEP_STATES:
            sleep.labels(eng, model, s).set(1.0 if s == "awake" else 0.0)
        self.kv = gauge("kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.")
        for name, doc in (("estimated_flops_per_gpu", "Estimated number of floating point operations per GPU."),
                          ("estimated_read_bytes_per_gpu", "Estimated number of bytes read from memory per GPU."),
                          ("estimated_write_bytes_per_gpu", "Estimated number of bytes written to memory per GPU."),
                          ("external_prefix_cache_queries", "External prefix cache queries, in tokens."),
                          ("external_prefix_cache_hits", "External prefix cache hits, in tokens."),
                          ("mm_cache_queries", "Multi-modal cache queries, in items."),
                          ("mm_cache_hits", "Multi-modal cache hits, in items.")):
            counter(name, doc)
        self.prefix_queries = counter("prefix_cache_queries", "Prefix cache queries, in queried tokens.")
        self.prefix_hits = counter("prefix_cache_hits", "Prefix cache hits, in cached tokens.")
        self.preemptions = counter("num_preemptions", "Cumulative number of preemption from the engine.")
        self.prompt = counter("prompt_tokens", "Number of prefill tokens processed.")
        self.prompt_by = counter("prompt_tokens_by_source", "Number of prompt tokens by source.", ("source",),
                                 PROMPT_SOURCES)
        self.cached = counter("prompt_tokens_cached", "Number of cached prompt tokens (local + external).")
        self.cached_by = counter("prompt_tokens_cached_by_source", "Prefix-cache hit tokens by cache tier.",
                                 ("source",), CACHED_SOURCES)
        self.generation = counter("generation_tokens", "Number of generation tokens processed.")
        self.success = counter("request_success", "Count of successfully processed requests.",
                               ("finished_reason",), FINISHED_REASONS)
        adm = Counter("vllm:admission_rejections", "Admission attempts rejected by a queue limit, by reason.",
                      ["model_name", "reason"], registry=reg)  # vLLM's one family without the engine label
        for r in ADMISSION_REASONS:
            adm.labels(model, r)
        info = Gauge("vllm:cache_config_info", "Information of the LLMEngine CacheConfig",
                     sorted([*config_info, "engine"]), registry=reg)
        info.labels(**{**config_info, "engine": eng}).set(1.0)
        self.h = WeightedHistograms()
        tokens = token_buckets(context)
        for name, doc, bounds in (
            ("request_prompt_tokens", "Number of prefill tokens processed.", tokens),
            ("request_generation_tokens", "Number of generation tokens processed.", tokens),
            ("iteration_tokens_total", "Histogram of number of tokens per engine_step.", ITERATION_BUCKETS),
            ("request_max_num_generation_tokens", "Histogram of maximum number of requested generation tokens.",
             tokens),
            ("request_params_n", "Histogram of the n request parameter.", PARAMS_N_BUCKETS),
            ("request_params_max_tokens", "Histogram of the max_tokens request parameter.", tokens),
            ("time_to_first_token_seconds", "Histogram of time to first token in seconds.", TTFT_BUCKETS),
            ("inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", ITL_BUCKETS),
            ("request_time_per_output_token_seconds", "Histogram of time_per_output_token_seconds per request.",
             ITL_BUCKETS),
            ("e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", REQUEST_BUCKETS),
            ("request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.", REQUEST_BUCKETS),
            ("request_inference_time_seconds", "Histogram of time spent in RUNNING phase for request.",
             REQUEST_BUCKETS),
            ("request_prefill_time_seconds", "Histogram of time spent in PREFILL phase for request.",
             REQUEST_BUCKETS),
            ("request_decode_time_seconds", "Histogram of time spent in DECODE phase for request.", REQUEST_BUCKETS),
            ("request_num_preemptions", "Histogram of the number of times a request was preempted.",
             PREEMPTION_BUCKETS),
            ("request_prefill_kv_computed_tokens",
             "Histogram of new KV tokens computed during prefill (excluding cached tokens).", tokens),
        ):
            self.h.define(f"vllm:{name}", doc, bounds, base)
        reg.register(self.h)
        self._labels = (eng, model)
        self.gauges(0, 0, 0.0)  # the engine's gauges exist (at 0) from the start, as vLLM's do

    def tick(self, prompt: float, generation: float, preempted: int, queries: int, hits: int) -> None:
        """One engine tick's increments: prefill tokens computed, decode tokens, preemptions, prefix-cache queries
        and hits (the tokens the cache supplied, which the engine did not compute)."""
        lv = self._labels
        self.prompt.labels(*lv).inc(prompt)
        self.generation.labels(*lv).inc(generation)
        if preempted > 0:
            self.preemptions.labels(*lv).inc(preempted)
        if queries > 0:
            self.prefix_queries.labels(*lv).inc(queries)
        if hits > 0:
            self.prefix_hits.labels(*lv).inc(hits)
            self.cached.labels(*lv).inc(hits)
            self.cached_by.labels(*lv, "device").inc(hits)
            self.prompt_by.labels(*lv, "local_cache_hit").inc(hits)
        self.prompt_by.labels(*lv, "local_compute").inc(prompt)

    def gauges(self, running: float, waiting: float, kv_usage: float) -> None:
        lv = self._labels
        self.running.labels(*lv).set(running)
        self.waiting.labels(*lv).set(waiting)
        self.waiting_by.labels(*lv, "capacity").set(waiting)  # the emulated scheduler defers nothing
        self.waiting_by.labels(*lv, "deferred").set(0)
        self.kv.labels(*lv).set(kv_usage)

    def finished(self, reason: str, *, n: int, max_tokens: int, prompt: int, generated: int, e2e: float,
                 queue: float, prefill: float, decode: float, preemptions: int) -> None:
        """A request that finished (``stop`` or ``length``). vLLM 0.32.0 counts no aborted request (recorded: two
        requests whose clients left mid-answer left ``finished_reason="abort"`` and the e2e count unchanged)."""
        self.success.labels(*self._labels, reason).inc()
        h = self.h.observe
        h("vllm:e2e_request_latency_seconds", e2e)
        h("vllm:request_queue_time_seconds", queue)
        h("vllm:request_prompt_tokens", prompt)
        h("vllm:request_generation_tokens", generated)
        h("vllm:request_params_n", n)
        h("vllm:request_params_max_tokens", max_tokens)
        h("vllm:request_max_num_generation_tokens", max_tokens)
        h("vllm:request_num_preemptions", preemptions)
        h("vllm:request_prefill_time_seconds", prefill)
        h("vllm:request_decode_time_seconds", decode)
        h("vllm:request_inference_time_seconds", prefill + decode)
        h("vllm:request_prefill_kv_computed_tokens", prompt)
        if generated > 1:
            h("vllm:request_time_per_output_token_seconds", decode / (generated - 1))


def cache_config_info(*, block_size: int, gpu_memory_utilization: float, kv_tokens: int, context: int,
                      kv_cache_memory_bytes: int | None = None) -> dict[str, str]:
    """The labels of ``vllm:cache_config_info`` (vLLM's CacheConfig fields) for the emulated engine's cache."""
    none = "None"
    return {
        "_block_size_resolved": "True", "block_size": str(block_size), "cache_dtype": "auto",
        "cache_hit_alignment_tokens": none, "effective_attention_block_size": str(block_size),
        "enable_mamba_shared_prefix_checkpoint": "False", "enable_prefix_caching": "True",
        "gpu_memory_utilization": str(gpu_memory_utilization), "hash_block_size": none, "is_attention_free": "False",
        "kv_cache_dtype_skip_layers": "[]", "kv_cache_layout": none,
        "kv_cache_max_concurrency": str(round(kv_tokens / max(context, 1), 2)),
        "kv_cache_memory_bytes": str(kv_cache_memory_bytes) if kv_cache_memory_bytes else none,
        "kv_cache_size_tokens": str(kv_tokens), "kv_offloading_backend": "native", "kv_offloading_size": none,
        "kv_sharing_fast_prefill": "False", "mamba_block_size": none, "mamba_cache_dtype": "auto",
        "mamba_cache_mode": "none", "mamba_page_size_padded": none, "mamba_ssm_cache_dtype": "auto",
        "num_cpu_blocks": none, "num_gpu_blocks": str(kv_tokens // max(block_size, 1)),
        "num_gpu_blocks_override": none, "prefix_cache_retention_interval": "0", "prefix_caching_hash_algo": "sha256",
        "prefix_match_unit": none, "replayssm_buffer_len": "16", "skip_page_size_padded": none,
        "sliding_window": none, "swa_bounded_replay": "True", "use_kda_recoverssm": "False", "use_replayssm": "False",
        "user_specified_block_size": "True",
    }
