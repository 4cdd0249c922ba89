"""The testbed's supervisor: one process that starts and watches every service of a live deployment, hosts the
telemetry agent (OTLP receiver, container/node/mesh exporter) and the control API, owns the fault injectors, and
undoes everything when it stops.

Processes (all on 127.0.0.1, ports chosen free at start, recorded in the run folder's ``state.json``):

| process                | service        | what                                                          |
|------------------------|----------------|---------------------------------------------------------------|
| ``nginx``              | nginx-proxy    | the gateway (real nginx)                                      |
| ``proxy``              | ray-head       | the Serve-like HTTP proxy and router                          |
| ``engine:<replica>``   | each replica   | a vLLM-like engine on an emulated GPU, or a real vLLM server   |
| ``mesh``               | (node)         | the pod-to-pod links where network faults act                 |
| ``prometheus``         | (node)         | real Prometheus, scraping every ``deploy.step``                |
| ``loadgen``            | (client)       | the open-loop load                                            |

Every child dies with the supervisor (``PR_SET_PDEATHSIG``); a child that exits on its own is restarted (an
emulated engine after the model's load time, a real one at once: its load is real). With ``deploy.engine = "vllm"``
each replica is a real vLLM OpenAI server (``llmrca.testbed.vllm_engine``) in a process group of its own, so that
its EngineCore and worker processes are stopped with it whatever happens to the server. The control API's
changes (``/inject``, ``/undo``, ``/shutdown``) need the run's token (``llmrca.testbed.auth``); the supervisor inherits the run folder's lock from ``up`` and holds it
until it exits. Run as ``python -m llmrca.testbed.supervisor RUN_DIR`` (``llmrca testbed up``
does it).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import psutil

from llmrca import __version__
from llmrca import faults as fault_registry
from llmrca.errors import LlmrcaError, UnknownNameError
from llmrca.sim.deployment import CLIENT, GATEWAY, HEAD, replica_names
from llmrca.sim.run import derive_seed
from llmrca.testbed import gpu_host, vllm_engine
from llmrca.testbed import injectors as injmod
from llmrca.testbed import nginx as nginxmod
from llmrca.testbed import prometheus as prom
from llmrca.testbed.cleanup import CleanupRegistry
from llmrca.testbed.config import NODE, TestbedConfig, scaling
from llmrca.testbed.injectors import Injector
from llmrca.testbed.logs import JsonLog
from llmrca.testbed.otlp import SpanSink
from llmrca.testbed.procs import Containment, kill_tree, spawn
from llmrca.testbed.procstats import ContainerAccounting, node_sample
from llmrca.testbed.rundir import LOOPBACK, RunDir, TestbedError, free_ports, port_open
from llmrca.testbed.telemetry import MESH_BUCKETS_MS

CONFIG_FILE = "config.json"
CRASH_RESTART_S = 1.0
ENSURE_GRACE_S = 5.0  # how long after ensure_engine an engine's own death is taken as the one it answered
VLLM_START_S = 900.0  # a real server loads in 25-75 s on an idle core, several minutes on a shared, busy machine
VLLM_DEATH_GRACE_S = 30.0  # a server whose worker was killed exits on its own in ~10 s; after this it is killed
ENGINE_STOP_GRACE_S = 10.0  # SIGTERM, then SIGKILL: vLLM shuts its EngineCore and workers down within this
MAX_FAULT_S = 86400.0  # a fault longer than a day is a typo (or Infinity), not an experiment


@dataclass
class Managed:
    name: str
    service: str | None  # the container it belongs to (None: node-level infrastructure)
    argv: list[str]
    ready_port: int | None
    restart_after_s: float = CRASH_RESTART_S
    popen: Any = None
    create_time: float = 0.0
    restart_at: float | None = None
    restarts: int = 0
    held: bool = False  # deliberately down (a replica-kill fault holds it until its restart time)
    extra: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] | None = None  # None: the supervisor's
    health: bool = False  # ready = GET /health answers 200 (a real engine listens before its model is loaded)
    own_group: bool = False  # in a process group of its own, swept whole when it stops
    pgid: int | None = None


def plan_state(rd: RunDir, cfg: TestbedConfig, *, real_gpus: dict[str, str] | None = None) -> dict[str, Any]:
    """Names, ports and links of a deployment (the simulator's names: ``nginx-proxy`` → ``ray-head`` → replicas)."""
    replicas = list(replica_names(cfg.deploy.replicas))
    remote = [r for r in replicas if r != HEAD]
    names = ["gateway", "proxy", "mesh", "prometheus", "agent", "control", "link:" + HEAD,
             *(f"engine:{r}" for r in replicas), *(f"link:{r}" for r in remote)]
    client = CLIENT if cfg.deploy.workload_node else None
    if client:  # the workload node: the load generator serves its own metrics and surge control
        names.append("loadgen")
    ports = dict(zip(names, free_ports(len(names))))
    links = [{"name": HEAD, "src": GATEWAY, "dst": HEAD, "port": ports["link:" + HEAD], "upstream": ports["proxy"]}]
    links += [{"name": r, "src": HEAD, "dst": r, "port": ports["link:" + r], "upstream": ports["engine:" + r]}
              for r in remote]
    sc = scaling(cfg)
    return {
        "format": 1, "run_id": uuid.uuid4().hex[:12], "created": time.time(), "llmrca_version": __version__,
        "run_dir": str(rd.path), "config": cfg.to_dict(), "scaling": sc.to_dict(), "gateway": GATEWAY, "proxy": HEAD,
        "replicas": replicas, "services": [GATEWAY, *replicas], "node": NODE, "ports": ports, "links": links,
        "otlp_endpoint": f"http://{LOOPBACK}:{ports['agent']}/v1/traces", "real_gpus": dict(real_gpus or {}),
        "processes": {}, "status": "starting", **({"client": client} if client else {}),
    }


class Supervisor:
    def __init__(self, rd: RunDir):
        self.rd = rd
        req = json.loads((rd.path / CONFIG_FILE).read_text(encoding="utf-8"))
        self.cfg = TestbedConfig.from_dict(req.get("config"))
        self.state = plan_state(rd, self.cfg, real_gpus=req.get("real_gpus"))
        self.state["supervisor"] = {"pid": os.getpid(), "create_time": psutil.Process().create_time(),
                                    "attached": bool(req.get("attached"))}
        from llmrca.testbed.config import Scaling

        sc = self.state["scaling"]
        self.scaling = Scaling.from_dict(sc)
        # Two logs: what the deployment's own controller would print (collected into cases, as Ray Serve's
        # controller log), and the testbed's doings (injections, start/stop), never collected: a real system's
        # logs do not announce a fault.
        self.log = JsonLog(rd.log("controller"), HEAD, "ray.serve.controller")
        self.tlog = JsonLog(rd.log("testbed"), "testbed", "llmrca.testbed")
        self.cleanup = CleanupRegistry()
        self.procs: dict[str, Managed] = {}
        self.containment = Containment("none")
        self.extra_members: dict[str, list[int]] = {}
        self.injections: dict[str, tuple[Injector, dict[str, Any], int]] = {}
        self.accounting = ContainerAccounting()
        self.sample: dict[str, Any] = {"containers": {}, "node": {}}
        self.spans = SpanSink(rd.spans)
        self.stopping = False
        self._nginx_pos = 0
        self._undo_reason: dict[str, str] = {}
        self.gpu_poller: gpu_host.Poller | None = None  # the real engine's GPUs under DCGM names (no dcgm-exporter)
        self.host_gpus: gpu_host.HostGpus | None = None
        self.build: vllm_engine.Build | None = None  # the real engine's vLLM build (deploy.engine = "vllm")
        self.model_dir: Any = None

    # -- Host interface for injectors ----------------------------------------------------------------------
    def service_pids(self, service: str) -> list[int]:
        return [m.popen.pid for m in self.procs.values() if m.service == service and m.popen is not None
                and m.popen.poll() is None]

    def attach(self, service: str, pid: int) -> None:
        self.extra_members.setdefault(service, []).append(pid)

    def detach(self, service: str, pid: int) -> None:
        if pid in self.extra_members.get(service, []):
            self.extra_members[service].remove(pid)

    def out_path(self, name: str) -> Any:
        return self.rd.out(name)

    def kill_engine(self, service: str, restart_after_s: float, backoff_s: float = 0.0) -> int | None:
        """SIGKILL of ``service``'s engine; an emulated one starts again after ``restart_after_s`` (its model load,
        and a crash loop's back-off), a real one after ``backoff_s`` (its load is real)."""
        m = self.procs.get(f"engine:{service}")
        if m is None:
            raise UnknownNameError(f"no engine for {service!r}")
        if self.build is not None:
            return self._kill_vllm(m, backoff_s)
        pid = m.popen.pid if m.popen is not None else None
        m.held = True
        m.restart_at = time.time() + restart_after_s
        if m.popen is not None and m.popen.poll() is None:
            m.popen.kill()  # SIGKILL: no goodbye, as an OOM kill or a crashed node gives
        self.tlog.write("INFO", "killed {} (pid {}); restart after {} s", service, pid, f"{restart_after_s:g}")
        return pid

    def hold_engine(self, service: str, restart_after_s: float) -> int | None:
        """``service``'s engine is about to die by itself (a GPU fault): once it has, start it again only
        ``restart_after_s`` from now (infinite: held until ``ensure_engine``). Returns its pid."""
        m = self.procs.get(f"engine:{service}")
        if m is None:
            raise UnknownNameError(f"no engine for {service!r}")
        m.held = True
        m.restart_at = time.time() + restart_after_s
        self.tlog.write("INFO", "holding {} down for {} s after its GPU fault", service, f"{restart_after_s:g}")
        return m.popen.pid if m.popen is not None else None

    def ensure_engine(self, service: str) -> None:
        """``service``'s engine serves again as soon as it can: started now if it is down; if it still runs, its
        hold is released, and a death within ENSURE_GRACE_S (a GPU fault's engine exits a moment after the fault,
        so an undo can come first) is restarted at once rather than after the hold's or a crash's delay."""
        m = self.procs.get(f"engine:{service}")
        if m is None:
            return
        if m.popen is None or m.popen.poll() is not None:
            m.restart_at = time.time()
        else:
            m.restart_at = None  # a later death is the monitor's to schedule
            m.extra["restart_at_once_until"] = time.time() + ENSURE_GRACE_S
        m.held = False

    def engine_pid(self, service: str) -> int | None:
        """The pid of ``service``'s engine process (the real engine's API server), None while it is down."""
        m = self.procs.get(f"engine:{service}")
        if m is None:
            raise UnknownNameError(f"no engine for {service!r}")
        return m.popen.pid if m.popen is not None and m.popen.poll() is None else None

    def restart_engine(self, service: str, kv_cache_tokens: int | None, down_s: float = 0.0) -> int | None:
        """A changed engine configuration rolled out to one replica: stop ``service``'s engine (SIGTERM, SIGKILL
        after a grace), start it again ``down_s`` later with a KV cache of ``kv_cache_tokens`` (None: the
        deployment's). Returns the pid it stopped."""
        m = self.procs.get(f"engine:{service}")
        if m is None:
            raise UnknownNameError(f"no engine for {service!r}")
        argv, env = self.engine_argv(service, kv_cache_tokens)
        pid = m.popen.pid if m.popen is not None else None
        m.held = True
        m.restart_at = math.inf  # not before it is down (the monitor runs meanwhile)
        m.extra["death_seen"] = True  # a planned stop, not a crash: no "died unexpectedly" line
        if m.popen is not None and m.popen.poll() is None:
            kill_tree(m.popen.pid, timeout=ENGINE_STOP_GRACE_S, sig=signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                m.popen.wait(timeout=1.0)
        m.argv = argv
        m.env = env
        m.restart_at = time.time() + max(0.0, down_s)
        self.tlog.write("INFO", "restarting {} (pid {}) with a KV cache of {} in {} s", service, pid,
                        "the deployment's size" if kv_cache_tokens is None else f"{kv_cache_tokens} tokens",
                        f"{down_s:g}")
        return pid

    # -- processes -----------------------------------------------------------------------------------------
    def _gpu_host(self) -> None:
        """The host's GPUs, before any engine starts: which replica runs on which (``state["real_gpus"]``, what a
        real engine's CUDA_VISIBLE_DEVICES and a power cap use), and who exports their DCGM series."""
        hg = gpu_host.setup(self.cfg.deploy.engine, self.state["replicas"], self.state.get("real_gpus"))
        self.host_gpus = hg
        self.state["real_gpus"] = dict(hg.assigned)
        self.state["gpu_host"] = hg.to_state()
        self.rd.write_state(self.state)  # before any engine starts: an engine reads its GPU from the run's state
        if self.cfg.deploy.engine == "vllm" and hg.assigned:  # the emulated engine exports its emulated GPU
            self.gpu_poller = gpu_host.Poller(hg, self.cfg.deploy.step, self.state["node"], dcgm=hg.dcgm_url is None,
                                              log=self.tlog).start()
            self.cleanup.register(self.gpu_poller.stop, "stop the GPU poller")
            self.tlog.write("INFO", "GPUs {}; DCGM series from {}.", hg.assigned,
                            hg.dcgm_url or "nvidia-smi --query-gpu (no dcgm-exporter)")

    def engine_core(self, service: str) -> int | None:
        """The CPU core a real engine's threads are bound to (CPU host), where a stressor must run to compete with
        them when there are no cgroups; None for an emulated engine."""
        return (self.state.get("engine") or {}).get("cores", {}).get(service)

    def engine_argv(self, replica: str, kv_cache_tokens: int | None = None) -> tuple[list[str], dict[str, str] | None]:
        """The command line and environment (None: the supervisor's) of ``replica``'s engine; ``kv_cache_tokens``
        overrides the deployment's KV-cache capacity (a restart with a smaller cache)."""
        py = sys.executable
        port = self.state["ports"][f"engine:{replica}"]
        if self.build is None:
            argv = [py, "-m", "llmrca.testbed.engine_server", str(self.rd.path), replica]
            if kv_cache_tokens is not None:
                argv += ["--kv-cache-tokens", str(int(kv_cache_tokens))]
            return argv, None
        argv = vllm_engine.engine_argv(self.build, self.model_dir, self.cfg.deploy.model_spec.name, self.cfg.deploy, port,
                                       otlp_endpoint=self.state["otlp_endpoint"], kv_cache_tokens=kv_cache_tokens)
        log_config = vllm_engine.write_logging_config(self.rd.path / "engine-logging" / f"{replica}.json",
                                                      self.rd.log(f"engine-{replica}"), replica)
        env = vllm_engine.engine_env(self.build, self.rd.path, replica, log_config,
                                     core=self.engine_core(replica),
                                     gpu=gpu_host.cuda_visible_devices(self.state, replica))
        return argv, env

    def _prepare_vllm(self) -> None:
        """Find the vLLM build, build the model once for every replica, and bind each replica to a core."""
        from llmrca.testbed import procs as procmod
        from llmrca.testbed import tiny_model

        if self.cfg.deploy.model_spec.name != tiny_model.NAME:
            raise TestbedError(f"deployment.model is {self.cfg.deploy.model!r}: the real engine serves only "
                               f"{tiny_model.NAME}, the model built here (nothing is downloaded)")
        self.build = vllm_engine.detect()
        self.model_dir = vllm_engine.build_model(self.rd.path / "models")
        cores = procmod._cores()
        replicas = self.state["replicas"]
        bound = {r: vllm_engine.core_of(i, cores) for i, r in enumerate(replicas)} if self.build.device == "cpu" \
            else {}
        self.state["engine"] = {"kind": "vllm", "build": self.build.to_dict(), "model": str(self.model_dir),
                                "block_size": vllm_engine.block_size(self.cfg.deploy, self.build),
                                "cores": bound, "cores_shared": len(replicas) > len(cores) and bool(bound),
                                "traces": bool(self.build.otlp)}
        self.tlog.write("INFO", "real engine: {} {} on {}, model {}, cores {}", self.build.package,
                        self.build.version, self.build.device, self.model_dir, bound)

    def engine_serving(self, service: str) -> bool:
        """``service``'s engine runs and serves: not held down, not waiting for a restart, not loading (a real
        engine's restart is over once /health answers)."""
        m = self.procs.get(f"engine:{service}")
        if m is None:
            raise UnknownNameError(f"no engine for {service!r}")
        return bool(m.popen is not None and m.popen.poll() is None and not m.held and m.restart_at is None
                    and "killed_at" not in m.extra and not m.extra.get("restarting"))

    def _kill_vllm(self, m: Managed, backoff_s: float = 0.0) -> int | None:
        """The real engine's death: SIGKILL of the process that steps the model (an OOM kill, a crashed GPU
        worker). The server then logs the worker's death and ``EngineDeadError`` and exits on its own; the monitor
        starts a new one at once (its model load is real) and kills it if it lingers."""
        if m.popen is None or m.popen.poll() is not None:
            return None
        workers = vllm_engine.worker_pids(m.popen.pid)
        if not workers:
            raise TestbedError(f"{m.name}: no vLLM worker process found below pid {m.popen.pid}")
        now = time.time()
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        m.restart_at = now + CRASH_RESTART_S + max(0.0, float(backoff_s))  # a crash loop's back-off first
        m.extra.update(killed_at=now, kill_deadline=now + VLLM_DEATH_GRACE_S, awaiting_restart=True)
        self.tlog.write("INFO", "SIGKILL of the vLLM worker(s) {} of {} (server pid {})", workers, m.service,
                        m.popen.pid)
        return workers[0]

    def _define(self) -> None:
        self._gpu_host()
        py = sys.executable
        rd = str(self.rd.path)
        ports = self.state["ports"]
        real = self.cfg.deploy.engine == "vllm"
        if real:
            self._prepare_vllm()
        else:
            self.state["engine"] = {"kind": "emulated"}
        for r in self.state["replicas"]:
            argv, env = self.engine_argv(r)
            self.procs[f"engine:{r}"] = Managed(f"engine:{r}", r, argv, ports[f"engine:{r}"],
                                                restart_after_s=CRASH_RESTART_S if real else self.cfg.model_load_s,
                                                env=env, health=real, own_group=real)
        self.procs["mesh"] = Managed("mesh", None, [py, "-m", "llmrca.testbed.mesh", rd], ports["mesh"])
        self.procs["proxy"] = Managed("proxy", HEAD, [py, "-m", "llmrca.testbed.proxy_server", rd], ports["proxy"])
        ng = nginxmod.nginx_binary()
        pb = prom.prometheus_binary()
        if ng is None or pb is None:
            missing = [n for n, b in (("nginx", ng), ("prometheus", pb)) if b is None]
            raise TestbedError(f"{' and '.join(missing)} not found: install the Debian package(s) "
                               f"(apt-get install -y {' '.join(missing)})")
        conf_dir = self.rd.nginx
        (conf_dir / "tmp").mkdir(parents=True, exist_ok=True)
        os.chmod(conf_dir / "tmp", 0o777)  # nginx's workers run as an unprivileged user when started as root
        conf = conf_dir / "nginx.conf"
        conf.write_text(nginxmod.config(conf_dir, ports["gateway"], ports["link:" + HEAD], self.cfg.read_timeout_s,
                                        self.rd.logs / "nginx-access.log", self.rd.logs / "nginx-error.log"))
        self.procs["nginx"] = Managed("nginx", GATEWAY, [ng, "-p", str(conf_dir), "-c", str(conf), "-e",
                                                         str(self.rd.logs / "nginx-error.log"), "-g", "daemon off;"],
                                      ports["gateway"])
        jobs = {
            "vllm": [(ports[f"engine:{r}"], {"service": r}) for r in self.state["replicas"]],
            "serve-proxy": [(ports["proxy"], {"service": HEAD})],
            "llmrca-agent": [(ports["agent"], {})],
        }
        if self.state.get("client"):  # the workload node's client-side series
            jobs["loadgen"] = [(ports["loadgen"], {"service": self.state["client"]})]
        pconf = self.rd.path / "prometheus.yml"
        pconf_text = prom.scrape_config(self.cfg.deploy.step, jobs)
        if self.host_gpus is not None and self.host_gpus.dcgm_url:  # a dcgm-exporter serves the real GPUs
            pconf_text += gpu_host.dcgm_scrape_job(self.host_gpus.dcgm_url, self.host_gpus.assigned)
        pconf.write_text(pconf_text)
        self.procs["prometheus"] = Managed("prometheus", None, prom.command(pb, pconf, self.rd.prometheus,
                                                                              ports["prometheus"]), ports["prometheus"])
        if self.cfg.load:
            self.procs["loadgen"] = Managed("loadgen", None, [py, "-m", "llmrca.testbed.loadgen", rd],
                                            ports.get("loadgen"))

    def _start(self, m: Managed) -> None:
        files = self.containment.procs_files(m.service) if m.service else []
        m.popen = spawn(m.argv, out=self.rd.out(m.name.replace(":", "-")), cgroup_procs=files,
                        die_with_parent=True, env=m.env, new_session=m.own_group)
        m.pgid = m.popen.pid if m.own_group else None
        try:
            m.create_time = psutil.Process(m.popen.pid).create_time()
        except psutil.NoSuchProcess:
            m.create_time = 0.0
        m.restart_at = None
        m.extra["started_at"] = time.time()
        self._record_processes()

    def _record_processes(self) -> None:
        self.state["processes"] = {
            name: {"pid": m.popen.pid if m.popen else None, "create_time": m.create_time, "service": m.service,
                   "restarts": m.restarts, "pgid": m.pgid}
            for name, m in self.procs.items()}
        self.rd.write_state(self.state)

    async def _wait_ready(self, names: list[str], timeout: float) -> None:
        end = time.monotonic() + timeout
        pending = [n for n in names if self.procs[n].ready_port]
        while pending:
            for n in list(pending):
                m = self.procs[n]
                if m.popen.poll() is not None:
                    tail = _tail(self.rd.out(n.replace(":", "-")))
                    raise TestbedError(f"{n} exited with code {m.popen.returncode} while starting:\n{tail}")
                if (vllm_engine.wait_health(m.ready_port) if m.health else port_open(m.ready_port)):
                    pending.remove(n)
                    if m.health:
                        self.tlog.write("INFO", "{} healthy {} s after its start", n,
                                        f"{time.time() - m.extra['started_at']:.1f}")
            if pending and time.monotonic() > end:
                what = "answer GET /health" if any(self.procs[n].health for n in pending) else "open their ports"
                raise TestbedError(f"{', '.join(pending)} did not {what} within {timeout:g} s")
            await asyncio.sleep(0.1 if not any(self.procs[n].health for n in pending) else 0.5)

    async def _monitor(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            now = time.time()
            for m in self.procs.values():
                if m.popen is None or self.stopping:
                    continue
                deadline = m.extra.get("kill_deadline")
                if deadline is not None and m.popen.poll() is None and now > deadline:
                    self.tlog.write("WARNING", "{} still runs {} s after its worker was killed; stopping it", m.name,
                                    f"{VLLM_DEATH_GRACE_S:g}")
                    m.extra["kill_deadline"] = None
                    await asyncio.get_running_loop().run_in_executor(None, self._kill_group, m, 5.0)
                if m.popen.poll() is not None and not m.extra.get("death_seen"):
                    m.extra["death_seen"] = True
                    m.extra["died_at"] = now
                    m.extra["kill_deadline"] = None
                    if m.restart_at is None and m.extra.pop("restart_at_once_until", 0.0) >= now:
                        m.restart_at = now  # the death an undo already answered (ensure_engine)
                    elif m.restart_at is None:
                        m.restart_at = now + (m.restart_after_s if m.name.startswith("engine:") else CRASH_RESTART_S)
                    if m.name.startswith("engine:"):
                        self.log.write("ERROR", "Replica {} of deployment {} died unexpectedly (exit code {}); "
                                       "starting a new replica.", m.service, "VLLMDeployment", m.popen.returncode)
                    else:
                        self.tlog.write("ERROR", "process {} (pid {}) exited with code {}; restarting", m.name,
                                        m.popen.pid, m.popen.returncode)
                if m.restart_at is not None and now >= m.restart_at and m.popen.poll() is not None:
                    m.restarts += 1
                    m.held = False
                    m.extra["death_seen"] = False
                    self._start(m)
                    m.extra["restarting"] = m.health
                    if m.name.startswith("engine:"):
                        self.log.write("INFO", "Replica {} of deployment {} started; loading the model.", m.service,
                                       "VLLMDeployment")
                if m.extra.get("restarting") and m.popen.poll() is None and vllm_engine.wait_health(m.ready_port, 0.5):
                    m.extra["restarting"] = False
                    self._restarted(m)
            for iid, (inj, rec, _) in list(self.injections.items()):
                if not inj.undone and now >= inj.end and not rec.get("lease"):
                    await self.undo(iid, "scheduled end")
            try:
                await asyncio.wait_for(stop.wait(), 0.25)
            except TimeoutError:
                pass

    def _restarted(self, m: Managed) -> None:
        """A real engine serves again: record how long its death and its restart took, in the testbed log and in
        the notes of the replica-kill injection that caused it (appended again if that one has ended)."""
        now = time.time()
        killed = m.extra.pop("killed_at", None)
        died = m.extra.get("died_at")
        load = now - m.extra["started_at"]
        self.tlog.write("INFO", "{} healthy again: model load {} s after its start", m.name, f"{load:.1f}")
        if killed is None:
            return
        for inj, rec, _ in reversed(list(self.injections.values())):
            if rec["target"] == m.service and "killed_pid" in inj.notes and "restart_s" not in inj.notes:
                inj.notes.update(server_exit_s=round(died - killed, 2) if died else None,
                                 model_load_s=round(load, 2), restart_s=round(now - killed, 2))
                if inj.undone:
                    self.rd.append_injection(rec)
                break

    def _kill_group(self, m: Managed, timeout: float = 5.0) -> None:
        """Stop ``m`` and everything below it, then every process left in its process group (a vLLM EngineCore or
        worker whose server is gone is no longer below it)."""
        if m.popen is not None:
            kill_tree(m.popen.pid, timeout=timeout)
        if m.pgid:
            sweep_group(m.pgid, m.create_time)

    # -- telemetry agent -----------------------------------------------------------------------------------
    def members(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {s: [] for s in self.state["services"]}
        for m in self.procs.values():
            if m.service and m.popen is not None and m.popen.poll() is None:
                out[m.service].append(m.popen.pid)
        for svc, pids in self.extra_members.items():
            out.setdefault(svc, []).extend(pids)
        return out

    async def _sampler(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            members = self.members()
            try:
                containers = await loop.run_in_executor(None, self.accounting.sample, members)
                self.sample = {"containers": containers, "node": node_sample(), "time": time.time()}
            except Exception as e:  # noqa: BLE001 - a failed sample must not stop the agent
                self.tlog.write("ERROR", "container sampling failed: {}", repr(e))
            self._tail_nginx()
            try:
                await asyncio.wait_for(stop.wait(), max(0.2, 0.5 * self.cfg.deploy.step))
            except TimeoutError:
                pass

    def _tail_nginx(self) -> None:
        path = self.rd.logs / "nginx-access.log"
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                f.seek(self._nginx_pos)
                data = f.read()
        except FileNotFoundError:
            return
        end = data.rfind("\n")
        if end < 0:
            return
        self._nginx_pos += len(data[: end + 1].encode("utf-8", errors="replace"))
        for line in data[: end + 1].splitlines():
            rec = nginxmod.parse_access_line(line)
            if rec is None:
                continue
            code = str(rec["status"])
            self.h_mesh.labels("waypoint", "client", GATEWAY, code).observe(1000.0 * rec["request_time"])
            self.c_mesh.labels("waypoint", "client", GATEWAY, code).inc()
            if rec["upstream_time"] is not None:
                ucode = rec["upstream_status"].split(",")[-1].strip() or code
                self.h_mesh.labels("waypoint", GATEWAY, HEAD, ucode).observe(1000.0 * rec["upstream_time"])
                self.c_mesh.labels("waypoint", GATEWAY, HEAD, ucode).inc()

    def collect(self):
        """prometheus-client custom collector: cAdvisor- and node-exporter-named series from the last sample."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s = self.sample
        cpu = CounterMetricFamily("container_cpu_usage_seconds", "CPU seconds used by the container.",
                                  labels=["service"])
        mem = GaugeMetricFamily("container_memory_working_set_bytes", "Working set of the container.",
                                labels=["service"])
        tx = CounterMetricFamily("container_network_transmit_packets", "TCP segments sent by the container.",
                                 labels=["service"])
        rx = CounterMetricFamily("container_network_receive_packets", "TCP segments received by the container.",
                                 labels=["service"])
        for svc, v in s.get("containers", {}).items():
            cpu.add_metric([svc], v["cpu_seconds"])
            mem.add_metric([svc], v["rss_bytes"])
            tx.add_metric([svc], v["packets_out"])
            rx.add_metric([svc], v["packets_in"])
        yield from (cpu, mem, tx, rx)
        n = s.get("node")
        if n:
            node = self.state["node"]
            c = CounterMetricFamily("node_cpu_seconds", "CPU seconds by mode (all CPUs).", labels=["instance", "mode"])
            for k, v in n.items():
                if k.startswith("cpu_"):
                    c.add_metric([node, k[4:]], v)
            yield c
            for name, key in (("node_memory_MemTotal_bytes", "mem_total"),
                              ("node_memory_MemAvailable_bytes", "mem_available")):
                g = GaugeMetricFamily(name, "Memory (bytes).", labels=["instance"])
                g.add_metric([node], n[key])
                yield g
            for name, key in (("node_network_transmit_packets", "packets_out"),
                              ("node_network_receive_packets", "packets_in")):
                c = CounterMetricFamily(name, "Packets over all interfaces.", labels=["instance", "device"])
                c.add_metric([node, "all"], n[key])
                yield c
        if self.gpu_poller is not None:  # the real engine's GPUs (last sample only: never waits on nvidia-smi)
            yield from self.gpu_poller.collect()

    def _agent_app(self) -> Any:
        from aiohttp import web
        from prometheus_client import (
            CONTENT_TYPE_LATEST,
            CollectorRegistry,
            Counter,
            Histogram,
            generate_latest,
        )

        reg = CollectorRegistry()
        reg.register(self)
        lab = ["reporter", "source_workload", "destination_workload", "response_code"]
        self.h_mesh = Histogram("istio_request_duration_milliseconds", "Request duration (ms) seen by the mesh.",
                                lab, buckets=MESH_BUCKETS_MS, registry=reg)
        self.c_mesh = Counter("istio_requests", "Requests seen by the mesh.", lab, registry=reg)

        async def metrics(request: Any) -> Any:
            return web.Response(body=generate_latest(reg), headers={"Content-Type": CONTENT_TYPE_LATEST})

        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_get("/metrics", metrics)
        app.router.add_post("/v1/traces", self.spans.handle)
        return app

    # -- control API ---------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        procs = {}
        for name, m in self.procs.items():
            procs[name] = {"pid": m.popen.pid if m.popen else None, "service": m.service,
                           "running": bool(m.popen is not None and m.popen.poll() is None), "restarts": m.restarts,
                           "port": m.ready_port}
        return {"status": self.state["status"], "run_dir": str(self.rd.path), "run_id": self.state["run_id"],
                "ports": self.state["ports"], "processes": procs, "containment": self.containment.mode,
                "engine": self.state.get("engine") or {"kind": "emulated"},
                "injections": [rec for _, rec, _ in self.injections.values() if rec.get("status") == "active"],
                "spans": self.spans.count, "prometheus": f"http://{LOOPBACK}:{self.state['ports']['prometheus']}",
                "gateway": f"http://{LOOPBACK}:{self.state['ports']['gateway']}", "scaling": self.state["scaling"]}

    async def inject(self, fault: str, target: str, params: dict[str, Any] | None, duration: float,
                     lease: bool) -> dict[str, Any]:
        spec = fault_registry.get(fault)  # an unknown fault: the registry's error, before anything else
        if self.build is not None and self.build.device == "cpu" and "power_limit" in spec.causes:
            raise TestbedError(f"fault {fault!r}: the real engine runs on CPU here: no GPU to cap; use --engine "
                               "emulated")
        from llmrca.testbed.collector import topology_of

        spec.check_target(target, topology_of(self.state))  # the fault's targets rule, as in the simulator
        check_duration(duration)
        if not isinstance(params, dict):
            raise TestbedError(f"params must be an object of NAME: VALUE, is {type(params).__name__}")
        for inj, rec, _ in self.injections.values():
            if not inj.undone:
                raise TestbedError(f"fault {rec['fault']} on {rec['target']} is still active ({rec['id']}); "
                                   "one fault at a time")
        inject_time = time.time()
        port = self.state["ports"].get(f"engine:{target}")  # None: the target runs no engine (proxy, client)
        live = injmod.plan(fault, target, params, self.cfg.deploy.gpu, self.scaling, inject_time, inject_time + duration,
                           power_draw_w=lambda: injmod.engine_power_w(port), state=self.state)
        iid = f"{fault}-{target}-{int(inject_time)}"
        inj = Injector(self, live, end=inject_time + duration, seed=derive_seed(self.cfg.seed, iid),
                       injection_id=iid)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, inj.apply)
        except OSError as e:  # a process the mechanism drives did not answer: one line, not a 500 with a trace
            raise TestbedError(f"fault {fault} on {target}: {getattr(e, 'reason', None) or e} (is {target} down "
                               "or restarting? `llmrca testbed status` shows it)") from None
        started = time.time()
        rec = {"id": iid, "fault": fault, "target": target, "params": live.recorded(), "notes": inj.notes,
               "inject_time": inject_time, "start": started,
               # a mechanism may hold the fault longer than asked (a GPU fault: until the replica is back)
               "end": max(inject_time + duration, inj.end), "duration": duration,
               "method": inj.method, "containment": self.containment.mode,
               "indicator": fault_registry.get(fault).indicator,
               "lease": lease, "status": "active", "scaling": self.state["scaling"]}
        handle = self.cleanup.register(functools.partial(self._undo_now, iid), f"undo {iid}")
        self.injections[iid] = (inj, rec, handle)
        self.rd.append_injection(rec)
        self.tlog.write("INFO", "Fault {} injected on {}: {}", fault, target, inj.method)
        return rec

    def _undo_now(self, iid: str) -> None:
        """Undo an injection and record it in the injection log, whoever asks: a request, its scheduled end, or
        the cleanup registry when the supervisor stops (so a collected window always sees when a fault ended)."""
        inj, rec, handle = self.injections[iid]
        if inj.undone:
            return
        try:
            inj.undo()
        finally:
            reason = self._undo_reason.pop(iid, "the testbed stopped")
            rec = dict(rec, status="done", undone_at=time.time(), undo_reason=reason)
            self.injections[iid] = (inj, rec, handle)
            self.rd.append_injection(rec)
            self.tlog.write("INFO", "Fault {} on {} undone ({}).", rec["fault"], rec["target"], reason)

    async def undo(self, iid: str, reason: str) -> dict[str, Any]:
        if iid not in self.injections:
            raise UnknownNameError(f"no injection {iid!r}")
        inj, _, handle = self.injections[iid]
        if not inj.undone:
            self._undo_reason[iid] = reason
            await asyncio.get_running_loop().run_in_executor(None, self.cleanup.run, handle)
        return self.injections[iid][1]

    def _control_app(self, stop: asyncio.Event) -> Any:
        from aiohttp import web

        async def status(request: Any) -> Any:
            return web.json_response(self.status())

        async def inject(request: Any) -> Any:
            try:
                b = await request.json()
                if not isinstance(b, dict):
                    raise TypeError("the body must be a JSON object")
                lease = bool(b.get("lease", True))
                applying = asyncio.ensure_future(self.inject(str(b["fault"]), str(b["target"]),
                                                             b.get("params") or {}, duration_of(b.get("duration")),
                                                             lease))
                try:
                    # Shielded: a client that hangs up mid-apply cancels this handler (service.start_site), but
                    # the fault must still be registered and logged, and then undone if the client held it.
                    rec = await asyncio.shield(applying)
                except asyncio.CancelledError:
                    with contextlib.suppress(Exception):
                        done = await applying
                        if lease:
                            await self.undo(done["id"], "the client went away")
                    raise
            except KeyError as e:
                return web.json_response({"error": f"bad request: missing {e}"}, status=400)
            except (ValueError, TypeError) as e:
                return web.json_response({"error": f"bad request: {e}"}, status=400)
            except LlmrcaError as e:
                return web.json_response({"error": str(e)}, status=400)
            resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
            await resp.prepare(request)
            await resp.write(json.dumps({"event": "started", "record": rec}).encode() + b"\n")
            if not rec["lease"]:
                await resp.write_eof()
                return resp
            iid = rec["id"]
            try:
                while time.time() < rec["end"] and not self.injections[iid][0].undone:
                    await asyncio.sleep(min(0.5, max(0.0, rec["end"] - time.time())))
                    await resp.write(json.dumps({"event": "tick", "remaining": max(0.0, rec["end"] - time.time())})
                                     .encode() + b"\n")
                done = await self.undo(iid, "scheduled end")
                await resp.write(json.dumps({"event": "ended", "record": done}).encode() + b"\n")
                await resp.write_eof()
            except (ConnectionError, asyncio.CancelledError):
                await self.undo(iid, "the client went away")
                raise
            return resp

        async def undo(request: Any) -> Any:
            try:
                b = await request.json()
                if not isinstance(b, dict) or not (b.get("all") or isinstance(b.get("id"), str)):
                    raise TypeError('the body must be {"id": ID} or {"all": true}')
            except (ValueError, TypeError) as e:
                return web.json_response({"error": f"bad request: {e}"}, status=400)
            ids = [i for i, (inj, _, _) in self.injections.items() if not inj.undone] if b.get("all") else [b["id"]]
            out = []
            for i in ids:
                try:
                    out.append(await self.undo(i, str(b.get("reason", "requested"))))
                except UnknownNameError as e:
                    return web.json_response({"error": str(e)}, status=404)
            return web.json_response(out)

        async def shutdown(request: Any) -> Any:
            self.tlog.write("INFO", "shutdown requested through the control API")
            stop.set()
            return web.json_response({"stopping": True})

        from llmrca.testbed import auth

        # Every change (inject, undo, shutdown) needs the run's token; /status only reads.
        app = web.Application(middlewares=[auth.middleware(auth.read_token(self.rd.path), auth.mutating)])
        app.router.add_get("/status", status)
        app.router.add_post("/inject", inject)
        app.router.add_post("/undo", undo)
        app.router.add_post("/shutdown", shutdown)
        return app

    # -- lifecycle -----------------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        from llmrca.testbed.service import start_site

        # Signals set `stop` (service.run); the registry also runs at exit, should anything escape the finally.
        self.cleanup.install(signals=False)
        self.rd.write_state(self.state)
        self.containment = Containment.create(self.state["run_id"], self.state["services"], self.scaling.pod_cpu,
                                              allow_cgroups=os.environ.get("LLMRCA_TESTBED_CGROUPS", "1") != "0")
        self.cleanup.register(self.containment.teardown, "remove cgroups")
        self.state["containment"] = self.containment.to_dict()
        self.cleanup.register(self._stop_children, "stop processes")
        runners = []
        try:
            self._define()
            runners.append(await start_site(self._agent_app(), self.state["ports"]["agent"]))
            runners.append(await start_site(self._control_app(stop), self.state["ports"]["control"]))
            self.state["supervisor"]["control"] = f"http://{LOOPBACK}:{self.state['ports']['control']}"
            engines = [n for n in self.procs if n.startswith("engine:")]
            for n in ["mesh", *engines]:
                self._start(self.procs[n])
            await self._wait_ready(["mesh", *engines], VLLM_START_S if self.build is not None else 60.0)
            for n in ("proxy", "nginx"):
                self._start(self.procs[n])
            await self._wait_ready(["proxy", "nginx"], 30.0)
            self._start(self.procs["prometheus"])
            await self._wait_ready(["prometheus"], 60.0)
            client = prom.PromClient(f"http://{LOOPBACK}:{self.state['ports']['prometheus']}")
            end = time.monotonic() + 60.0
            while not client.ready():
                if time.monotonic() > end:
                    raise TestbedError("prometheus did not become ready within 60 s")
                await asyncio.sleep(0.2)
            if "loadgen" in self.procs:
                self._start(self.procs["loadgen"])
            self.state["status"] = "up"
            self.state["up_since"] = time.time()
            self._record_processes()
            self.tlog.write("INFO", "Testbed up: {} replicas, gateway on port {}.", len(self.state["replicas"]),
                          self.state["ports"]["gateway"])
            tasks = [asyncio.create_task(self._monitor(stop)), asyncio.create_task(self._sampler(stop))]
            await stop.wait()
            for t in tasks:
                t.cancel()
        except Exception as e:
            self.state["status"] = "failed"
            self.state["error"] = f"{type(e).__name__}: {e}"
            self.rd.write_state(self.state)
            raise
        finally:
            self.stopping = True
            self.state["status"] = "stopping"
            self.rd.write_state(self.state)
            for r in runners:
                await r.cleanup()
            self.cleanup.run_all()  # undo faults (last registered first), stop children, remove cgroups
            if self.state["status"] != "failed":
                self.state["status"] = "down"
            self.state["stopped"] = time.time()
            self.rd.write_state(self.state)

    def _stop_children(self) -> None:
        self.stopping = True
        order = ["loadgen", "prometheus", "nginx", "proxy", *[n for n in self.procs if n.startswith("engine:")],
                 "mesh"]
        for n in order:
            m = self.procs.get(n)
            if m is not None and m.popen is not None:
                self._kill_group(m, timeout=10.0 if n == "prometheus" else 5.0)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    m.popen.wait(timeout=1.0)
        for pids in self.extra_members.values():
            for pid in pids:
                kill_tree(pid, timeout=3.0)


def sweep_group(pgid: int, since: float) -> list[int]:
    """SIGKILL every process of process group ``pgid`` started at or after ``since`` (its leader's start: an
    unrelated process that later reused the id is older than nothing we started, so it is left alone)."""
    out = []
    for p in psutil.process_iter(["pid", "create_time"]):
        try:
            if p.pid == os.getpid() or os.getpgid(p.pid) != pgid or p.info["create_time"] < since - 1.0:
                continue
            p.kill()
            out.append(p.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError, PermissionError):
            continue
    left = []
    for pid in out:
        with contextlib.suppress(psutil.NoSuchProcess):
            left.append(psutil.Process(pid))
    psutil.wait_procs(left, timeout=3.0)
    return out


def duration_of(value: Any) -> float:
    """A fault's duration from a request body: a number (not a bool, not a string), checked."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"duration must be a number of seconds, is {value!r}")
    return check_duration(float(value))


def check_duration(duration: float) -> float:
    """A finite duration in (0, MAX_FAULT_S]: ``Infinity`` would hold a fault forever and break every later
    time computation (status, collect)."""
    if not (math.isfinite(duration) and 0 < duration <= MAX_FAULT_S):
        raise TestbedError(f"duration must be finite, above 0 and at most {MAX_FAULT_S:g} s, is {duration!r}")
    return duration


def _tail(path: Any, n: int = 20) -> str:
    try:
        return "\n".join(open(path, encoding="utf-8", errors="replace").read().splitlines()[-n:])
    except OSError:
        return "(no output)"


def main(argv: list[str] | None = None) -> None:
    from llmrca.testbed import service

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.exit("usage: python -m llmrca.testbed.supervisor RUN_DIR")
    rd = RunDir(args[0])
    sup = Supervisor(rd)
    service.run(sup.run)


if __name__ == "__main__":
    main()
