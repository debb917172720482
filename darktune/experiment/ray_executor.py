"""Runs of an experiment as Ray tasks: on a local Ray instance darktune starts, or on a running cluster.

Owns: `RayOptions` (where, and what each run holds: CPUs, GPUs or a fraction of one), `RayPool` (start or join
Ray, check that every node sees the experiment folder, run the tasks, give Ray back) and the folder probe.
Ray is optional (`pip install 'darktune[ray]'`) and imported only here, when a pool is opened.

Each run is one task with `num_cpus` / `num_gpus` of its own; Ray starts the next one wherever resources free
up, so fast runs (frozen layers) do not wait for slow ones. A task whose worker process or node dies is
retried (`max_retries`) and resumes from the run's checkpoint (darktune/experiment/task.py); a run that fails
by itself is answered as an error, not retried. The experiment folder is the one source of truth: every node
must see it at the same path (a shared filesystem), which `check_shared_folder` proves before the first run.

Nothing waits without end: an address where no cluster answers is refused after a TCP connect of at most
`CONNECT_TIMEOUT_S` (`check_reachable`), before Ray's own client, which retries for minutes; a run that asks for
more than any node has (a GPU on a cluster without one) is refused before it is submitted (`fit_problem`), where
Ray would hold it pending for ever.
"""

from __future__ import annotations

import os
import secrets
import socket
from urllib.parse import urlsplit
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from darktune.errors import DarktuneError, optional_import
from darktune.experiment.task import TrainFn, run_task
from darktune.plural import plural

PROBE_TIMEOUT_S = 120.0  # a node whose worker cannot even start within this is named as not answering
CONNECT_TIMEOUT_S = 10.0  # a cluster's head answers a TCP connect in milliseconds; none in 10 s is none
RAY_PORT = 6379  # Ray's GCS port when an address names only a host


@dataclass(frozen=True)
class RayOptions:
    """`address` None: start a local Ray instance on this machine (`num_cpus`: its CPUs, default all), else
    join that cluster (`auto`, `HOST:6379`, `ray://HOST:10001`). `gpus_per_run` None: 1 / `jobs` when the
    cluster has GPUs, else 0; fractions pack several runs on one GPU. `jobs`: at most this many runs at a time
    (None: as many as the resources allow)."""

    address: str | None = None
    cpus_per_run: float = 1.0
    gpus_per_run: float | None = None
    jobs: int | None = None
    max_retries: int = 3
    num_cpus: int | None = None

    def __post_init__(self):
        if self.cpus_per_run <= 0:
            raise DarktuneError(f"--cpus-per-run must be above 0, got {self.cpus_per_run}")
        g = self.gpus_per_run
        if g is not None and (g < 0 or (g > 1 and g % 1)):
            raise DarktuneError(f"--gpus-per-run must be a fraction of one GPU or a whole number, got "
                                f"{self.gpus_per_run}")
        if self.jobs is not None and self.jobs < 1:
            raise DarktuneError(f"--jobs must be at least 1, got {self.jobs}")


def _probe(folder: str, token: str, node_id: str) -> str | None:
    """On one node: read the driver's token in `folder`, write this node's own; None when both worked."""
    path = Path(folder)
    try:
        seen = (path / f"driver-{token}").read_text(encoding="utf-8")
    except OSError as exc:
        return f"cannot read {path} ({exc.strerror or exc})"
    if seen != token:
        return f"reads other contents in {path}"
    try:
        (path / f"node-{node_id}-{token}").write_text(node_id, encoding="utf-8")
    except OSError as exc:
        return f"cannot write in {path} ({exc.strerror or exc})"
    return None


def address_endpoint(address: str) -> tuple[str, int] | None:
    """(host, port) that `--ray-address` names (HOST, HOST:PORT, [IPv6]:PORT, ray://HOST:PORT); None for `auto`
    and `local`, which Ray resolves on this machine."""
    if address.strip().lower() in ("auto", "local", ""):
        return None
    rest = address.split("://", 1)[1] if "://" in address else address
    try:
        parts = urlsplit("//" + rest)
        host, port = parts.hostname, parts.port
    except ValueError:
        raise DarktuneError(f"--ray-address {address!r}: not HOST:PORT, ray://HOST:PORT or auto") from None
    if not host:
        raise DarktuneError(f"--ray-address {address!r}: not HOST:PORT, ray://HOST:PORT or auto")
    return host, port or (10001 if address.startswith("ray://") else RAY_PORT)


HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # + empty SETTINGS


