"""The grid on Ray (darktune/experiment/ray_executor.py), on a local Ray instance this module starts with 2 CPUs:
the same metrics as in this process; a worker killed mid-run retried and resumed to the same weights; a run
that raises isolated; a killed driver's folder finished by the same command; a folder that one node cannot
see refused; without Ray, one line that says what to install.

Real training on a tiny network (corpus.datasets.make_tiny, 64 px, 4 iterations) where results are compared;
the fake trainer (tests/fake_train.py) where only the scheduling matters.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fake_train import fake_train

from corpus import datasets
from darktune.errors import DarktuneError
from darktune.experiment.ray_executor import RayOptions, local_instance
from darktune.experiment.runner import run_experiment
from darktune.experiment.spec import load_spec

ray = pytest.importorskip("ray")

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
TIMING_KEYS = {"images_per_s", "train_s", "elapsed_s", "eval_seconds"}

TINY_SPEC = """\
cfg: {cfg}
train: {{batch: 2, size: 64, checkpoint_every: 1}}
grid:
  data: {data}
  starts: [scratch]
  freeze: [0]
  seeds: {seeds}
  iterations: 4
  eval_at: [2, 4]
"""


def _wait(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.fixture(scope="module")
def cluster():
    """A local Ray instance with 2 CPUs for this module; its workers import darktune and tests/ (ray_train)."""
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS)] + ([before] if before else []))
    ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="error",
             **local_instance(2))
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(spec writer, reference folder): the tiny grid (seeds 0 and 1) trained in this process, one torch thread."""
    import torch

    root = tmp_path_factory.mktemp("tiny")
    cfg, data = datasets.make_tiny(root)

    def spec(folder: Path, seeds=(0, 1)) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "spec.yaml"
        path.write_text(TINY_SPEC.format(cfg=cfg, data=data, seeds=list(seeds)))
        return path

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a Ray run with 1 CPU: the same float reductions
    try:
        result = run_experiment(load_spec(spec(root / "reference")), root / "reference" / "exp", progress=False)
    finally:
        torch.set_num_threads(threads)
    assert not result.failed
    return spec, root / "reference" / "exp"


