"""Finalized transfers per second at the node (issue #16; SPEC N1, L2, L10).

What it runs: a 3-validator network of real ``python -m network.cli`` processes on
127.0.0.1 (real gRPC, real SQLite with synchronous=FULL), blocks at least ``--interval``
seconds apart (the round opens that long after the parent is applied; block times are
whole seconds and strictly increase), the block size from the genesis
(``--block-txs``). A load generator in this process submits pre-signed ed25519
transfers from ``--senders`` (≤ 100) accounts funded at genesis over gRPC ``SubmitTxs``,
each sender's txs to one node (sender k → node k mod 3, in nonce order), keeping at most
``--window`` txs of each sender not yet final (closed loop: the offered load follows what
the network finalizes). Signing happens before the nodes start, as a client would sign on
its own machine.

What it measures, over ``--duration`` seconds after ``--warmup``: on EVERY node, the txs in
the blocks it finalized in that window over the time between its first and last block
of the window (heights observed by polling ``Status`` every ``POLL`` seconds); the figure
reported is the lowest of the three. Latency: from the moment a tx's ``SubmitTxs`` call
returned accepted to the first poll that saw its block final — on node 0, and on all
three nodes. After the load stops it checks that every node holds the same blocks (equal
headers, hence equal state roots) up to a common height.

    .venv/bin/python benchmarks/node_throughput.py            # 60 s, writes results
    .venv/bin/python benchmarks/node_throughput.py --quick    # 10 s smoke, writes nothing
    .venv/bin/python benchmarks/node_throughput.py --profile  # + per-node CPU profiles

It also reports each node's CPU seconds over the window (``/proc``), per finalized tx:
on a shared machine the throughput follows the CPU the nodes get, and that figure shows
what they would need.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.results import write_json, write_section  # noqa: E402
from ledger.encoding import canonical  # noqa: E402
from ledger.genesis import Genesis  # noqa: E402
from ledger.keys import Wallet  # noqa: E402
from ledger.tx import make_tx  # noqa: E402
from ledger.units import BASED  # noqa: E402
from network.protos import node_pb2, node_pb2_grpc  # noqa: E402
from network.wallet import save  # noqa: E402

CHAIN_ID = "cerberus-throughput"
POLL = 0.1  # seconds between height polls (the latency figures' resolution)
STARTUP = 60.0
OPTIONS = [("grpc.max_receive_message_length", 4 * 1024 * 1024),
           ("grpc.max_send_message_length", 4 * 1024 * 1024)]


def _sign(args: tuple[int, int, int, int]) -> list[bytes]:
    """Worker: ``count`` transfers of sender ``k`` from nonce ``start`` (canonical bytes)."""
    k, start, count, senders = args
    w = Wallet.from_seed(f"throughput-sender-{k}")
    to = Wallet.from_seed(f"throughput-sender-{(k + 1) % senders}").address
    return [canonical(make_tx(w, "transfer", n, CHAIN_ID, to=to, amount=1 + n % 7).to_dict())
            for n in range(start, start + count)]


@dataclass
class Proc:
    """One node process: its address once it printed ``node ADDRESS on HOST:PORT``."""

    name: str
    popen: subprocess.Popen[bytes]
    out: Path
    listen: str = ""

    def wait_ready(self) -> str:
        deadline = time.monotonic() + STARTUP
        while time.monotonic() < deadline:
            text = self.out.read_text() if self.out.exists() else ""
            if "\n" in text:
                parts = text.split("\n", 1)[0].split()
                if len(parts) == 4 and parts[0] == "node":
                    self.listen = parts[3]
                    return self.listen
            if self.popen.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not start")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)


@dataclass
class Load:
    """Load-generator state shared by the submitter and watcher threads."""

    payloads: list[list[bytes]]  # sender → nonce → canonical tx
    window: int
    final: list[int]  # sender → next nonce not yet final (node 0's view)
    next_submit: list[int]
    submitted_at: dict[tuple[int, int], float] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)
    calls: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)


def submitter(load: Load, listen: str, senders: list[int]) -> None:
    """Keep each of ``senders`` at most ``window`` txs ahead of finality on one node."""
    with grpc.insecure_channel(listen, options=OPTIONS) as ch:
        stub = node_pb2_grpc.NodeStub(ch)
        while not load.stop.is_set():
            batch: list[tuple[int, int]] = []
            with load.lock:
                for k in senders:
                    lo = max(load.next_submit[k], load.final[k])
                    hi = min(load.final[k] + load.window, len(load.payloads[k]))
                    room = 1_000 - len(batch)
                    hi = min(hi, lo + room)
                    batch += [(k, n) for n in range(lo, hi)]
                    load.next_submit[k] = max(load.next_submit[k], hi)
            if not batch:
                time.sleep(0.02)
                continue
            try:
                reply = stub.SubmitTxs(node_pb2.TxsRequest(
                    txs=[load.payloads[k][n] for k, n in batch]), timeout=30)
            except grpc.RpcError as e:
                with load.lock:
                    load.rejected[str(e.code())] = load.rejected.get(str(e.code()), 0) + 1
                    for k, n in batch:
                        load.next_submit[k] = min(load.next_submit[k], n)
                time.sleep(0.1)
                continue
            now = time.monotonic()
            with load.lock:
                load.calls += 1
                for (k, n), r in zip(batch, reply.replies, strict=True):
                    if r.accepted:
                        load.submitted_at.setdefault((k, n), now)
                    else:
                        why = r.reason.split(":")[0][:60]
                        load.rejected[why] = load.rejected.get(why, 0) + 1
                        load.next_submit[k] = min(load.next_submit[k], n)


def watcher(load: Load, listens: list[str], sender_index: dict[str, int],
            seen: list[dict[int, float]], blocks0: dict[int, list[tuple[int, int]]]) -> None:
    """Poll every node's height; fetch node 0's new blocks to learn what is final."""
    channels = [grpc.insecure_channel(a, options=OPTIONS) for a in listens]
    stubs = [node_pb2_grpc.NodeStub(c) for c in channels]
    fetched = 0
    try:
        while not load.stop.is_set():
            t0 = time.monotonic()
            for i, stub in enumerate(stubs):
                try:
                    h = json.loads(stub.Status(node_pb2.Empty(), timeout=5).json)["height"]
                except grpc.RpcError:
                    continue
                now = time.monotonic()
                for x in range(max(seen[i], default=0) + 1, h + 1):
                    seen[i].setdefault(x, now)
            head = max(seen[0], default=0)
            while fetched < head:
                hi = min(head, fetched + 128)
                try:
                    items = list(stubs[0].GetBlocks(node_pb2.BlocksRequest(
                        from_height=fetched + 1, to_height=hi), timeout=30))
                except grpc.RpcError:
                    break
                for item in items:
                    d = json.loads(item.block)
                    txs = [(sender_index[t["sender"]], t["nonce"]) for t in d["txs"]
                           if t["sender"] in sender_index]
                    blocks0[d["header"]["height"]] = txs
                    with load.lock:
                        for k, n in txs:
                            load.final[k] = max(load.final[k], n + 1)
                    fetched = d["header"]["height"]
                if not items:
                    break
            time.sleep(max(0.0, POLL - (time.monotonic() - t0)))
    finally:
        for c in channels:
            c.close()


def chain_blocks(listen: str, hi: int) -> list[dict[str, Any]]:
    """Blocks 1..hi of one node, as their JSON dicts."""
    out: list[dict[str, Any]] = []
    with grpc.insecure_channel(listen, options=OPTIONS) as ch:
        stub = node_pb2_grpc.NodeStub(ch)
        for lo in range(1, hi + 1, 128):
            for item in stub.GetBlocks(node_pb2.BlocksRequest(
                    from_height=lo, to_height=min(hi, lo + 127)), timeout=60):
                out.append(json.loads(item.block))
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of ``values`` by nearest rank."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q * (len(s) - 1)))))]


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    n_send = args.senders
    per_sender = int(args.max_tps * (args.warmup + args.duration + 15) / n_send) + args.window
    t = time.monotonic()
    with Pool(min(4, os.cpu_count() or 1)) as pool:
        payloads = pool.map(_sign, [(k, 0, per_sender, n_send) for k in range(n_send)])
    sign_s = time.monotonic() - t
    print(f"signed {n_send * per_sender} transfers in {sign_s:.1f} s", flush=True)
    senders = [Wallet.from_seed(f"throughput-sender-{k}") for k in range(n_send)]
    validators = [Wallet.from_seed(f"throughput-validator-{i}") for i in range(3)]
    op = Wallet.from_seed("throughput-operator")
    g = Genesis(chain_id=CHAIN_ID, operator=op.address, bridge=op.address,
                balances={w.address: 1_000_000 * BASED for w in [*senders, *validators]},
                time=int(time.time()) - 1, block_time=1, tempo=1_000_000,
                authorities=tuple(w.address for w in validators),
                max_block_txs=args.block_txs)
    gfile = workdir / "genesis.json"
    gfile.write_text(json.dumps(g.to_dict()))
    procs: list[Proc] = []
    try:
        for i, w in enumerate(validators):
            d = workdir / f"v{i}"
            d.mkdir(exist_ok=True)
            key = d / "wallet.key"
            if not key.exists():
                save(w, key)
            out = d / "stdout"
            run_node = [str(ROOT / "benchmarks" / "_node_sampler.py"), str(d / "profile.json"),
                        "--"] if args.profile else ["-m", "network.cli"]
            cmd = [sys.executable, *run_node, "--data", str(d / "data"),
                   "--genesis", str(gfile), "--wallet", str(key), "--port", "0",
                   "--block-interval", str(args.interval), "--round-timeout",
                   str(args.round_timeout)]
            if procs:
                cmd += ["--bootstrap", procs[0].listen]
            with open(out, "wb") as o, open(d / "stderr", "wb") as e:
                p = Proc(f"v{i}", subprocess.Popen(cmd, cwd=ROOT, stdout=o, stderr=e), out)
            procs.append(p)
            p.wait_ready()
        listens = [p.listen for p in procs]
        print("nodes:", " ".join(listens), flush=True)
        load = Load(payloads, args.window, [0] * n_send, [0] * n_send)
        seen: list[dict[int, float]] = [{}, {}, {}]
        blocks0: dict[int, list[tuple[int, int]]] = {}
        index = {w.address: k for k, w in enumerate(senders)}
        threads = [threading.Thread(target=watcher, args=(load, listens, index, seen, blocks0),
                                    daemon=True)]
        threads += [threading.Thread(target=submitter, args=(load, listens[i],
                                                             list(range(i, n_send, 3))),
                                     daemon=True) for i in range(3)]
        for th in threads:
            th.start()
        start = time.monotonic()
        t_a = start + args.warmup
        t_b = t_a + args.duration
        cpu_a: list[float] | None = None
        gen_a = 0.0
        while time.monotonic() < t_b:
            time.sleep(0.5)
            if any(p.popen.poll() is not None for p in procs):
                raise RuntimeError("a node exited during the run")
            if cpu_a is None and time.monotonic() >= t_a:
                cpu_a = [cpu_seconds(p.popen.pid) for p in procs]
                gen_a = sum(os.times()[:2])
        cpu = [cpu_seconds(p.popen.pid) - a for p, a in zip(procs, cpu_a or [], strict=True)]
        gen_cpu = sum(os.times()[:2]) - gen_a
        measured = time.monotonic() - t_a
        load.stop.set()
        for th in threads:
            th.join(timeout=30)
        ran_out = sum(1 for k in range(n_send) if load.next_submit[k] >= per_sender)
        # every node's window: its first and last block observed inside [t_a, t_b]
        per_node = []
        common = min(max(s) for s in seen)
        chains = [chain_blocks(a, common) for a in listens]
        identical = all(c == chains[0] for c in chains)
        for i, s in enumerate(seen):
            inside = sorted(h for h, ts in s.items() if t_a <= ts <= t_b)
            lo, hi = inside[0], inside[-1]
            txs = sum(len(chains[i][h - 1]["txs"]) for h in range(lo + 1, hi + 1)
                      if h <= common)
            hi_c = min(hi, common)
            span = s[hi_c] - s[lo]
            per_node.append({"node": i, "heights": [lo, hi_c], "txs": txs, "seconds": span,
                             "tps": txs / span if span > 0 else 0.0,
                             "blocks": hi_c - lo})
        lat0: list[float] = []
        lat_all: list[float] = []
        sizes = []
        for h, txs in blocks0.items():
            t0 = seen[0].get(h)
            if t0 is None or not t_a <= t0 <= t_b:
                continue
            sizes.append(len(txs))
            t_every = max(s.get(h, float("inf")) for s in seen)
            for k, n in txs:
                sub = load.submitted_at.get((k, n))
                if sub is not None:
                    lat0.append(t0 - sub)
                    if t_every != float("inf"):
                        lat_all.append(t_every - sub)
        gaps = [seen[0][h] - seen[0][h - 1] for h in range(2, common + 1)
                if h - 1 in seen[0] and t_a <= seen[0][h] <= t_b]
        roots = [c[-1]["header"]["state_root"] for c in chains]
        return {
            "finalized_tps": min(n["tps"] for n in per_node),
            "per_node": per_node,
            "latency_node0_s": {"p50": pct(lat0, 0.5), "p95": pct(lat0, 0.95),
                                "n": len(lat0)} if lat0 else None,
            "latency_all_nodes_s": {"p50": pct(lat_all, 0.5), "p95": pct(lat_all, 0.95),
                                    "n": len(lat_all)} if lat_all else None,
            "block_txs_median": statistics.median(sizes) if sizes else 0,
            "block_txs_max": max(sizes, default=0),
            "block_gap_s_median": statistics.median(gaps) if gaps else None,
            "block_gap_s_min": min(gaps) if gaps else None,
            "common_height": common,
            "identical_blocks_on_all_nodes": identical,
            "state_roots_equal": len(set(roots)) == 1,
            "state_root": roots[0],
            "rejected": load.rejected,
            "submit_calls": load.calls,
            "senders": n_send,
            "senders_out_of_presigned_txs": ran_out,
            "window": args.window,
            "block_txs_genesis": args.block_txs,
            "interval_s": args.interval,
            "round_timeout_s": args.round_timeout,
            "warmup_s": args.warmup,
            "duration_s": args.duration,
            "poll_s": POLL,
            "presign_s": sign_s,
            "loadavg_after": os.getloadavg(),
            # CPU the nodes and this load generator used over the measured window: with
            # the figure, where the time went (a node at 100% of a core is CPU-bound)
            "node_cpu_s": cpu,
            "node_cpu_share": [c / measured for c in cpu],
            "loadgen_cpu_s": gen_cpu,
            "node_cpu_ms_per_finalized_tx": [
                1000 * c / max(1, n["txs"]) for c, n in zip(cpu, per_node, strict=True)],
        }
    finally:
        for p in procs:
            p.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="10 s smoke run; writes nothing")
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--warmup", type=float, default=10.0)
    ap.add_argument("--senders", type=int, default=100)
    ap.add_argument("--window", type=int, default=60, help="≤ 64 (the mempool's per-sender cap)")
    ap.add_argument("--block-txs", type=int, default=5_000, help="genesis max_block_txs")
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--round-timeout", type=float, default=3.0)
    ap.add_argument("--max-tps", type=float, default=2_000.0,
                    help="pre-sign enough txs for this rate over the run")
    ap.add_argument("--workdir", default=f"/tmp/node-throughput-{os.getpid()}")
    ap.add_argument("--profile", action="store_true",
                    help="sample each node's threads (WORKDIR/vN/profile.json, "
                         "benchmarks/_node_sampler.py); writes no results")
    args = ap.parse_args()
    if not 1 <= args.senders <= 100:
        ap.error("--senders must be in 1..100")
    if not 1 <= args.window <= 64:
        ap.error("--window must be in 1..64 (a sender has at most 64 pending txs)")
    if args.quick:
        args.duration, args.warmup, args.max_tps = 10.0, 3.0, 1_000.0
    r = run(args)
    print(json.dumps(r, indent=1))
    ok = r["identical_blocks_on_all_nodes"] and r["state_roots_equal"]
    print(f"{r['finalized_tps']:,.0f} finalized transfers/s (lowest of 3 nodes); "
          f"identical blocks and roots on all nodes: {ok}")
    if args.quick or args.profile:
        return
    cmd = ".venv/bin/python benchmarks/node_throughput.py " + " ".join(sys.argv[1:])
    write_json("node_throughput", {"command": cmd.strip(), **r})
    lat0, lat_all = r["latency_node0_s"], r["latency_all_nodes_s"]
    rows = "\n".join(f"| node {n['node']} | {n['tps']:,.0f} | {n['txs']:,} | {n['blocks']} "
                     f"| {n['seconds']:.1f} |" for n in r["per_node"])
    md = (
        f"Command: `{cmd.strip()}`\n\n"
        f"**{r['finalized_tps']:,.0f} finalized transfers/s** (the lowest of the three "
        f"validators; goal ≥ 1,000 on this 2-core machine).\n\n"
        "| node | finalized transfers/s | txs | blocks | seconds |\n|---|---|---|---|---|\n"
        f"{rows}\n\n"
        f"Latency from an accepted `SubmitTxs` to the first poll ({POLL} s) that saw its "
        f"block final: p50 {lat0['p50']:.2f} s, p95 {lat0['p95']:.2f} s on node 0; until "
        f"final on all three: p50 {lat_all['p50']:.2f} s, p95 {lat_all['p95']:.2f} s. "
        f"Blocks: median {r['block_txs_median']:,.0f} txs (max {r['block_txs_max']:,}; "
        f"genesis `max_block_txs` {r['block_txs_genesis']:,}), median gap "
        f"{r['block_gap_s_median']:.2f} s (min {r['block_gap_s_min']:.2f} s). After the "
        f"run every node held identical blocks up to height {r['common_height']} "
        f"({r['identical_blocks_on_all_nodes']}) and equal state roots "
        f"({r['state_roots_equal']}).\n\n"
        f"CPU over the measured window: each node used "
        f"{', '.join(f'{x:.0%}' for x in r['node_cpu_share'])} of a core, i.e. "
        f"{', '.join(f'{x:.2f}' for x in r['node_cpu_ms_per_finalized_tx'])} ms of CPU per "
        f"finalized transfer; the load generator {r['loadgen_cpu_s']:.1f} s in all.\n\n"
        f"Setup: 3 validator processes (`python -m network.cli`) on 127.0.0.1, SQLite WAL + "
        f"synchronous=FULL, block interval {r['interval_s']} s, {r['senders']} sender "
        f"accounts funded at genesis, each at most {r['window']} txs ahead of finality "
        f"(closed loop), {r['warmup_s']:.0f} s warm-up then {r['duration_s']:.0f} s "
        f"measured; transfers pre-signed before the nodes start. The load generator runs "
        f"on the same 2 cores as the three nodes; the machine was shared with other "
        f"work (load average after the run: "
        f"{', '.join(f'{x:.1f}' for x in r['loadavg_after'])})."
    )
    write_section("node_throughput", "Throughput at the node (benchmarks/node_throughput.py)",
                  md)


if __name__ == "__main__":
    main()
