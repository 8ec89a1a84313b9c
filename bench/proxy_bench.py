"""`make bench`: what the gateway costs over a direct call and over a bare mitmproxy, in one run.

    python -m bench.proxy_bench [--quick] [--requests N] [--concurrent-requests M] [--clients C]
                                [--rounds R] [--warm-up W] [--large-kib K] [--iterations I]
                                [--json FILE] [--no-extras]

Starts one HTTPS fake vendor (`tests.fakes.FakeVendor`) and four proxies in front of it:
`mitmdump` whose only script is `bench/mitm_route.py` (the least it needs to reach the vendor),
"mitmproxy core" (`bench/mitm_core.py`: the gateway's own mitmproxy set-up, the same script instead
of the gateway's addon), and the real gateway (`tests.processes.GatewayProcess`) twice: as configured
by default, and with DLP tokenization off (`dlp: {tokenize: []}`), which is the proxy core of
issue 2 (identity, routing, egress, validation, credentials, audit). Each workload, a
small Stripe form POST and a large OpenAI embeddings JSON POST, is sent on every path, first on one
keep-alive connection, then from `--clients` connections at once, by a load generator in its own
process (`bench.loadgen`). Then the decision path is timed in-process (`bench.decision`), and the
other benchmarks in bench/ are run if present, so that each issue's rows land in one report.

A third gateway loads a policy set of 50 rules (`decision.write_policies`), and the sandbox is
timed end to end through `POST /v1/sandbox/run`; the gateways' resident memory is read after their
rows.

Targets, reported and not asserted: gateway throughput >= 85% of bare mitmproxy's (mitmdump, and
the stricter mitmproxy core); with 50 rules within 20% of the proxy core; decision path p99 < 1 ms
for steps 1-4 and < 2 ms for steps 1-6.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import mitmproxy.version

from bench import decision, loadgen
from bench.mitm_core import OPTIONS
from tests.clients import basic
from tests.fakes import PKI, VENDOR_HOSTS, FakeVendor, vendor_settings
from tests.processes import GatewayProcess, free_port, wait_port

BENCH = Path(__file__).resolve().parent
THROUGHPUT_TARGET = 0.85  # gateway req/s over a bare mitmproxy's
POLICY_THROUGHPUT_TARGET = 0.80  # gateway with 50 rules over the proxy core (issue 3)
DECISION_P99_TARGETS_US = (1000.0, 2000.0)  # steps 1-4 (issue 2), steps 1-6 (issue 3)
EXTRAS = {"dlp_bench": 10, "sandbox_bench": 200, "telemetry_bench": 100, "identity_bench": 50, "mcp_bench": 100, "fleet_bench": 1}  # other benches in bench/ -> their --runs under --quick
BASELINES = ("mitmdump", "mitmproxy core", "direct")  # what the gateway is compared with
POLICY_DIR = "<bench policies>"  # replaced by the directory `decision.write_policies` fills
GATEWAYS: dict[str, dict[str, Any]] = {  # name -> config on top of tests.fakes.vendor_settings
    "gateway, no DLP": {"dlp": {"tokenize": []}},
    "gateway + 50 rules": {"dlp": {"tokenize": []}, "policies": POLICY_DIR},
    "gateway": {},
}


@dataclass(frozen=True)
class Workload:
    """A request, and the agent (role, scopes) the gateway issues a token to for it."""

    name: str
    request: loadgen.Request
    role: str
    scopes: tuple[str, ...]
    share: float  # of --requests / --concurrent-requests: large bodies get fewer


def workloads(large_kib: int) -> list[Workload]:
    stripe = loadgen.Request(
        decision.HOST, decision.METHOD, decision.PATH, "application/x-www-form-urlencoded", decision.PAYMENT_FORM
    )
    chunk = ("quarterly revenue forecast for the northern region " * 80)[:4000]
    texts = [f"{i}: {chunk}" for i in range(large_kib * 1024 // len(chunk) + 1)]
    body = json.dumps({"model": "text-embedding-3-small", "input": texts}).encode()
    openai = loadgen.Request("api.openai.com", "POST", "/v1/embeddings", "application/json", body)
    return [
        Workload(f"stripe payment_intents form ({len(stripe.body)} B)", stripe, "finance", ("stripe:*",), 1.0),
        Workload(f"openai embeddings JSON ({len(body) // 1024} KiB)", openai, "research", ("openai:*",), 0.2),
    ]


@dataclass(frozen=True)
class Proxy:
    port: int
    ca_file: Path
    pid: int


@dataclass(frozen=True)
class Row:
    workload: str
    path: str
    clients: int
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    proxy_cpu_us: float | None  # proxy process CPU per request; None direct (or without /proc)


class Services:
    """The fake vendor and the proxies in front of it, running for the whole benchmark."""

    def __init__(self, root: Path, stack: ExitStack):
        self.root, self.stack = root, stack
        self.pki = PKI(root / "pki")
        self.vendor = FakeVendor(self.pki.leaf("vendor", VENDOR_HOSTS))
        stack.callback(self.vendor.close)
        upstream = f"127.0.0.1:{self.vendor.port}"
        mitmdump = [str(Path(sys.executable).with_name("mitmdump")), "-q", "-s", str(BENCH / "mitm_route.py"),
                    "--set", f"bench_upstream={upstream}",
                    "--set", f"ssl_verify_upstream_trusted_ca={self.pki.ca_file}"]
        for key, value in OPTIONS.items():
            mitmdump += ["--set", f"{key}={str(value).lower()}"]
        core = [sys.executable, "-m", "bench.mitm_core", "--upstream", upstream, "--upstream-ca", str(self.pki.ca_file)]
        self.proxies = {
            "mitmdump": self._start("mitmdump", mitmdump, lambda port, confdir: [
                "--listen-host", "127.0.0.1", "--listen-port", str(port), "--set", f"confdir={confdir}"]),
            "mitmproxy core": self._start("mitmproxy-core", core, lambda port, confdir: [
                "--port", str(port), "--confdir", str(confdir)]),
        }
        self.gateways: dict[str, GatewayProcess] = {}
        policies = str(decision.write_policies(root / "policies"))
        for i, (name, extra) in enumerate(GATEWAYS.items()):
            settings = {k: policies if v == POLICY_DIR else v for k, v in extra.items()}
            gw = GatewayProcess(root / f"gateway-{i}", vendor_settings(self.pki, self.vendor, **settings))
            stack.callback(gw.stop)
            gw.start()
            assert gw.proc is not None
            self.gateways[name] = gw
            self.proxies[name] = Proxy(gw.port, gw.ca_file, gw.proc.pid)

    def _start(self, name: str, cmd: list[str], listen: Callable[[int, Path], list[str]]) -> Proxy:
        """Start a baseline proxy on a free port with its CA in its own confdir; stopped with the stack."""
        confdir = self.root / name
        confdir.mkdir()
        port = free_port()
        log = (confdir / "log").open("wb")
        proc = subprocess.Popen([*cmd, *listen(port, confdir)], stdout=log, stderr=subprocess.STDOUT, cwd=BENCH.parent)

        def stop() -> None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()

        self.stack.callback(stop)
        wait_port(port, proc=proc)
        return Proxy(port, confdir / "mitmproxy-ca-cert.pem", proc.pid)

    @property
    def paths(self) -> list[str]:
        return ["direct", *self.proxies]

    def load(self, path: str, work: Workload, clients: int, requests: int) -> loadgen.Load:
        """The load for `path`; `requests` in total, split over `clients` connections."""
        per_client = max(1, requests // clients)
        common: dict[str, Any] = {"request": work.request, "clients": clients, "requests": per_client,
                                  "warmup": max(2, min(50, per_client // 5))}
        if path == "direct":
            return loadgen.Load(self.vendor.port, False, None, str(self.pki.ca_file), **common)
        proxy = self.proxies[path]
        auth = None
        if path in self.gateways:
            auth = basic(self.gateways[path].token(sub=f"bench-{work.role}", role=work.role, scopes=work.scopes))
        return loadgen.Load(proxy.port, True, auth, str(proxy.ca_file), proxy_pid=proxy.pid, **common)

    def check_vendor(self, path: str, load: loadgen.Load) -> None:
        """Every request reached the vendor, and through the gateway without the agent's own key."""
        got = self.vendor.received
        expected = load.clients * (load.warmup + load.requests)
        if len(got) != expected:
            raise RuntimeError(f"{path}: the vendor received {len(got)} requests, expected {expected}")
        if path in self.gateways and "agent-has-no-vendor-key" in got[-1].headers.get("authorization", ""):
            raise RuntimeError(f"{path}: the agent's Authorization reached the vendor")
        self.vendor.reset()  # also frees the recorded bodies