def figures(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_runs(reference: Path, out: Path, weights: bool = True) -> None:
    names = sorted(p.name for p in (reference / "runs").iterdir())
    assert names == sorted(p.name for p in (out / "runs").iterdir())
    for name in names:
        a, b = reference / "runs" / name, out / "runs" / name
        assert figures(a) == figures(b), name
        assert json.loads((b / "summary.json").read_text())["status"] == "finished", name
        if weights:
            assert (a / "weights" / "last.weights").read_bytes() == (b / "weights" / "last.weights").read_bytes()


def test_ray_grid_gives_the_in_process_metrics(cluster, tiny, tmp_path):
    spec, reference = tiny
    out = tmp_path / "exp"
    result = run_experiment(load_spec(spec(tmp_path)), out, ray=RayOptions(address=cluster), progress=False)
    assert [o.status for o in result.outcomes] == ["finished", "finished"]
    assert_same_runs(reference, out)
    again = run_experiment(load_spec(spec(tmp_path)), out, ray=RayOptions(address=cluster), progress=False)
    assert all(o.reused for o in again.outcomes)


def test_killed_worker_is_retried_and_resumes_to_the_same_weights(cluster, tiny, tmp_path):
    from ray_train import pausing_train

    spec, reference = tiny
    out = tmp_path / "exp"
    box = {}
    thread = threading.Thread(target=lambda: box.update(result=run_experiment(
        load_spec(spec(tmp_path, seeds=[0])), out, ray=RayOptions(address=cluster), train_fn=pausing_train,
        progress=False)))
    thread.start()
    paused = out / "runs" / "scratch-f0-nall-s0" / "paused"
    assert _wait(paused.exists, 90), "the run never reached its first checkpoint"
    pid = int(json.loads(paused.read_text())["pid"])
    os.kill(pid, signal.SIGKILL)  # the worker process dies mid-run, its checkpoint of iteration 1 on disk
    thread.join(timeout=120)
    assert not thread.is_alive()
    outcome = box["result"].outcomes[0]
    assert outcome.status == "finished", outcome.error
    run = out / "runs" / "scratch-f0-nall-s0"
    assert "resumed from" in (run / "train.log").read_text()
    a = reference / "runs" / "scratch-f0-nall-s0"
    assert figures(a) == figures(run)
    assert (a / "weights" / "last.weights").read_bytes() == (run / "weights" / "last.weights").read_bytes()


def test_a_run_that_raises_is_isolated(cluster, tmp_path, coco):
    from ray_train import raising_train

    data = tmp_path / "obj.data"
    data.write_text("classes = 1\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"cfg: {coco.cfg}\nweights: {{coco: {coco.weights}}}\nstages:\n  domain: {{data: {data}, "
                    f"weights: coco15, iterations: 20}}\ngrid:\n  data: {data}\n  starts: [scratch, coco15, domain]\n"
                    "  freeze: [0, 13]\n  seeds: [0, 1]\n  iterations: 30\n  eval_every: 10\n")
    result = run_experiment(load_spec(spec), tmp_path / "ray", ray=RayOptions(address=cluster),
                            train_fn=raising_train, progress=False)
    failed = sorted(o.plan.name for o in result.failed)
    assert failed == sorted(o.plan.name for o in result.outcomes if o.plan.seed == 1)
    assert all("ValueError: non-finite loss" in o.error for o in result.failed)
    assert sum(o.status == "finished" for o in result.outcomes) == 1 + 6
    serial = run_experiment(load_spec(spec), tmp_path / "serial", train_fn=fake_train, progress=False)
    for o in serial.outcomes:  # the stage, and the runs that start from it, trained in the same order
        if o.plan.seed == 0:
            ray_run = tmp_path / "ray" / o.plan.folder
            assert (o.run_dir / "metrics.jsonl").read_text() == (ray_run / "metrics.jsonl").read_text()


def _darktune(*args: str) -> list[str]:
    return [sys.executable, "-m", "darktune", *args]


def _ray_processes() -> set[int]:
    """Process ids of Ray's processes on this machine: gcs_server, raylet, workers (ray::...)."""
    pids = set()
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().decode(errors="replace") if proc.name.isdigit() else ""
            if "gcs_server" in cmd or "raylet" in cmd or cmd.startswith("ray::"):
                pids.add(int(proc.name))
        except OSError:
            continue
    return pids


def _training(pids: set[int]) -> set[int]:
    """Those of `pids` that could train or schedule a run: all but Ray's idle agents."""
    agents = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")
    alive = set()
    for pid in pids:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if not cmd.startswith(agents):
            alive.add(pid)
    return alive


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="reads /proc")
def test_killed_driver_folder_is_finished_by_the_same_command(cluster, tiny, tmp_path):
    spec, reference = tiny
    out = tmp_path / "exp"
    command = _darktune("experiment", str(spec(tmp_path)), "--out", str(out), "--ray", "--no-report",
                        "--no-progress", "--json")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    before = _ray_processes()
    driver = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    started = lambda: any(out.glob("runs/*/checkpoint.pt")) or driver.poll() is not None  # noqa: E731
    assert _wait(started, 120) and driver.poll() is None, driver.stderr.read().decode()[-2000:]
    started_by_driver = _ray_processes() - before  # its Ray instance: gcs_server, raylet, workers
    driver.send_signal(signal.SIGKILL)  # no cleanup at all
    driver.wait()
    # that instance goes with it, workers included (no orphan run trains beside the next command); Ray 2.60's
    # two idle agents (ray::DashboardAgent, ray::RuntimeEnvAgent) follow about a minute later (docs/cluster.md):
    # the test does not wait for them, it ends them
    assert started_by_driver and _wait(lambda: not _training(started_by_driver & _ray_processes()), 60), \
        "the killed driver's Ray instance kept running"
    for pid in started_by_driver & _ray_processes():
        os.kill(pid, signal.SIGKILL)
    finished = {p.parent.name for p in out.glob("runs/*/summary.json")}
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    runs = {Path(r["run"]).name: r for r in json.loads(again.stdout)["runs"]}
    assert finished <= {name for name, r in runs.items() if r["reused"]}
    assert_same_runs(reference, out)


def test_without_ray_one_line_says_what_to_install(tmp_path, capsys, monkeypatch):
    from darktune.cli import main

    data = tmp_path / "obj.data"
    data.write_text("classes = 1\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"cfg: {datasets.write_tiny_cfg(tmp_path / 'tiny.cfg')}\ngrid:\n  data: {data}\n"
                    "  starts: [scratch]\n  seeds: [0, 1]\n  iterations: 2\n")  # two runs: --jobs 2 needs Ray
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    capsys.readouterr()
    assert main(["experiment", str(spec), "--out", str(tmp_path / "o"), "--ray"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "pip install 'darktune[ray]'" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
    assert main(["experiment", str(spec), "--out", str(tmp_path / "o"), "--jobs", "2"]) == 2
    assert "pip install 'darktune[ray]'" in capsys.readouterr().err
    code = ("import sys; sys.path.insert(0, sys.argv[3]); from fake_train import fake_train; "
            "from darktune.experiment.runner import run_experiment; from darktune.experiment.spec import load_spec; "
            "r = run_experiment(load_spec(sys.argv[1]), sys.argv[2], train_fn=fake_train, progress=False); "
            "assert not r.failed; print('ray' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code, str(spec), str(tmp_path / "plain"), str(TESTS)],
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr[-2000:]


@pytest.mark.skipif(subprocess.run(["unshare", "-Urm", "true"], capture_output=True).returncode != 0,
                    reason="needs unprivileged mount namespaces (unshare -Urm) to make a node that sees another folder")
def test_folder_one_node_cannot_see_is_refused(cluster, tmp_path):
    """A second Ray node whose processes live in their own mount namespace, with an empty tmpfs over the folder
    that holds the experiment: the same path, another folder, as on a worker machine without the share."""
    shared = tmp_path / "shared"
    (shared / "exp").mkdir(parents=True)
    data = shared / "obj.data"
    data.write_text("classes = 1\n")
    spec = shared / "spec.yaml"
    spec.write_text(f"cfg: {datasets.write_tiny_cfg(shared / 'tiny.cfg')}\ngrid:\n  data: {data}\n"
                    "  starts: [scratch]\n  iterations: 2\n")
    ray_cli = str(Path(sys.executable).with_name("ray"))
    node = subprocess.Popen(["unshare", "-Urm", "sh", "-c", f"mount -t tmpfs none {shared} && exec {ray_cli} start "
                             f"--address={cluster} --num-cpus=0 --block --disable-usage-stats"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        assert _wait(lambda: sum(n["Alive"] for n in ray.nodes()) == 2 or node.poll() is not None, 90), \
            "the second node did not join"
        assert node.poll() is None, node.stderr.read().decode()[-2000:]
        calls = []
        with pytest.raises(DarktuneError, match=r"1 Ray node of 2 cannot see the experiment folder at the same "
                                                r"path .*: \S+ \(node \w+\) cannot read .*No such file"):
            run_experiment(load_spec(spec), shared / "exp", ray=RayOptions(address=cluster),
                           train_fn=lambda kw, p: calls.append(kw), progress=False)
        assert calls == []
    finally:
        os.killpg(node.pid, signal.SIGTERM)
        node.wait(timeout=30)


@pytest.mark.parametrize("argv, expect", [
    ([], None),
    (["--jobs", "2"], None),  # the library's local Ray instance (runner.local_ray)
    (["--ray"], RayOptions()),
    (["--ray", "--jobs", "2"], RayOptions(jobs=2, cpus_per_run=max(1, (os.cpu_count() or 1) // 2))),
    (["--ray-address", "auto", "--gpus-per-run", "0.25", "--cpus-per-run", "2"],
     RayOptions(address="auto", gpus_per_run=0.25, cpus_per_run=2)),
    (["--gpus-per-run", "0.5"], "--gpus-per-run and --cpus-per-run place runs on Ray"),
    (["--ray", "--gpus-per-run", "1.5"], "--gpus-per-run must be a fraction"),
    (["--ray", "--cpus-per-run", "0"], SystemExit),  # refused by its domain when the flags are parsed
])
def test_ray_flags(argv, expect):
    import argparse

    from darktune.cli.experiment import add_commands, ray_options

    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())
    for command in (["experiment", "SPEC", "--out", "o"], ["reproduce"]):
        if expect is SystemExit:
            with pytest.raises(SystemExit):
                parser.parse_args(command + argv)
            continue
        args = parser.parse_args(command + argv)
        if isinstance(expect, str):
            with pytest.raises(DarktuneError, match=expect):
                ray_options(args)
        else:
            assert ray_options(args) == expect


def test_recipe_trials_on_ray_give_the_in_process_metrics(cluster, tmp_path):
    """`darktune recipe` with --ray-address: its trials as Ray tasks train as they do in this process (compared over
    the iterations both trained: the rungs' decisions follow measured seconds)."""
    import torch

    from darktune.experiment.recipe import run_recipe
    from darktune.experiment.recipe_space import RecipeSettings

    cfg, data = datasets.make_tiny(tmp_path / "tiny")
    settings = RecipeSettings(data=str(data), target_map=0.99, cfg=str(cfg), starts=("scratch",), freeze=(0,),
                              lrs=(0.001, 0.002), first_rung=2, eval_every=1, max_iterations=4, seeds=1,
                              train={"batch": 2, "size": 64})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a Ray task with 1 CPU: the same float reductions
    try:
        local = run_recipe(settings, tmp_path / "local", progress=False)
    finally:
        torch.set_num_threads(threads)
    on_ray = run_recipe(settings, tmp_path / "ray", ray=RayOptions(address=cluster), progress=False)
    assert [r["name"] for r in on_ray["candidates"]] == [r["name"] for r in local["candidates"]]
    assert not on_ray["reached"] and on_ray["closest"] is not None
    for run in sorted((tmp_path / "ray" / "runs").iterdir()):
        a, b = figures(tmp_path / "local" / "runs" / run.name), figures(run)
        n = min(len(a), len(b))
        assert n >= 4 and a[:n] == b[:n], run.name