def check_reachable(address: str, timeout: float | None = None) -> None:
    """A TCP connect to the cluster's address and an HTTP/2 greeting, each within `timeout` seconds (default
    `CONNECT_TIMEOUT_S`): Ray's GCS and Ray Client speak gRPC, which answers a client's HTTP/2 preface with its
    SETTINGS frame. Nothing listening (refused, or no answer), or a listener that answers otherwise or not at
    all, is one line here, instead of Ray's client retrying for minutes. (With RAY_USE_TLS set the greeting is
    left to Ray.)"""
    endpoint = address_endpoint(address)
    if endpoint is None:
        return
    timeout = CONNECT_TIMEOUT_S if timeout is None else timeout
    hint = "start one with `ray start --head`, or check the address"
    try:
        with socket.create_connection(endpoint, timeout=timeout) as conn:
            if os.environ.get("RAY_USE_TLS", "0").strip().lower() in ("1", "true"):
                return
            conn.sendall(HTTP2_PREFACE)
            reply = conn.recv(9)
    except TimeoutError:
        raise DarktuneError(f"no Ray cluster answers at {address}: no reply in {timeout:.0f} s ({hint}, and the "
                            "firewall)") from None
    except OSError as exc:
        raise DarktuneError(f"no Ray cluster answers at {address}: {exc.strerror or exc} ({hint})") from None
    if len(reply) < 4 or reply[3] != 4:  # the 4th byte of an HTTP/2 frame header is its type: 4 is SETTINGS
        raise DarktuneError(f"no Ray cluster answers at {address}: something listens there but does not speak "
                            f"Ray's gRPC ({hint})")


def fit_problem(cpus: float, gpus: float, resources: dict, nodes: list[dict] | None = None) -> str | None:
    """Why no node can hold one run of `cpus` CPUs and `gpus` GPUs (None when one can): what was asked and
    what the cluster has. `nodes`: each live node's resources (Ray's `ray.nodes()[i]["Resources"]`)."""
    per_node = nodes if nodes else [resources]
    if any(n.get("CPU", 0) >= cpus and n.get("GPU", 0) >= gpus for n in per_node):
        return None
    have = f"{_amount(resources.get('CPU', 0))} CPUs and {_amount(resources.get('GPU', 0))} GPUs"
    if nodes and len(nodes) > 1:
        have += f" over {len(nodes)} nodes, at most " + ", ".join(
            f"{_amount(max(n.get(k, 0) for n in nodes))} {k}s" for k in ("CPU", "GPU")) + " on one"
    return (f"each run asks for {_amount(cpus)} CPUs and {_amount(gpus)} GPUs (--cpus-per-run, --gpus-per-run), "
            f"but the Ray cluster has {have}: no run could ever start")


def _amount(x: float) -> str:
    return f"{x:g}"


def require_ray():
    """The ray module, or a one-line MissingDependency that names `pip install 'darktune[ray]'`."""
    return optional_import("ray", "ray", "running the grid on Ray (--ray, --ray-address, --jobs above 1)")


def local_instance(num_cpus: int | None) -> dict:
    """ray.init arguments of the local instance darktune starts. Ray runs its workers at nice 15 (so that its
    own daemons stay responsive); on a machine shared with other work that starves the runs: measured 0.25-0.45
    against 2.95 images/s beside a nice-0 worker pool on a loaded 2-core VM. The runs are the work here: nice 0."""
    return {"num_cpus": num_cpus or os.cpu_count() or 1, "_system_config": {"worker_niceness": 0}}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _node_name(node: dict) -> str:
    return f"{node.get('NodeManagerAddress', '?')} (node {node['NodeID'][:8]})"


def check_shared_folder(ray, out_dir: Path) -> None:
    """One probe task pinned to each live node writes and reads a file in DIR/.probe; a node that cannot, or
    whose file this process cannot read back, sees another folder or none: refused in one line naming it."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    folder = out_dir.resolve() / ".probe"
    folder.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(8)
    (folder / f"driver-{token}").write_text(token, encoding="utf-8")
    probe = ray.remote(_probe)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    refs = {probe.options(num_cpus=0, max_retries=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
        n["NodeID"], soft=False)).remote(str(folder), token, n["NodeID"]): n for n in nodes}
    ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=PROBE_TIMEOUT_S)
    problems = []
    for ref, node in refs.items():
        why = ray.get(ref) if ref in ready else f"did not answer in {PROBE_TIMEOUT_S:.0f} s"
        if why is None and not (folder / f"node-{node['NodeID']}-{token}").is_file():
            why = "writes somewhere this machine cannot see"
        if why:
            problems.append(f"{_node_name(node)} {why}")
    for path in folder.glob(f"*-{token}"):
        path.unlink(missing_ok=True)
    if problems:
        raise DarktuneError(f"{plural(len(problems), 'Ray node')} of {len(nodes)} cannot see the experiment folder "
                            f"at the same path (every node needs it on a shared filesystem): {'; '.join(problems)}",
                            path=str(out_dir))


def _remote_run(train_fn: TrainFn, kwargs: dict, threads: int) -> tuple[str | None, str | None]:
    """A Ray task: one run on whatever node Ray chose. Ray sets CUDA_VISIBLE_DEVICES to the task's GPU."""
    import ray

    return run_task(train_fn, kwargs, "cuda" if ray.get_gpu_ids() else "cpu", threads)


