"""The mesh: one TCP forwarder ("link") per pod-to-pod hop, always in the path, so a network fault is a setting of
a link rather than a re-routing. A link towards a pod can delay the bytes that travel *to* that pod (netem's
``delay``, direction ``to``), as Chaos Mesh's NetworkChaos does with kernel netem inside the pod's namespace (kernel
netem is not available everywhere; this needs nothing but loopback TCP).

Links: ``nginx-proxy -> ray-head`` (into the head pod's Serve proxy) and ``ray-head -> <replica>`` for every remote
replica. A delay on target ``T`` applies to every link whose destination is ``T`` (requests towards it) and to the
return direction of every link whose source is ``T`` (streams flowing back to it); so does a loss (``POST /loss``,
``DELETE /loss/{target}``: each chunk held for the TCP recovery of the segments netem would drop,
``llmrca.testbed.netloss``). Control: an HTTP endpoint on
loopback (``POST /delay``, ``DELETE /delay/{target}``: with the run's token, ``llmrca.testbed.auth``; ``GET
/links``); every accepted change is recorded in the run's injection log. Run as ``python -m llmrca.testbed.mesh
RUN_DIR``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from llmrca.faults import FaultParamError
from llmrca.testbed import service
from llmrca.testbed.delay import Delay
from llmrca.testbed.logs import JsonLog
from llmrca.testbed.netloss import Held, LinkLoss, checked_loss
from llmrca.testbed.rundir import LOOPBACK

READ_SIZE = 65536
MAX_DELAY_S = 600.0  # a longer "delay" is an outage, not a network fault
MAX_EXPIRY_S = 86400.0 + 600.0  # a delay expires within a day (the longest fault) and a margin


def checked_delay(b: Any, now: float) -> Delay:
    """The delay a ``POST /delay`` body asks for: finite numbers in range, and an expiry within a day (every delay
    carries its own end, should the undo fail); a ``ValueError``/``TypeError`` naming the field otherwise."""
    import math

    if not isinstance(b, dict):
        raise TypeError("the body must be a JSON object")

    def number(name: str, lo: float, hi: float, default: float | None = None) -> float:
        v = b.get(name, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not (lo <= v <= hi):
            raise ValueError(f"{name} must be a finite number in [{lo:g}, {hi:g}], is {v!r}")
        return float(v)

    seed = b.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an integer, is {seed!r}")
    return Delay(number("latency_s", 0.0, MAX_DELAY_S), number("jitter_s", 0.0, MAX_DELAY_S, 0.0),
                 number("correlation", 0.0, 1.0, 0.0), number("expires_at", now, now + MAX_EXPIRY_S), seed)


@dataclass
class Link:
    name: str
    src: str
    dst: str
    port: int
    upstream: int
    delay_up: Delay | None = None  # bytes towards dst
    delay_down: Delay | None = None  # bytes back towards src
    loss_up: LinkLoss | None = None  # segments towards dst dropped (TCP recovery emulated)
    loss_down: LinkLoss | None = None
    stats: dict[str, int] = field(default_factory=lambda: {"connections": 0, "chunks_up": 0, "chunks_down": 0,
                                                           "bytes_up": 0, "bytes_down": 0})


def directions_towards(links: list[Link], target: str) -> list[tuple[Link, str]]:
    """Which (link, direction) carry bytes towards ``target``."""
    out = []
    for link in links:
        if link.dst == target:
            out.append((link, "up"))
        if link.src == target:
            out.append((link, "down"))
    return out


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: Link, direction: str) -> None:
    """Copy one direction of a connection, holding each chunk for the link's delay (if any) in order."""
    pending: deque[list] = deque()  # [due, data]: a chunk's due may come sooner (a loss's fast retransmit)
    more = asyncio.Event()
    eof = False
    held: list[Held] = []  # chunks of this direction waiting for duplicate ACKs (loss)

    async def release() -> None:
        while True:
            while not pending:
                if eof:
                    return
                more.clear()
                await more.wait()
            due, data = pending[0]
            wait = due - time.monotonic()
            if wait > 0:
                more.clear()
                try:  # woken early when a due time changes or a chunk arrives
                    await asyncio.wait_for(more.wait(), wait)
                except TimeoutError:
                    pass
                continue
            pending.popleft()
            writer.write(data)
            await writer.drain()

    sender = asyncio.create_task(release())
    try:
        while True:
            data = await reader.read(READ_SIZE)
            if not data:
                break
            link.stats[f"chunks_{direction}"] += 1
            link.stats[f"bytes_{direction}"] += len(data)
            d = link.delay_up if direction == "up" else link.delay_down
            now = time.monotonic()
            loss = link.loss_up if direction == "up" else link.loss_down
            if d is not None and d.active(time.time()):
                pending.append([d.release_time(now), data])
            elif loss is not None and loss.active(time.time()):
                # earlier dropped tails see this chunk's segments as duplicate ACKs; this chunk is held for the
                # recovery of its own dropped segments; the queue releases in order (the chunks behind a held one
                # wait for it, as TCP delivers)
                held[:] = [h for h in held if h.more(len(data), now)]
                entry = [now, data]
                h = loss.admit(entry, len(data), now)
                if h is not None and h.tails:
                    held.append(h)
                pending.append(entry)
            else:
                pending.append([pending[-1][0] if pending else now, data])
            more.set()
            if sender.done():
                break
    except (ConnectionError, OSError):
        pass
    finally:
        eof = True
        more.set()
        try:
            await sender
        except (ConnectionError, OSError):
            pass
        try:
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            pass