def measure_proxies(services: Services, pool: ProcessPoolExecutor, args: argparse.Namespace) -> list[Row]:
    """Each row's requests are sent in `args.rounds` rounds with the paths taking turns, so that a
    slow spell of a shared machine lands on all of them rather than on one."""
    rows: list[Row] = []
    started = time.monotonic()
    for work in workloads(args.large_kib):
        # Each process does lazy work on its first calls (the gateway: ~0.2 s over its first
        # ~100 requests), more than one row's own warm-up covers.
        for path in services.paths:
            load = services.load(path, work, 1, int(args.warm_up * work.share))
            loadgen.run_in_worker(pool, load)
            services.check_vendor(path, load)
        for clients, total in ((1, args.requests), (args.clients, args.concurrent_requests)):
            per_round = max(clients, int(total * work.share) // args.rounds)
            results: dict[str, list[loadgen.Result]] = {path: [] for path in services.paths}
            for _ in range(args.rounds):
                for path in services.paths:
                    load = services.load(path, work, clients, per_round)
                    results[path].append(loadgen.run_in_worker(pool, load))
                    services.check_vendor(path, load)
            rows += [_row(work.name, path, clients, rounds) for path, rounds in results.items()]
            print(f"  measured {work.name}, {clients} client(s) ({time.monotonic() - started:.0f} s)",
                  file=sys.stderr, flush=True)
    return rows


def _row(workload: str, path: str, clients: int, rounds: list[loadgen.Result]) -> Row:
    latencies = [x for r in rounds for x in r.latencies]
    n, wall = len(latencies), sum(r.wall for r in rounds)
    cpus = [r.proxy_cpu for r in rounds]
    cpu_us = sum(c for c in cpus if c is not None) / n * 1e6 if None not in cpus else None
    p50, p99 = decision.percentiles(latencies)
    return Row(workload, path, clients, n, n / wall, p50 * 1000, p99 * 1000, cpu_us)


Ratios = dict[tuple[str, int, str], dict[str, tuple[float, float]]]


def ratios(rows: list[Row]) -> Ratios:
    """Per (workload, clients, gateway) and baseline: (gateway req/s / baseline's, gateway p50 / baseline's)."""
    by = {(r.workload, r.clients, r.path): r for r in rows}
    return {
        (r.workload, r.clients, r.path): {
            b: (r.rps / by[(r.workload, r.clients, b)].rps, r.p50_ms / by[(r.workload, r.clients, b)].p50_ms)
            for b in BASELINES
        }
        for r in rows
        if r.path in GATEWAYS
    }


def print_proxy_tables(rows: list[Row], rat: Ratios) -> None:
    width, pw = max(len(r.workload) for r in rows), max(len(r.path) for r in rows)
    print(f"{'workload':{width}}  {'path':{pw}} {'clients':>7} {'requests':>8} {'req/s':>8} {'p50 ms':>7} "
          f"{'p99 ms':>7} {'proxy CPU µs/req':>16}")
    last = None
    for r in rows:
        group = (r.workload, r.clients)
        if last is not None and group != last:
            print()
        cpu = f"{r.proxy_cpu_us:16.0f}" if r.proxy_cpu_us is not None else f"{'-':>16}"
        print(f"{r.workload if group != last else '':{width}}  {r.path:{pw}} {r.clients:7} {r.requests:8} "
              f"{r.rps:8.1f} {r.p50_ms:7.2f} {r.p99_ms:7.2f} {cpu}")
        last = group

    print(f"\n{'ratios':{width}}  {'':{pw}} {'clients':>7}" + "".join(f"  {'vs ' + b:>20}" for b in BASELINES))
    print(f"{'':{width}}  {'':{pw}} {'':7}" + f"  {'req/s':>10} {'p50':>9}" * len(BASELINES))
    last = None
    for (work, clients, gw), by_base in rat.items():
        if last is not None and (work, clients) != last:
            print()
        print(f"{work if (work, clients) != last else '':{width}}  {gw:{pw}} {clients:7}"
              + "".join(f"  {t:9.2f}x {p:8.2f}x" for t, p in by_base.values()))
        last = (work, clients)

    print(f"\ntarget: gateway req/s >= {THROUGHPUT_TARGET:.0%} of a bare mitmproxy's, in every row")
    for gw in GATEWAYS:
        verdicts = []
        for base in ("mitmdump", "mitmproxy core"):
            shares = [by_base[base][0] for (_, _, g), by_base in rat.items() if g == gw]
            met = sum(s >= THROUGHPUT_TARGET for s in shares)
            verdicts.append(f"vs {base}: met in {met}/{len(shares)} rows, lowest {min(shares):.0%}"
                            + ("" if met == len(shares) else " MISSED"))
        print(f"  {gw + ':':20} " + "; ".join(verdicts))
    shares = policy_shares(rows)
    met = sum(x >= POLICY_THROUGHPUT_TARGET for x in shares)
    print(f"target: gateway + 50 rules req/s within {1 - POLICY_THROUGHPUT_TARGET:.0%} of gateway, no DLP (the proxy core): "
          f"met in {met}/{len(shares)} rows, lowest {min(shares):.0%}" + ("" if met == len(shares) else " MISSED"))


def policy_shares(rows: list[Row]) -> list[float]:
    by = {(r.workload, r.clients, r.path): r.rps for r in rows}
    return [by[(w, c, "gateway + 50 rules")] / by[(w, c, "gateway, no DLP")] for (w, c, p) in by if p == "gateway + 50 rules"]


def measure_sandbox_api(gw: GatewayProcess, runs: int) -> list[tuple[str, float, float, int]]:
    """`POST /v1/sandbox/run` end to end on a running gateway: (row, p50 ms, p99 ms, runs).

    The first run of each kind is reported on its own ("cold": compile, or load from the state
    dir's cache); the Python row is left out where the python-guest extra is not installed.
    """
    token = gw.token(sub="bench-tools", role="finance", scopes=("stripe:*", "sandbox:python"))
    rows: list[tuple[str, float, float, int]] = []
    kinds = {
        "C tool `stats`": {"tool": "stats", "input": {"values": list(range(100))}},
        "Python snippet": {"python": "print(sum(INPUT['values']))", "input": {"values": list(range(100))}},
    }
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=180) as client:
        for kind, body in kinds.items():
            times: list[float] = []
            for _ in range(1 + (runs if kind.startswith("C") else max(10, runs // 4))):
                started = time.perf_counter()
                r = client.post(f"{gw.api_url}/v1/sandbox/run", json=body)
                times.append(time.perf_counter() - started)
                if r.status_code != 200:
                    break
            if r.status_code != 200:
                print(f"  sandbox API row {kind} skipped: {r.status_code} {r.text[:120]}", file=sys.stderr)
                continue
            p50, p99 = decision.percentiles(times[1:])
            rows += [(f"{kind}, cold (first run)", times[0] * 1000, times[0] * 1000, 1),
                     (f"{kind}, warm", p50 * 1000, p99 * 1000, len(times) - 1)]
    return rows


def print_sandbox_api(rows: list[tuple[str, float, float, int]], rss: dict[str, float | None]) -> None:
    print(f"\n{'sandbox through the API (POST /v1/sandbox/run)':48} {'p50 ms':>8} {'p99 ms':>8} {'runs':>5}")
    for name, p50, p99, n in rows:
        print(f"  {name:46} {p50:8.2f} {p99:8.2f} {n:5}")
    print(f"\n{'gateway resident memory (VmRSS)':48} {'MiB':>8}")
    for name, mib in rss.items():
        print(f"  {name:46} {mib:8.1f}" if mib is not None else f"  {name:46} {'-':>8}")


def rss_mib(pid: int) -> float | None:
    """A process's resident memory from /proc, or None where there is none."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    kib = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), None)
    return kib / 1024 if kib is not None else None


def print_decision(
    steps: list[decision.Timing], totals: list[decision.Timing], audit: decision.Timing, iterations: int
) -> None:
    title = f"decision path, in-process ({iterations} Stripe payments)"
    width = max(len(title), *(len(t.name) + 2 for t in [*steps, *totals, audit]))
    print(f"{title:{width}} {'p50 µs':>8} {'p99 µs':>8}")
    for t in [*steps, *totals, audit]:
        print(f"{'  ' + t.name:{width}} {t.p50_us:8.1f} {t.p99_us:8.1f}")
    for total, target in zip(totals, DECISION_P99_TARGETS_US):
        met = "met" if total.p99_us < target else "MISSED"
        print(f"target {total.name} p99 < {target:.0f} µs: {total.p99_us:.1f} µs {met}")


def run_extras(quick: bool) -> dict[str, str]:
    """The other benchmarks in bench/, each in its own process: their output, or why they did not run."""
    out = {}
    for name, quick_runs in EXTRAS.items():
        if not (BENCH / f"{name}.py").exists():
            continue
        cmd = [sys.executable, "-m", f"bench.{name}", *(["--runs", str(quick_runs)] if quick else [])]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=BENCH.parent)
            text = done.stdout if done.returncode == 0 else (
                f"skipped: exit {done.returncode}: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
        except subprocess.TimeoutExpired:
            text = "skipped: no result within 300 s"
        out[name] = text.rstrip()
        print(f"\n{name}\n" + "\n".join("  " + line for line in out[name].splitlines()))
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.proxy_bench", description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke run of a few seconds (small counts)")
    p.add_argument("--requests", type=int, default=1000, help="requests per sequential small-body row")
    p.add_argument("--concurrent-requests", type=int, default=3200, help="requests per concurrent small-body row")
    p.add_argument("--clients", type=int, default=32, help="connections in the concurrent rows")
    p.add_argument("--rounds", type=int, default=5, help="rounds per row, the paths taking turns")
    p.add_argument("--large-kib", type=int, default=256, help="size of the large JSON body")
    p.add_argument("--warm-up", type=int, default=300, help="requests per path before the first row")
    p.add_argument("--iterations", type=int, default=10_000, help="decision path iterations")
    p.add_argument("--sandbox-runs", type=int, default=200, help="warm sandbox runs through the API")
    p.add_argument("--json", type=Path, help="also write the results to this file")
    p.add_argument("--no-extras", action="store_true", help="do not run the other benchmarks in bench/")
    args = p.parse_args(argv)
    if args.quick:
        args.requests, args.concurrent_requests, args.rounds, args.warm_up, args.iterations = 60, 192, 1, 30, 1000
        args.sandbox_runs = 20
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "mitmproxy": mitmproxy.version.VERSION}
    print(f"egress-gateway bench: {machine['cpus']} CPUs, Python {machine['python']}, mitmproxy "
          f"{machine['mitmproxy']}; keep-alive connections, warmed up; {args.rounds} interleaved round(s)\n")
    with tempfile.TemporaryDirectory(prefix="proxy-bench-") as tmp, ExitStack() as stack:
        services = Services(Path(tmp), stack)
        print(f"  started the vendor and the proxies ({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)
        pool = stack.enter_context(ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")))
        rows = measure_proxies(services, pool, args)
        rss = {f"{name}, after its rows": rss_mib(gw.proc.pid) for name, gw in services.gateways.items() if gw.proc}
        gateway = services.gateways["gateway"]
        sandbox_rows = measure_sandbox_api(gateway, args.sandbox_runs)
        rss["gateway, after sandbox runs (Python guest loaded)"] = rss_mib(gateway.proc.pid) if gateway.proc else None
        stack.close()  # stop the servers before the in-process timing, which wants the CPUs
        rat = ratios(rows)
        print_proxy_tables(rows, rat)
        print_sandbox_api(sandbox_rows, rss)
        print()
        steps, totals, audit = decision.measure(Path(tmp), args.iterations)
        print_decision(steps, totals, audit, args.iterations)
    extras = {} if args.no_extras else run_extras(args.quick)
    elapsed = time.monotonic() - started
    print(f"\n(whole bench: {elapsed:.0f} s)")
    if args.json:
        result: dict[str, Any] = {
            "machine": machine,
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "proxy": [asdict(r) for r in rows],
            "gateway_ratios": [
                {"workload": w, "clients": c, "gateway": g,
                 **{f"{m} vs {b}": v[i] for b, v in by.items() for i, m in enumerate(("req/s", "p50"))}}
                for (w, c, g), by in rat.items()
            ],
            "decision": {
                "steps": [t.as_dict() for t in steps], "totals": [t.as_dict() for t in totals],
                "audit_write": audit.as_dict()
            },
            "targets": {
                "throughput_share": THROUGHPUT_TARGET,
                "decision_p99_us": DECISION_P99_TARGETS_US,
                "policy_throughput_share": POLICY_THROUGHPUT_TARGET,
                **{f"throughput_met, {g} vs {b}": all(
                    by[b][0] >= THROUGHPUT_TARGET for (_, _, gw), by in rat.items() if gw == g)
                   for g in GATEWAYS for b in ("mitmdump", "mitmproxy core")},
                "decision_met": [t.p99_us < target for t, target in zip(totals, DECISION_P99_TARGETS_US)],
                "policy_throughput_met": all(x >= POLICY_THROUGHPUT_TARGET for x in policy_shares(rows)),
            },
            "sandbox_api": [{"row": n, "p50_ms": a, "p99_ms": b, "runs": k} for n, a, b, k in sandbox_rows],
            "rss_mib": rss,
            "extras": extras,
            "seconds": round(elapsed, 1),
        }
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