class RayPool:
    """`with RayPool(options, out_dir) as pool: pool.run(...)`: Ray started (or joined) and the folder checked
    on enter; on exit (Ctrl-C included) the runs still going are cancelled (they resume from their checkpoints
    next time) and a Ray instance darktune started is shut down."""

    def __init__(self, options: RayOptions, out_dir: Path):
        self.options, self.out_dir = options, Path(out_dir)
        self._ray = None
        self._started = False
        self._pending: dict = {}

    def __enter__(self) -> RayPool:
        ray = require_ray()
        self._ray = ray
        if not ray.is_initialized():
            local = self.options.address is None
            if not local:
                check_reachable(self.options.address)
            try:
                ray.init(address="local" if local else self.options.address, include_dashboard=False,
                         log_to_driver=False, logging_level="error", configure_logging=True,
                         **(local_instance(self.options.num_cpus) if local else {}))
            except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError...
                what = "start a local Ray instance" if local else f"join the Ray cluster at {self.options.address}"
                raise DarktuneError(f"cannot {what}: {type(exc).__name__}: {_first_line(exc)}") from None
            self._started = True
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        problem = fit_problem(self.options.cpus_per_run, self.gpus_per_run(), ray.cluster_resources(), nodes)
        if problem:
            self.__exit__(None, None, None)
            raise DarktuneError(problem)
        check_shared_folder(ray, self.out_dir)
        return self

    def __exit__(self, *exc) -> None:
        ray = self._ray
        for ref in self._pending:
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - the task may have ended in between; nothing left to stop
                pass
        self._pending.clear()
        if self._started:
            ray.shutdown()

    def gpus_per_run(self) -> float:
        if self.options.gpus_per_run is not None:
            return self.options.gpus_per_run
        if not self._ray.cluster_resources().get("GPU", 0):
            return 0.0
        local = self.options.address is None  # --jobs N on this machine's GPU: N runs share it
        return 1.0 / (self.options.jobs or 1) if local else 1.0

    def slots(self, gpus: float) -> int:
        """How many runs the cluster holds at once (for the progress view's 'running')."""
        res = self._ray.cluster_resources()
        n = int(res.get("CPU", 0) // self.options.cpus_per_run)
        if gpus:
            n = min(n, int(res.get("GPU", 0) // gpus))
        return max(1, min(n, self.options.jobs or n))

    def run(self, train_fn: TrainFn, tasks: list[tuple[int, dict]],
            ended: Callable[[int, str | None, str | None], None], bar) -> None:
        """Submit each (index, TrainConfig kwargs) as a task (at most `jobs` at a time); call ended(index, error,
        status) as each one ends, in the order they end."""
        ray = self._ray
        gpus = self.gpus_per_run()
        remote = ray.remote(_remote_run).options(num_cpus=self.options.cpus_per_run, num_gpus=gpus,
                                                 max_retries=self.options.max_retries, retry_exceptions=False)
        fn = ray.put(train_fn)
        threads = max(1, int(self.options.cpus_per_run))
        waiting = list(tasks)
        limit, slots = self.options.jobs or len(tasks), self.slots(gpus)
        while waiting or self._pending:
            while waiting and len(self._pending) < limit:
                index, kwargs = waiting.pop(0)
                self._pending[remote.remote(fn, kwargs, threads)] = index
            bar.count(running=min(len(self._pending), slots))
            ready, _ = ray.wait(list(self._pending), num_returns=1, timeout=1.0)
            for ref in ready:
                index = self._pending.pop(ref)
                ended(index, *self._answer(ref))

    def _answer(self, ref) -> tuple[str | None, str | None]:
        ray = self._ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayError as exc:  # the worker or its node died more often than max_retries
            return (f"{type(exc).__name__}: the run's Ray worker was lost {self.options.max_retries + 1} times "
                    f"({_first_line(exc)}); run the same command again to resume it from its checkpoint"), None

