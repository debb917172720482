"""Ray never waits for ever: a `--ray-address` where nothing listens is refused in one line within seconds, a
run that asks for more than any node has (a GPU on a machine without one) is refused before it is submitted,
with what was asked and what the cluster has, and `--jobs` is bounded by the runs there are.

Every address is on the loopback range: no test sends traffic off this machine. The addresses run in one
subprocess with a deadline (Ray's own client retries for minutes: a hang is counted, not waited for). Only the
test that starts a local Ray instance is slow (marked as tests/experiment/test_ray.py's are).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from corpus import datasets
from reliability_table import tally  # noqa: F401 (fixture)

pytest.importorskip("ray")

# where nothing listens: port 1 and 9 are never a Ray head's here; ::1 may be missing (also one line)
ADDRESSES = {"loopback-port-1": "127.0.0.1:1", "loopback-host-2": "127.0.0.2:9", "localhost-name": "localhost:1",
             "ray-client-url": "ray://127.0.0.1:1", "ipv6-loopback": "[::1]:1",
             # a loopback listener of the probe's own that accepts and says nothing / answers as a web server
             "silent-listener": "SILENT", "http1-listener": "HTTP1", "silent-listener-ray-url": "ray://SILENT"}

PROBE = """
import json, socket, sys, threading, time
from pathlib import Path
from darktune.errors import DarktuneError
from darktune.experiment import ray_executor
from darktune.experiment.ray_executor import RayOptions, RayPool
ray_executor.CONNECT_TIMEOUT_S = 3.0  # the deadline of the greeting (10 s by default)

def listener(reply):
    server = socket.create_server(("127.0.0.1", 0))
    held = []
    def serve():
        while True:
            conn, _ = server.accept()
            held.append(conn)
            if reply:
                conn.sendall(reply)
    threading.Thread(target=serve, daemon=True).start()
    return f"127.0.0.1:{server.getsockname()[1]}"

ports = {"SILENT": listener(b""), "HTTP1": listener(b"HTTP/1.1 400 Bad Request\\r\\n\\r\\n")}
out = {}
for name, address in json.loads(sys.argv[1]).items():
    for key, value in ports.items():
        address = address.replace(key, value)
    t = time.monotonic()
    try:
        with RayPool(RayOptions(address=address), Path(sys.argv[2])):
            out[name] = ["silent", "joined"]
    except DarktuneError as exc:
        ok = address in str(exc) and len(str(exc).splitlines()) == 1
        out[name] = ["handled" if ok else "crash", f"{time.monotonic() - t:.1f} s: {exc}"[:160]]
    except Exception as exc:
        out[name] = ["crash", f"{type(exc).__name__}: {exc}"[:160]]
    print(json.dumps(out), flush=True)
"""


def test_addresses_where_nothing_listens_are_one_line(tmp_path, tally):
    t = tally("ray")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    try:
        proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(ADDRESSES), str(tmp_path)], capture_output=True,
                              text=True, timeout=120, env=env, cwd=tmp_path)
        lines = proc.stdout.strip().splitlines()
        found = json.loads(lines[-1]) if lines else {}
    except subprocess.TimeoutExpired as exc:
        text = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        found = json.loads(text.strip().splitlines()[-1]) if text.strip() else {}
    for name in ADDRESSES:
        t.case(f"join:{name}", *found.get(name, ["crash", "hang: no answer in 120 s"]))
    assert all(v[0] == "handled" for v in t.cases.values()), t.cases


def test_fit_problem_says_what_was_asked_and_what_the_cluster_has(tally):
    from darktune.experiment.ray_executor import fit_problem

    t = tally("ray")
    cases = {
        "gpu-on-a-cpu-cluster": (1.0, 1.0, {"CPU": 2.0}, None, "1 GPUs"),
        "fraction-of-a-gpu-on-a-cpu-cluster": (1.0, 0.25, {"CPU": 2.0}, None, "0.25 GPUs"),
        "more-cpus-than-any-node": (8.0, 0.0, {"CPU": 12.0}, [{"CPU": 4.0}, {"CPU": 4.0}, {"CPU": 4.0}], "8 CPUs"),
    }
    for name, (cpus, gpus, total, nodes, asked) in cases.items():
        problem = fit_problem(cpus, gpus, total, nodes)
        ok = problem is not None and asked in problem and "the Ray cluster has" in problem
        t.case(f"fit:{name}", "handled" if ok else "silent", "" if ok else str(problem))
    assert fit_problem(1.0, 0.5, {"CPU": 2.0, "GPU": 1.0}) is None
    assert fit_problem(2.0, 0.0, {"CPU": 4.0}, [{"CPU": 2.0}, {"CPU": 2.0}]) is None
    assert all(v[0] == "handled" for v in t.cases.values()), t.cases


def test_jobs_past_the_runs_start_no_more_than_the_runs(tmp_path, tally, monkeypatch):
    """--jobs 1,000,000,000 on a grid of two runs: a local Ray instance for two runs at a time, not one with a
    billion CPUs (seen: minutes of Ray starting workers)."""
    from darktune.experiment import runner
    from darktune.experiment.spec import load_spec

    t = tally("ray")
    cfg, obj = datasets.make_tiny(tmp_path)
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"cfg: {cfg}\ntrain: {{batch: 2, size: 64}}\ngrid:\n  data: {obj}\n  starts: [scratch]\n"
                    "  freeze: [0]\n  seeds: [0, 1]\n  iterations: 2\n  eval_at: [2]\n")
    seen = {}

    class Planned(Exception):
        pass

    def capture(spec, plans, inputs, train_fn, device, ray, progress, keep_checkpoints):
        seen["ray"], seen["runs"] = ray, len(plans)
        raise Planned

    monkeypatch.setattr(runner, "_run_waves", capture)
    with pytest.raises(Planned):
        runner.run_experiment(load_spec(spec), tmp_path / "exp", jobs=10**9, progress=False)
    ray = seen["ray"]
    cores = os.cpu_count() or 1
    ok = ray is not None and ray.jobs <= seen["runs"] and ray.num_cpus <= max(cores, seen["runs"] * ray.cpus_per_run)
    t.case("jobs:1e9-for-2-runs", "handled" if ok else "silent", "" if ok else f"{ray}")
    assert ok, ray


@pytest.mark.ray
@pytest.mark.slow
def test_a_run_no_node_can_hold_is_refused_before_it_waits(tmp_path, tally):
    """On a local Ray instance of 1 CPU and no GPU: a run asking for a GPU, or for 4 CPUs, is refused when the
    pool opens (seen: the task pending with no output, for ever)."""
    from darktune.errors import DarktuneError
    from darktune.experiment.ray_executor import RayOptions, RayPool

    t = tally("ray")
    for name, options in {"gpu-on-a-machine-without": RayOptions(gpus_per_run=1, num_cpus=1),
                          "4-cpus-on-a-1-cpu-instance": RayOptions(cpus_per_run=4, num_cpus=1)}.items():
        try:
            with RayPool(options, tmp_path) as pool:
                outcome = ("silent", f"pool opened; {pool.slots(options.gpus_per_run or 0)} slots")
        except DarktuneError as exc:
            outcome = ("handled", "") if "the Ray cluster has" in str(exc) else ("crash", str(exc)[:100])
        t.case(f"local-ray:{name}", *outcome)
    assert all(v[0] == "handled" for v in t.cases.values()), t.cases
