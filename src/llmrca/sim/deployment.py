"""Names and placement of the simulated deployment, and its Topology.

Services are pods, as in the reference study's metric columns: ``nginx-proxy`` (the gateway), ``ray-head`` (the
Ray head pod: the Serve HTTP proxy *and* the first vLLM replica) and ``ray-replicas-0``.. (the other replicas).
The call graph is ``nginx-proxy -> ray-head -> ray-replicas-i``; the head's own replica is called inside its pod,
so there is no self-edge. With ``workload_node`` the load generator
(``loadgen``) is a service too, calling the gateway (the entry stays the gateway: its latency is the SLI). Pods run on nodes (``node-cpu-0`` for the gateway, ``node-gpu-<k>`` for the GPU pods,
``gpus_per_node`` each); nodes are services too (their metrics are the node series).
"""

from __future__ import annotations

from dataclasses import dataclass

from llmrca.case import Topology
from llmrca.sim.config import SimConfig

GATEWAY = "nginx-proxy"
HEAD = "ray-head"
CLIENT = "loadgen"  # the workload node (``workload_node``): the load generator, calling the gateway
REPLICA_GROUP = "vllm"


@dataclass(frozen=True)
class Deployment:
    gateway: str
    proxy: str  # the pod whose Serve HTTP proxy the gateway calls
    replicas: tuple[str, ...]
    nodes: tuple[str, ...]
    hosts: dict[str, str]  # pod -> node
    gpus: dict[str, list[str]]  # replica pod -> GPU ids
    client: str | None = None  # the workload node, where the deployment has one (not a pod: no container series)

    @property
    def pods(self) -> tuple[str, ...]:
        return (self.gateway, *self.replicas)

    def node_pods(self, node: str) -> list[str]:
        return [p for p in self.pods if self.hosts[p] == node]

    def topology(self) -> Topology:
        edges = [(self.gateway, self.proxy)] + [(self.proxy, r) for r in self.replicas if r != self.proxy]
        client = (self.client,) if self.client else ()
        if self.client:
            edges.insert(0, (self.client, self.gateway))
        return Topology(
            services=(*self.pods, *self.nodes, *client),
            edges=tuple(edges),
            entry=self.gateway,
            hosts=dict(self.hosts),
            gpus={k: list(v) for k, v in self.gpus.items()},
            replicas={REPLICA_GROUP: list(self.replicas)},
        )


def replica_names(n: int) -> tuple[str, ...]:
    return (HEAD, *(f"ray-replicas-{i}" for i in range(n - 1)))


def deployment(config: SimConfig) -> Deployment:
    replicas = replica_names(config.replicas)
    per = config.gpus_per_node
    gpu_nodes = [f"node-gpu-{i // per}" for i in range(len(replicas))]
    hosts = {GATEWAY: "node-cpu-0", **dict(zip(replicas, gpu_nodes))}
    gpus = {r: [f"{node}/gpu{i % per}"] for i, (r, node) in enumerate(zip(replicas, gpu_nodes))}
    nodes = tuple(dict.fromkeys(hosts.values()))
    return Deployment(GATEWAY, HEAD, replicas, nodes, hosts, gpus, CLIENT if config.workload_node else None)
