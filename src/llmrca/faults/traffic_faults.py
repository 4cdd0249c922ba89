"""Three faults above the replicas: a surge of long prompts from the workload (``prompt-surge``), a saturated
Serve proxy (``proxy-overload``) and a misconfigured router (``routing-skew``).

Their root causes are not replicas: the workload's client (the ``loadgen`` node, present when the deployment sets
``workload.workload_node``) and the Serve HTTP proxy in the Ray head pod. What each does to the replicas follows
from the model: longer prefills, a queue in the proxy, one replica's queue. Docs: docs/faults.md, "Traffic faults".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llmrca.faults.spec import FaultSpec, Param, Perturbation


def _surge(p: Mapping[str, Any], target: str, start: float, end: float) -> list[Perturbation]:
    return [Perturbation("prompt_surge", target, start, end, {"factor": p["factor"], "share": p["share"]})]


def _overload(p: Mapping[str, Any], target: str, start: float, end: float) -> list[Perturbation]:
    # The cap as the proxy's event-loop time per dispatched request: one at a time, 1/max_rps seconds each.
    return [Perturbation("proxy_capacity", target, start, end, {"dispatch_s": 1.0 / p["max_rps"]})]


def _skew(p: Mapping[str, Any], target: str, start: float, end: float) -> list[Perturbation]:
    return [Perturbation("routing_weights", target, start, end,
                         {"hot_replica": p["hot_replica"], "share": p["share"]})]


def _scale_surge(p: Mapping[str, Any], s: float) -> dict[str, Any]:
    # Strength stretches the prompts' growth: 1 = the reference factor, towards 0 = prompts as usual.
    return {**p, "factor": min(64.0, 1.0 + (p["factor"] - 1.0) * s)}


def _scale_overload(p: Mapping[str, Any], s: float) -> dict[str, Any]:
    # Strength divides the proxy's capacity: 2 = half the reference rate, towards 0 = a cap too high to matter.
    return {**p, "max_rps": p["max_rps"] / s}


def _scale_skew(p: Mapping[str, Any], s: float) -> dict[str, Any]:
    # Strength moves the pinned share from 0 (no skew) through the reference (1) towards all traffic.
    share = p["share"]
    return {**p, "share": share * s if s <= 1.0 else 1.0 - (1.0 - share) / s}


PROMPT_SURGE = FaultSpec(
    id="prompt-surge",
    layer="workload",
    targets="workload",
    params=(
        Param("factor", 8.0, "x", "prompt length of a surging request, times its usual length (held to the "
                                  "model's context less max_tokens, as a client truncates)", minimum=1.0,
              maximum=64.0),
        Param("share", 1.0, "", "share of the requests sent while the surge lasts that carry the long prompt "
                                "(0..1)", minimum=0.0, maximum=1.0),
    ),
    description="the workload changes: for the fault's window a share of the client's requests carry prompts "
                "factor times as long (8x: 512 -> ~4,096 tokens), at the same request rate. Every replica's "
                "prefill work grows with the prompt (prompt tokens/s x8, chunked prefill takes the step budget "
                "from decodes): TTFT, queue time and inter-token latency rise on all replicas at once, KV-cache "
                "usage rises, and gateway latency with them; the only service whose own series change first is "
                "the client (prompt tokens sent per request and per second). Orca (OSDI 2022) and vLLM (SOSP "
                "2023): prefill cost grows with prompt length",
    live="the load generator's token-protected /control/surge endpoint: it draws the surging share's prompts "
         "factor times as long until the surge expires by itself (expires_at) or is undone",
    kubernetes="a workload change, not a chaos object: the Locust (or k6) Job that drives the deployment is "
               "rolled to a task set with long prompts (e.g. a Locust user class whose prompt is 8x, or a k6 "
               "scenario stage) for the window, then back",
    indicator="prompt_tokens_sent",
    effect=_surge,
    causes=("prompt_surge",),
    scale=_scale_surge,
)

PROXY_OVERLOAD = FaultSpec(
    id="proxy-overload",
    layer="process",
    targets="proxy",
    params=(
        Param("max_rps", 3.0, " req/s", "requests/s the saturated proxy still dispatches (one at a time, "
                                        "1/max_rps s each; the study's load is 5 req/s)", minimum=0.01,
              maximum=10000.0),
    ),
    description="the Ray Serve HTTP proxy in the head pod saturates (its event loop busy, one request at a time): "
                "requests queue in the proxy before any replica sees them, so every replica, the head's own "
                "included, gets less traffic (fewer running requests, lower prompt and generation throughput) "
                "while the latency the mesh measures towards the head (and the gateway's) climbs with the queue, "
                "and requests that wait past nginx's proxy_read_timeout fail with 504; the replicas' own latency "
                "(their TTFT, the mesh towards them) stays normal. When it ends the queue drains in a burst. Ray "
                "Serve docs: the proxy and its max_ongoing_requests / request queueing",
    live="the Serve-like proxy's token-protected /control/capacity endpoint: it dispatches one request at a "
         "time, 1/max_rps s each (a real queue in the proxy), until it expires by itself or is undone; the same "
         "for the emulated and the real engine (the proxy is the testbed's own)",
    kubernetes="Chaos Mesh StressChaos on the Ray head pod's proxy container (cpu stressors that starve the "
               "proxy's event loop), or a RayService serveConfig rollout with a much lower proxy / ingress "
               "max_ongoing_requests, rolled back after",
    indicator="latency",
    effect=_overload,
    causes=("proxy_capacity",),
    scale=_scale_overload,
)

ROUTING_SKEW = FaultSpec(
    id="routing-skew",
    layer="config",
    targets="proxy",
    params=(
        Param("hot_replica", 1, "", "which replica gets the pinned traffic: its index in the deployment's replica "
                                    "list (0 = the head's own, 1 = ray-replicas-0, ...)", kind=int, minimum=0),
        Param("share", 0.8, "", "share of all requests pinned to it (the rest routed as usual)", minimum=0.0,
              maximum=1.0),
    ),
    description="the proxy's router is misconfigured (a request-router weight or a session-affinity key that "
                "sends most traffic to one replica): the hot replica's queue grows (waiting requests, TTFT and "
                "queue time up, KV usage up, its GPU busier), the others idle; gateway latency rises with the "
                "hot replica's queue. The root cause is the proxy, where the configuration is, while the "
                "symptoms are the hot replica's, which is what makes it hard for RCA. Ray Serve docs: request "
                "routing (custom request routers, power-of-two choices by default)",
    live="the Serve-like proxy's token-protected /control/routing endpoint: it pins the share of requests to the "
         "hot replica until it expires by itself or is undone; the same for both engines",
    kubernetes="a changed RayService serveConfig (a custom request router / affinity setting that favours one "
               "replica) rolled out, rolled back after",
    indicator="latency",  # on the proxy's pod: the mesh towards it carries the hot replica's queue
    effect=_skew,
    causes=("routing_weights",),
    scale=_scale_skew,
)

TRAFFIC_FAULTS = (PROMPT_SURGE, PROXY_OVERLOAD, ROUTING_SKEW)
