"""Background noise of a running live testbed, the measured reference of the simulator's noise="realistic".

    llmrca testbed up --replicas 4 --rate 5 --run-dir RUN      # let it run a few minutes
    python benchmarks/testbed_noise.py --run-dir RUN --window 360s
    llmrca testbed down --run-dir RUN

From the testbed's Prometheus (raw samples over the window): scrape interval jitter and failed scrapes (``up``);
per container the 1 s CPU (mean, bursts above median + 4 MAD: rate and CPU-s) and working-set CV; the node's
CPU, memory and transmitted packets minus the testbed's own containers ("neighbours"), with the spread of their
means over 1-60 s. docs/simulator.md ("Realistic noise") lists the values taken from it.
"""

from __future__ import annotations

import argparse
import json
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np


def _raw(url: str, expr: str, window: str) -> dict[str, np.ndarray]:
    q = url + "/api/v1/query?" + urllib.parse.urlencode({"query": f"{expr}[{window}]"})
    with urllib.request.urlopen(q, timeout=30) as r:
        res = json.load(r)["data"]["result"]
    return {r["metric"].get("service") or json.dumps(r["metric"], sort_keys=True): np.array(r["values"], dtype=float)
            for r in res}


def _rate(v: np.ndarray) -> np.ndarray:
    return np.diff(v[:, 1]) / np.diff(v[:, 0])


def _means(x: np.ndarray, k: int) -> np.ndarray:
    n = len(x) // k * k
    return x[:n].reshape(-1, k).mean(axis=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", type=Path, help="the testbed's run folder (its state.json names Prometheus)")
    ap.add_argument("--prometheus", help="Prometheus base URL (instead of --run-dir)")
    ap.add_argument("--window", default="360s")
    a = ap.parse_args()
    url = a.prometheus
    if url is None:
        state = json.loads((a.run_dir / "state.json").read_text())
        url = f"http://127.0.0.1:{state['ports']['prometheus']}"
    w = a.window
    up = _raw(url, "up", w)
    gaps = np.concatenate([np.diff(v[:, 0]) for v in up.values()])
    n = sum(len(v) for v in up.values())
    failed = sum(int((v[:, 1] == 0).sum()) for v in up.values())
    print(f"scrapes {n}, failed {failed} (95 % upper bound {3 / n:.4f}); interval sd {1000 * gaps.std():.1f} ms, "
          f"max {gaps.max():.3f} s")
    cpu = {k: _rate(v) for k, v in _raw(url, "container_cpu_usage_seconds_total", w).items()}
    mem = {k: v[:, 1] for k, v in _raw(url, "container_memory_working_set_bytes", w).items()}
    for k, d in cpu.items():
        med = np.median(d)
        mad = 1.4826 * np.median(np.abs(d - med))
        burst = d > med + 4 * mad
        size = float(np.mean(d[burst] - med)) if burst.any() else 0.0
        print(f"{k}: cpu mean {d.mean():.3f} cores, bursts {burst.mean():.4f}/s of {size:.3f} CPU-s; "
              f"memory CV {mem[k].std() / mem[k].mean():.4f}")
    node = sum(_rate(v)[:min(len(x) for x in cpu.values())] for v in
               _raw(url, 'node_cpu_seconds_total{mode!~"idle|iowait|steal"}', w).values())
    m = min(len(node), *(len(d) for d in cpu.values()))
    nb_cpu = node[:m] - sum(d[:m] for d in cpu.values())
    total = next(iter(_raw(url, "node_memory_MemTotal_bytes", w).values()))[0, 1]
    used = total - next(iter(_raw(url, "node_memory_MemAvailable_bytes", w).values()))[:, 1]
    m2 = min(len(used), *(len(x) for x in mem.values()))
    nb_mem = used[:m2] - sum(x[:m2] for x in mem.values())
    tx = _rate(next(iter(_raw(url, "node_network_transmit_packets_total", w).values())))
    ctx = [_rate(v) for v in _raw(url, "container_network_transmit_packets_total", w).values()]
    m3 = min(len(tx), *(len(x) for x in ctx))
    nb_tx = tx[:m3] - sum(x[:m3] for x in ctx)
    r1 = np.corrcoef(nb_mem[:-1], nb_mem[1:])[0, 1]
    print(f"neighbours: cpu {nb_cpu.mean():.2f} cores, memory {nb_mem.mean() / 1e9:.2f} GB (lag-1 corr {r1:.3f}, "
          f"tau {-1 / np.log(r1) if 0 < r1 < 1 else float('nan'):.0f} s), tx {nb_tx.mean():.0f} packets/s")
    for k in (1, 5, 15, 30, 60):
        if len(nb_cpu) < 3 * k:
            break  # too few means for a spread
        print(f"  sd of {k:2d} s means: cpu {_means(nb_cpu, k).std():.3f} cores, memory "
              f"{_means(nb_mem, k).std() / 1e6:.0f} MB, tx {_means(nb_tx, k).std():.0f} /s")


if __name__ == "__main__":
    main()
