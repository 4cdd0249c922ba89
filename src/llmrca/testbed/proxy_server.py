"""The Serve-like HTTP proxy on the head pod: it takes the gateway's requests, routes each to a replica from its own
count of ongoing requests (the simulator's policies), streams the answer back, and reports what a mesh would:
per-destination latency and request counts (Istio's metric names) for its calls to the remote replicas.

Spans: a SERVER span ``proxy_http_request`` (Ray Serve's name) and a CLIENT span ``process_request`` per call, with
``vllm.backend_url``; the call carries the CLIENT span's ``traceparent``. Calls to remote replicas go through the
mesh's link towards them (``llmrca.testbed.mesh``), where a network fault acts; the head's own replica is called
inside the pod; the call names the Serve request id in ``X-Request-ID`` (the replica's access line carries it).
Spans and log lines are the catalogue's (``llmrca.deploy.telemetry``): Ray Serve's proxy access and disconnect
lines, the controller's health lines. Two token-protected, self-expiring controls act on the proxy itself (the
traffic faults, ``llmrca.testbed.traffic_control``): ``/control/capacity`` makes it dispatch one request at a time,
``dispatch_s`` each (proxy-overload: requests really queue in it), ``/control/routing`` pins a share of requests to
one replica (routing-skew). Run as ``python -m llmrca.testbed.proxy_server RUN_DIR``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from typing import Any

import numpy as np

from llmrca.deploy.telemetry import (
    CLIENT_SPAN,
    COMPLETIONS_ROUTE,
    MODELS_ROUTE,
    PROXY_SPAN,
    ROUTE,
    SERVE_APP,
    SERVE_DEPLOYMENT,
    line,
)
from llmrca.testbed import service
from llmrca.testbed.config import TestbedConfig
from llmrca.testbed.logs import JsonLog
from llmrca.testbed.rundir import LOOPBACK
from llmrca.testbed.telemetry import MESH_BUCKETS_MS, extract, inject, tracer

DEPLOYMENT = SERVE_DEPLOYMENT
APP = SERVE_APP
DOWN_AFTER_ERROR_S = 2.0
GENERATION_ROUTES = (ROUTE, COMPLETIONS_ROUTE)
REPLICA_GET_ROUTES = (MODELS_ROUTE, "/version", "/health")


class Router:
    """The replica choice, from the proxy's own count of ongoing requests per replica (sent, not yet streamed
    back): ``least-loaded`` (ties at random), ``power-of-two`` choices, or ``round-robin``."""

    def __init__(self, replicas: list[str], policy: str, rng: np.random.Generator):
        self.replicas = list(replicas)
        self.policy = policy
        self.rng = rng
        self.ongoing = {r: 0 for r in replicas}
        self.down_until = {r: 0.0 for r in replicas}
        self._rr = 0
        self.pinned: tuple[str, float] | None = None  # (replica, share) a misconfigured router sends there
        self._pin_rng = np.random.default_rng([int(rng.integers(2**32)), 0x5CE])  # its own draws

    def choose(self, now: float) -> str | None:
        up = [r for r in self.replicas if self.down_until[r] <= now]
        if not up:
            return None
        if self.pinned is not None and self.pinned[0] in up and self._pin_rng.random() < self.pinned[1]:
            return self.pinned[0]
        if self.policy == "round-robin":
            r = up[self._rr % len(up)]
            self._rr += 1
            return r
        if self.policy == "power-of-two" and len(up) > 1:
            a, b = (up[i] for i in self.rng.choice(len(up), 2, replace=False))
            if self.ongoing[a] == self.ongoing[b]:
                return a if self.rng.random() < 0.5 else b
            return a if self.ongoing[a] < self.ongoing[b] else b
        lo = min(self.ongoing[r] for r in up)
        best = [r for r in up if self.ongoing[r] == lo]
        return best[0] if len(best) == 1 else best[int(self.rng.integers(len(best)))]


class Proxy:
    def __init__(self, state: dict[str, Any], rd: Any):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.cfg = TestbedConfig.from_dict(state["config"])
        self.state = state
        self.service = state["proxy"]
        self.replicas = list(state["replicas"])
        ports = state["ports"]
        # The head's own replica is called inside the pod; the others through the mesh link towards them.
        self.base = {r: f"http://{LOOPBACK}:{ports['engine:' + r] if r == self.service else ports['link:' + r]}"
                     for r in self.replicas}
        self.health_url = {r: f"http://{LOOPBACK}:{ports['engine:' + r]}/health" for r in self.replicas}
        self.router = Router(self.replicas, self.cfg.deploy.routing, np.random.default_rng([self.cfg.seed, 0x5E7]))
        self.log = JsonLog(rd.log("proxy"), self.service, "ray.serve")
        self.provider, self.tracer = tracer(self.service, "proxy", state.get("otlp_endpoint"))
        reg = self.registry = CollectorRegistry()
        lab = ["reporter", "source_workload", "destination_workload", "response_code"]
        self.h_mesh = Histogram("istio_request_duration_milliseconds", "Request duration (ms) seen by the mesh.", lab,
                                buckets=MESH_BUCKETS_MS, registry=reg)
        self.c_mesh = Counter("istio_requests", "Requests seen by the mesh.", lab, registry=reg)
        self.c_serve = Counter("ray_serve_num_http_requests", "HTTP requests the Serve proxy handled.",
                               ["route", "method", "application", "status_code"], registry=reg)
        self.g_ongoing = Gauge("ray_serve_replica_ongoing_requests", "Ongoing requests per replica (proxy's count).",
                               ["replica"], registry=reg)
        self.session: Any = None
        from llmrca.testbed.traffic_control import Timed

        self.rd = rd
        self.capacity = Timed(rd, self.service, "capacity")
        self.routing = Timed(rd, self.service, "routing")
        self._dispatch = asyncio.Lock()  # the saturated proxy's one-at-a-time dispatch

    async def admit(self) -> None:
        """Wait for the proxy's dispatch while a capacity cap holds: one request at a time, ``dispatch_s`` each, in
        arrival order (asyncio's lock is FIFO). A request whose client hangs up meanwhile is cancelled here."""
        if self.capacity.current() is None and not self._dispatch.locked():
            return
        async with self._dispatch:
            cap = self.capacity.current()
            if cap is not None:
                await asyncio.sleep(cap["dispatch_s"])

    def pin(self) -> None:
        r = self.routing.current()
        self.router.pinned = (r["replica"], r["share"]) if r is not None else None

    async def start(self) -> None:
        import aiohttp

        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=2.0, sock_read=self.cfg.read_timeout_s + 5.0))

    async def health_loop(self, stop: asyncio.Event) -> None:
        import aiohttp

        while not stop.is_set():
            for r in self.replicas:
                try:
                    async with self.session.get(self.health_url[r], timeout=aiohttp.ClientTimeout(total=1.0)) as resp:
                        ok = resp.status == 200
                except (TimeoutError, aiohttp.ClientError, OSError):
                    ok = False
                was_down = self.router.down_until[r] > time.time()
                if ok and was_down:
                    self.router.down_until[r] = 0.0
                    self.log.line(line("serve.controller_healthy_again"), os.getpid(), r)
                elif not ok:
                    if not was_down:
                        self.log.line(line("serve.controller_routing_around"), os.getpid(), r)
                    self.router.down_until[r] = time.time() + DOWN_AFTER_ERROR_S
            self.capacity.current()  # a setting past its expiry ends (and is recorded) even with no traffic
            self.pin()
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except TimeoutError:
                pass

    # -- the traffic faults' controls (token-protected) ---------------------------------------------------------
    async def control_get(self, request: Any) -> Any:
        from aiohttp import web

        return web.json_response({**self.capacity.state(), **self.routing.state()})

    async def _control(self, request: Any, timed: Any, check: Any) -> Any:
        from aiohttp import web

        from llmrca.testbed.auth import INJECTION_HEADER

        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise TypeError("the body must be a JSON object")
            value, expires = check(body, time.time())
        except (ValueError, TypeError) as e:
            return web.json_response({"error": str(e)}, status=400)
        timed.set(value, expires, reason=str(body.get("reason", "control endpoint")),
                  injection=request.headers.get(INJECTION_HEADER) or None)
        self.pin()
        return web.json_response({**self.capacity.state(), **self.routing.state()})

    async def control_capacity(self, request: Any) -> Any:
        """``{"dispatch_s": s | null, "expires_at": t}``: dispatch one request at a time, s each (proxy-overload)."""
        from llmrca.testbed.traffic_control import checked_capacity

        return await self._control(request, self.capacity, checked_capacity)

    async def control_routing(self, request: Any) -> Any:
        """``{"replica": name | null, "share": 0..1, "expires_at": t}``: pin a share of requests (routing-skew)."""
        from llmrca.testbed.traffic_control import checked_routing

        return await self._control(request, self.routing,
                                   lambda body, now: checked_routing(body, self.replicas, now))

    async def handle(self, request: Any) -> Any:
        import aiohttp
        from aiohttp import web
        from opentelemetry import trace
        from opentelemetry.trace import SpanKind, Status, StatusCode

        t0 = time.time()
        path = request.rel_url.path
        body = await request.read()
        serve_id = str(uuid.UUID(bytes=self.router.rng.bytes(16), version=4))
        server = self.tracer.start_span("proxy_http_request", context=extract(request.headers), kind=SpanKind.SERVER,
                                        start_time=int(t0 * 1e9))
        for k, v in PROXY_SPAN.attributes({"request_id": serve_id, "deployment": DEPLOYMENT, "app": APP,
                                           "request_type": "http", "request_method": request.method,
                                           "request_route_path": "/"}).items():
            server.set_attribute(k, v)
        replica = None
        status, client_status = 200, None
        resp = None
        t_client_end = None
        client = None
        try:
            if request.method == "POST":
                # behind a saturated proxy the request waits here (proxy-overload); a client that hangs up
                # meanwhile is cancelled here and logged as a disconnect (499), never dispatched
                await self.admit()
            self.pin()
            replica = self.router.choose(time.time())
            if replica is None:
                status = 503
                return web.json_response({"error": "no healthy replica"}, status=503)
            self.router.ongoing[replica] += 1
            self.g_ongoing.labels(replica).set(self.router.ongoing[replica])
            t_send = time.time()
            client = self.tracer.start_span("process_request", context=trace.set_span_in_context(server),
                                            kind=SpanKind.CLIENT, start_time=int(t_send * 1e9))
            for k, v in CLIENT_SPAN.attributes({"vllm.backend_url": self.base[replica],
                                                "peer.service": replica}).items():
                client.set_attribute(k, v)
            headers = inject(client, {"Content-Type": request.headers.get("Content-Type", "application/json"),
                                      "X-Request-ID": serve_id})
            try:
                async with self.session.request(request.method, self.base[replica] + str(request.rel_url),
                                                data=body if request.method == "POST" else None,
                                                headers=headers) as up:
                    client_status = up.status
                    resp = web.StreamResponse(status=up.status, headers={
                        k: up.headers[k] for k in ("Content-Type",) if k in up.headers})
                    await resp.prepare(request)
                    async for chunk in up.content.iter_any():
                        await resp.write(chunk)
                    t_client_end = time.time()
                status = up.status
                await resp.write_eof()
                return resp
            except (TimeoutError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as e:
                t_client_end = time.time()
                self.router.down_until[replica] = time.time() + DOWN_AFTER_ERROR_S
                self.log.line(line("serve.proxy_call_failed"), LOOPBACK, serve_id, replica, type(e).__name__)
                status = 502
                if resp is None:
                    return web.json_response({"error": f"replica {replica} failed"}, status=502)
                return resp
        except (ConnectionResetError, asyncio.CancelledError):
            status = 499  # the gateway hung up (Ray Serve logs a client disconnect)
            raise
        finally:
            t1 = time.time()
            if replica is not None and client is not None:
                self.router.ongoing[replica] -= 1
                self.g_ongoing.labels(replica).set(self.router.ongoing[replica])
                end = t_client_end if t_client_end is not None else t1
                if client_status is not None:
                    client.set_attribute("http.status_code", client_status)
                if status >= 400:
                    client.set_status(Status(StatusCode.ERROR))
                client.end(end_time=int(end * 1e9))
                if replica != self.service:
                    code = str(client_status or status)
                    self.h_mesh.labels("waypoint", self.service, replica, code).observe(1000.0 * (end - t_send))
                    self.c_mesh.labels("waypoint", self.service, replica, code).inc()
            server.set_attribute("http.status_code", status)
            if status >= 400:
                server.set_status(Status(StatusCode.ERROR))
            server.end(end_time=int(t1 * 1e9))
            self.c_serve.labels(path, request.method, APP, str(status)).inc()
            if status == 499:
                self.log.line(line("serve.proxy_disconnect"), LOOPBACK, serve_id, serve_id)
            self.log.line(line("serve.proxy_access"), LOOPBACK, serve_id, status, f"{1000 * (t1 - t0):.1f}",
                          method=request.method)

    async def metrics(self, request: Any) -> Any:
        from aiohttp import web
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def health(self, request: Any) -> Any:
        from aiohttp import web

        return web.json_response({"status": "ok", "ongoing": self.router.ongoing})


def make_app(proxy: Proxy, token: str) -> Any:
    """The proxy's HTTP app. vLLM's routes go to a replica, as through a Serve deployment whose ingress is vLLM's
    OpenAI app; ``/metrics`` and ``/-/healthz`` (Ray Serve's proxy health route) are the proxy's own, ``/control``
    its fault controls (a change needs the run's token)."""
    from aiohttp import web

    from llmrca.testbed import auth

    app = web.Application(client_max_size=16 * 2**20, middlewares=[auth.middleware(
        token, lambda method, path: method == "POST" and path.startswith("/control"))])
    for route in GENERATION_ROUTES:
        app.router.add_post(route, proxy.handle)
    for route in REPLICA_GET_ROUTES:
        app.router.add_get(route, proxy.handle)
    app.router.add_get("/metrics", proxy.metrics)
    app.router.add_get("/-/healthz", proxy.health)
    app.router.add_get("/control", proxy.control_get)
    app.router.add_post("/control/capacity", proxy.control_capacity)
    app.router.add_post("/control/routing", proxy.control_routing)
    return app


async def _main(run_dir: str, stop: asyncio.Event) -> None:
    rd, state = service.settings(run_dir, "proxy")
    proxy = Proxy(state, rd)
    await proxy.start()
    from llmrca.testbed import auth

    app = make_app(proxy, auth.read_token(rd.path))
    runner = await service.start_site(app, state["ports"]["proxy"])
    health = asyncio.create_task(proxy.health_loop(stop))
    proxy.log.line(line("serve.proxy_started"), os.getpid(), state["node"], state["ports"]["proxy"])
    proxy.log.write("INFO", "Routing ({}) to {} replicas.", proxy.cfg.deploy.routing, len(proxy.replicas))
    await stop.wait()
    health.cancel()
    await runner.cleanup()
    await proxy.session.close()
    proxy.provider.shutdown()
    proxy.log.close()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.exit("usage: python -m llmrca.testbed.proxy_server RUN_DIR")
    service.run(lambda stop: _main(args[0], stop))


if __name__ == "__main__":
    main()