class Mesh:
    def __init__(self, state: dict[str, Any], rd: Any):
        self.rd = rd
        self.injection: dict[str, str | None] = {}  # target -> the injection whose delay it carries
        self.links = [Link(d["name"], d["src"], d["dst"], d["port"], d["upstream"]) for d in state["links"]]
        self.log = JsonLog(rd.log("mesh"), "mesh", "ztunnel")
        self.servers: list[asyncio.base_events.Server] = []

    async def start(self) -> None:
        for link in self.links:
            self.servers.append(await asyncio.start_server(
                lambda r, w, link=link: self._serve(link, r, w), LOOPBACK, link.port, reuse_address=True))

    async def _serve(self, link: Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link.stats["connections"] += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(LOOPBACK, link.upstream)
        except OSError as e:
            self.log.write("ERROR", "link {}: connection to upstream port {} failed: {}", link.name, link.upstream, e)
            writer.close()
            return
        try:
            await asyncio.gather(_pump(reader, up_writer, link, "up"), _pump(up_reader, writer, link, "down"))
        finally:
            for w in (writer, up_writer):
                try:
                    w.close()
                except (ConnectionError, OSError):
                    pass

    def set_delay(self, target: str, delay: Delay | None) -> list[str]:
        hits = directions_towards(self.links, target)
        if not hits:
            raise FaultParamError(f"no mesh link carries traffic towards {target!r} "
                                  f"(links: {', '.join(f'{x.src}->{x.dst}' for x in self.links)})")
        for link, direction in hits:
            setattr(link, f"delay_{direction}", delay)
        names = [f"{link.src}->{link.dst} ({direction})" for link, direction in hits]
        if delay is None:
            self.log.write("INFO", "delay towards {} removed on {}", target, ", ".join(names))
        else:
            self.log.write("INFO", "delay towards {}: {} s +- {} s (correlation {}) on {}", target, delay.latency_s,
                          delay.jitter_s, delay.correlation, ", ".join(names))
        return names

    def set_loss(self, target: str, loss: LinkLoss | None) -> list[str]:
        hits = directions_towards(self.links, target)
        if not hits:
            raise FaultParamError(f"no mesh link carries traffic towards {target!r} "
                                  f"(links: {', '.join(f'{x.src}->{x.dst}' for x in self.links)})")
        for i, (link, direction) in enumerate(hits):
            # each direction draws its own drops (its own seed), as each interface's netem does
            one = None if loss is None else LinkLoss(loss.loss, loss.correlation, loss.expires_at, loss.seed + i)
            setattr(link, f"loss_{direction}", one)
        names = [f"{link.src}->{link.dst} ({direction})" for link, direction in hits]
        if loss is None:
            self.log.write("INFO", "loss towards {} removed on {}", target, ", ".join(names))
        else:
            self.log.write("INFO", "loss towards {}: {} % (correlation {}) on {}", target, 100 * loss.loss,
                           loss.correlation, ", ".join(names))
        return names

    async def expiry_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            now = time.time()
            for link in self.links:
                for direction in ("up", "down"):
                    for what in ("delay", "loss"):
                        d = getattr(link, f"{what}_{direction}")
                        if d is not None and not d.active(now):
                            setattr(link, f"{what}_{direction}", None)
                            self.log.write("INFO", "{} on {}->{} ({}) expired", what, link.src, link.dst, direction)
                            self.rd.record_change("mesh", {"link": f"{link.src}->{link.dst}", "direction": direction,
                                                           what: None}, injection=self.injection.get(link.dst)
                                                  if direction == "up" else self.injection.get(link.src),
                                                  reason="expired")
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
            except TimeoutError:
                pass

    # -- control ------------------------------------------------------------------------------------------
    async def post_delay(self, request: Any) -> Any:
        from aiohttp import web

        from llmrca.testbed.auth import INJECTION_HEADER

        try:
            b = await request.json()
            delay = checked_delay(b, time.time())
            if not isinstance(b.get("target"), str):
                raise TypeError(f"target must be a service name, is {b.get('target')!r}")
            names = self.set_delay(b["target"], delay)
        except (ValueError, TypeError, FaultParamError) as e:
            return web.json_response({"error": str(e)}, status=400)
        iid = request.headers.get(INJECTION_HEADER) or None
        self.injection[b["target"]] = iid
        self.rd.record_change("mesh", {"target": b["target"], "links": names, "delay": delay.to_dict()},
                              injection=iid, reason="control endpoint")
        return web.json_response({"target": b["target"], "links": names, "delay": delay.to_dict()})

    async def delete_delay(self, request: Any) -> Any:
        from aiohttp import web

        from llmrca.testbed.auth import INJECTION_HEADER

        target = request.match_info["target"]
        try:
            names = self.set_delay(target, None)
        except FaultParamError as e:
            return web.json_response({"error": str(e)}, status=400)
        self.injection.pop(target, None)
        self.rd.record_change("mesh", {"target": target, "links": names, "delay": None},
                              injection=request.headers.get(INJECTION_HEADER) or None, reason="control endpoint")
        return web.json_response({"target": target, "links": names})

    async def post_loss(self, request: Any) -> Any:
        from aiohttp import web

        from llmrca.testbed.auth import INJECTION_HEADER

        try:
            b = await request.json()
            loss = checked_loss(b, time.time())
            if not isinstance(b.get("target"), str):
                raise TypeError(f"target must be a service name, is {b.get('target')!r}")
            names = self.set_loss(b["target"], loss)
        except (ValueError, TypeError, FaultParamError) as e:
            return web.json_response({"error": str(e)}, status=400)
        iid = request.headers.get(INJECTION_HEADER) or None
        self.injection[b["target"]] = iid
        self.rd.record_change("mesh", {"target": b["target"], "links": names, "loss": loss.to_dict()},
                              injection=iid, reason="control endpoint")
        return web.json_response({"target": b["target"], "links": names, "loss": loss.to_dict()})

    async def delete_loss(self, request: Any) -> Any:
        from aiohttp import web

        from llmrca.testbed.auth import INJECTION_HEADER

        target = request.match_info["target"]
        hits = directions_towards(self.links, target)
        # what the loss did, before it is removed (recorded with the change)
        counts = [getattr(link, f"loss_{d}").to_dict() for link, d in hits if getattr(link, f"loss_{d}")]
        try:
            names = self.set_loss(target, None)
        except FaultParamError as e:
            return web.json_response({"error": str(e)}, status=400)
        self.injection.pop(target, None)
        self.rd.record_change("mesh", {"target": target, "links": names, "loss": None, "while_active": counts},
                              injection=request.headers.get(INJECTION_HEADER) or None, reason="control endpoint")
        return web.json_response({"target": target, "links": names, "while_active": counts})

    async def get_links(self, request: Any) -> Any:
        from aiohttp import web

        return web.json_response([{"name": x.name, "src": x.src, "dst": x.dst, "port": x.port,
                                   "upstream": x.upstream, "stats": x.stats,
                                   "delay_up": x.delay_up.to_dict() if x.delay_up else None,
                                   "delay_down": x.delay_down.to_dict() if x.delay_down else None,
                                   "loss_up": x.loss_up.to_dict() if x.loss_up else None,
                                   "loss_down": x.loss_down.to_dict() if x.loss_down else None}
                                  for x in self.links])


def make_app(mesh: Mesh, token: str) -> Any:
    """The mesh's control app: ``GET /links`` open, a change (``POST``/``DELETE /delay``) needs the run's token."""
    from aiohttp import web

    from llmrca.testbed import auth

    app = web.Application(middlewares=[auth.middleware(token, auth.mutating)])
    app.router.add_post("/delay", mesh.post_delay)
    app.router.add_delete("/delay/{target}", mesh.delete_delay)
    app.router.add_post("/loss", mesh.post_loss)
    app.router.add_delete("/loss/{target}", mesh.delete_loss)
    app.router.add_get("/links", mesh.get_links)
    return app


async def _main(run_dir: str, stop: asyncio.Event) -> None:

    from llmrca.testbed import auth

    rd, state = service.settings(run_dir, "mesh")
    mesh = Mesh(state, rd)
    await mesh.start()
    app = make_app(mesh, auth.read_token(rd.path))
    runner = await service.start_site(app, state["ports"]["mesh"])
    expiry = asyncio.create_task(mesh.expiry_loop(stop))
    mesh.log.write("INFO", "mesh up: {} links", len(mesh.links))
    await stop.wait()
    expiry.cancel()
    for s in mesh.servers:
        s.close()
    await runner.cleanup()
    mesh.log.close()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.exit("usage: python -m llmrca.testbed.mesh RUN_DIR")
    service.run(lambda stop: _main(args[0], stop))


if __name__ == "__main__":
    main()
