"""Benchmark of the simulated cluster: 5,000 nodes and 50,000 pods, then full lists.

Not a test and not run in CI. Usage: .venv/bin/python bench/bench_sim.py [--nodes N] [--pods M]
Prints the start-up time, the latency of listing nodes and pods over HTTPS (one big list and a
paginated list with limit=500), and the process's resident memory.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import ssl
import time
from pathlib import Path

import httpx2
import msgspec

from kubeguard.sim import SimCluster, SimConfig, Timings
from kubeguard.sim.resources import core


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def timed_list(
    client: httpx2.AsyncClient, path: str, limit: int | None = None
) -> tuple[float, int]:
    start = time.perf_counter()
    count = 0
    path, _, query = path.partition("?")
    params: dict[str, str] = dict(p.split("=", 1) for p in query.split("&") if p)
    if limit:
        params["limit"] = str(limit)
    while True:
        resp = await client.get(path, params=params)
        resp.raise_for_status()
        body = msgspec.json.decode(resp.content)
        count += len(body["items"])
        token = body["metadata"].get("continue")
        if not token:
            break
        params = {**params, "continue": token}
    return time.perf_counter() - start, count


async def main(nodes: int, pods: int) -> None:
    rss0 = rss_mib()
    t0 = time.perf_counter()
    # real controller timings: 5,000 kubelets renew their leases every 10 s meanwhile
    async with SimCluster(SimConfig(timings=Timings())) as cluster:
        t_server = time.perf_counter() - t0
        per_node = max(pods // nodes, 0)
        for i in range(1, nodes + 1):
            await cluster.add_node(f"node-{i:05d}", zone=f"zone-{i % 3}")
        t_nodes = time.perf_counter() - t0
        await cluster.create_namespace("bench")
        for i in range(1, nodes + 1):
            for j in range(per_node):
                await cluster.add_pod(
                    f"pod-{i:05d}-{j}", "bench", node=f"node-{i:05d}", running=True
                )
        t_ready = time.perf_counter() - t0
        rss_loaded = rss_mib()
        # The client runs in the sim's process: move the 50,000 stored pods out of the
        # cyclic GC's generations, or every full collection triggered by the client's decoding
        # walks them all (a separate client process would not pay this).
        gc.collect()
        gc.freeze()
        server_side = {}
        for resource in ("nodes", "pods"):
            start = time.perf_counter()
            size = len(msgspec.json.encode(cluster.api.list(core(resource), None)))
            server_side[resource] = (time.perf_counter() - start, size)
        ctx = ssl.create_default_context(cadata=cluster.ca_pem.decode())
        async with httpx2.AsyncClient(
            base_url=cluster.url,
            verify=ctx,
            timeout=120,
            headers={"Authorization": f"Bearer {cluster.admin_token}"},
        ) as client:
            results = {
                "nodes (one list)": await timed_list(client, "/api/v1/nodes"),
                "pods (one list)": await timed_list(client, "/api/v1/pods"),
                "pods (limit=500 pages)": await timed_list(client, "/api/v1/pods", 500),
                "pods of one node (fieldSelector)": await timed_list(
                    client, "/api/v1/pods?fieldSelector=spec.nodeName=node-00042"
                ),
            }
        print(f"nodes={nodes} pods={cluster.store.count('pods')}")
        print(
            f"start-up: server {t_server:.2f} s, +nodes {t_nodes:.2f} s, "
            f"+pods (all Running) {t_ready:.2f} s"
        )
        for resource, (seconds, size) in server_side.items():
            print(
                f"server-side list+encode of all {resource:<5} {seconds * 1000:8.1f} ms "
                f"({size / 1e6:.0f} MB of JSON)"
            )
        for name, (seconds, count) in results.items():
            print(f"HTTPS list {name:<34} {count:>6} items in {seconds * 1000:8.1f} ms")
        print(
            f"RSS: {rss0:.0f} MiB before, {rss_loaded:.0f} MiB loaded, "
            f"{rss_mib():.0f} MiB after the lists"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--pods", type=int, default=50000)
    args = parser.parse_args()
    asyncio.run(main(args.nodes, args.pods))
