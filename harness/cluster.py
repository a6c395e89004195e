"""A sweep on Ray workers: ``harness run ... --workers N [--cluster ADDRESS]``.

Each worker is a Ray actor that holds one device (a GPU, or on CPU a share of the cores with torch's
threads set to that share), loads the target and every drafter once, passes the lossless self-check,
and answers work units. A unit is one question of one (suite, temperature) with every method that
still lacks its row, vanilla first, so a speedup pairs rows timed by one worker on one device. Workers
return rows; this process alone writes them, into the same run directory and files as a one-process
sweep (so resume, Spec-Bench's scripts and ``harness report`` are unchanged) and only once a unit is
whole. A worker that dies loses only its unit in flight, which goes back to the queue for another
worker, and a fresh worker takes its place; nothing is written twice. Ray is imported only here.
"""
from __future__ import annotations

import os
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from harness import chat, env, machine_load, replay, runner, selfcheck, validate
from harness.errors import UserError
from harness.records import Manifest, RowWriter, answer_file, new_session, read_rows, run_dir_lock
from harness.sampling import SamplingParams
from harness.suite import Question

INSTALL_HINT = "--workers needs Ray: pip install -e '.[cluster]' (or pip install 'ray==2.60.0')"
UNIT_ATTEMPTS = 3   # a question whose worker died this many times stops the sweep instead of killing more


def require_ray():
    """The ray module, or one line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UserError(INSTALL_HINT) from None
    return ray


def runtime_env() -> dict:
    """Workers import this checkout of the harness (and the tests' modules), not another installed copy."""
    root = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    return {"env_vars": {"PYTHONPATH": path}}


def connect(address: str | None) -> bool:
    """Join the cluster at ``address``, or start Ray on this machine; True when this call started it."""
    ray = require_ray()
    if ray.is_initialized():
        return False
    try:
        ray.init(address=address, include_dashboard=False, runtime_env=runtime_env(), log_to_driver=True)
    except ConnectionError as exc:
        raise UserError(f"--cluster {address}: no Ray cluster answers there ({exc}); start one with "
                        f"`ray start --head` (docs/cluster.md)") from None
    return True


def worker_resources(workers: int, device: str, device_map: str | None) -> dict:
    """What each worker reserves: GPUs when the cluster has them (all its share with --device-map), else
    an equal share of the cluster's CPUs, which also bounds its torch threads (worker_threads)."""
    ray = require_ray()
    total = ray.cluster_resources()
    gpus = int(total.get("GPU", 0))
    if gpus and device in ("auto", "cuda") or device.startswith("cuda"):
        if not gpus:
            raise UserError(f"--device {device}: the Ray cluster has no GPU")
        if workers > gpus:
            raise UserError(f"--workers {workers}: the Ray cluster has {gpus} GPU(s), one per worker")
        return {"num_gpus": gpus // workers if device_map else 1, "num_cpus": 1}
    cpus = int(total.get("CPU", 1))
    if workers > cpus:
        raise UserError(f"--workers {workers}: the Ray cluster has {cpus} CPU(s), at least one per worker")
    return {"num_cpus": cpus // workers}


def worker_threads(cpu_share: int, local: bool) -> int:
    """Torch threads of a CPU worker: its share of the cluster's CPUs, capped on this machine's Ray (``local``:
    no --cluster) by the driver's OMP_NUM_THREADS. Each such run starts its own Ray, which sees every core, so
    two runs side by side would each hand their workers all of them; the cap is how the user splits the cores
    between runs (two `--workers 1` replays on the 2-core VM, two threads each, ran 5-10x slower than with one
    thread each). On a --cluster the driver's environment says nothing about the workers' machines."""
    cap = os.environ.get("OMP_NUM_THREADS", "").strip()
    return min(cpu_share, int(cap)) if local and cap.isdigit() and int(cap) > 0 else cpu_share


class SweepWorker:
    """One Ray actor: a target, its drafters and a timing session, answering units until the sweep ends."""

    def __init__(self, checked: validate.Checked, questions: dict[str, list[Question]], threads: int | None) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.checked, self.questions = checked, questions
        self.session = new_session()

    def load(self) -> dict:
        """Load and check everything; returns what the driver records and compares across workers."""
        plan = self.checked.plan
        validate.check_device(plan.device)
        torch.manual_seed(plan.seed)
        self.target = runner.load_target(plan)
        check = selfcheck.require(self.target, plan.seed)
        validate.check_context(plan, self.target)
        self.decoders = validate.build_decoders(self.checked, self.target)
        if plan.replay:
            replay.check_decoders(self.decoders)
        self.replayed = {m: replay.Replayed(d, self.target) for m, d in self.decoders.items()
                         if runner.cell_labels(plan, [m])[m] != m}
        self.stops = chat.stop_ids(self.target.tokenizer, getattr(self.target.model, "generation_config", None))
        self.identity = {**env.worker(self.target.device), "session": self.session}
        self.warm: set[tuple] = set()
        settings = plan.settings(self.target)
        return {"settings": settings, "agree": settings, "target_check": check.as_dict(), "worker": self.identity,
                "drafters": {m: {"options": d.method.settings(), "checkpoint": d.method.checkpoint,
                                 "lossless": d.lossless} for m, d in self.decoders.items()}}

    def work(self, unit: "Unit") -> list[dict]:
        """The unit's rows, one per method, in the order given (the baseline first); replayed methods from the
        baseline's row of the question (the unit's, or the one just made)."""
        plan = self.checked.plan
        suite = self.checked.suites[unit.suite]
        sampling = SamplingParams(unit.temperature, plan.top_p, plan.top_k)
        rows, baseline_row = [], unit.baseline_row
        for method in unit.methods:
            if method in self.replayed:
                decoder = self.replayed[method]
                decoder.begin(baseline_row)
                rows.append(replay.label(runner.answer_row(plan, self.target, suite, unit.question, decoder,
                                                           self.stops, sampling, unit.scored, self.identity)))
                continue
            decoder = self.decoders[method]
            if (unit.suite, unit.temperature, method) not in self.warm:   # once per cell and worker
                runner.warm_up(plan, self.target, decoder, self.questions[unit.suite], self.stops, sampling)
                self.warm.add((unit.suite, unit.temperature, method))
            rows.append(runner.answer_row(plan, self.target, suite, unit.question, decoder, self.stops,
                                          sampling, unit.scored, self.identity))
            if method == plan.baseline:
                baseline_row = rows[-1]
        return rows


@dataclass(frozen=True)
class Unit:
    suite: str
    temperature: float
    question: Question
    methods: tuple[str, ...]
    scored: bool
    baseline_row: dict | None = None   # --replay: the baseline's row of the question, when it exists already

    def __repr__(self) -> str:
        return f"{self.suite} question {self.question.id} (T={self.temperature:g})"


def run(checked: validate.Checked, questions: dict[str, list[Question]], argv: list[str]) -> Path:
    """The sweep of ``checked.plan`` on plan.workers Ray workers; returns the run directory."""
    plan = checked.plan
    started = connect(plan.cluster)
    pool = Pool(SweepWorker, (checked, questions), plan.workers, plan.device, plan.device_map,
                local=plan.cluster is None)
    try:
        info = pool.start()
        run_dir = runner.run_dir_for(plan, info["settings"])
        validate.check_run_dir(checked, run_dir)
        with run_dir_lock(run_dir):
            _sweep(checked, questions, argv, run_dir, info, pool)
    finally:
        pool.stop()
        if started:
            require_ray().shutdown()
    return run_dir


def _sweep(checked: validate.Checked, questions: dict[str, list[Question]], argv: list[str], run_dir: Path,
           info: dict, pool: Pool) -> None:
    plan = checked.plan
    labels = runner.cell_labels(plan, checked.methods)
    cells = [runner.cell_entry(run_dir, suite_name, temperature, labels[m], info["drafters"][m]["options"],
                               info["drafters"][m]["checkpoint"], info["drafters"][m]["lossless"],
                               replayed=labels[m] != m)
             for suite_name in checked.suites for temperature in plan.temperatures for m in checked.methods]
    manifest = Manifest.open(run_dir, info["settings"], env.capture(), argv, new_session(), plan.baseline, cells)
    sweep = manifest.data["sweeps"][-1]
    sweep.update(target_check=info["target_check"], workers=pool.identities, worker_deaths=0)
    if plan.replay:
        sweep["replayed"] = True
    manifest.save()
    units = deque()
    for suite_name, suite in checked.suites.items():
        scored = runner.scoring(plan, suite)
        for temperature in plan.temperatures:
            rows = {m: {str(row["question_id"]): row for row in
                        read_rows(answer_file(run_dir, suite_name, labels[m], temperature), repair=True)}
                    for m in checked.methods}
            for question in questions[suite_name]:
                missing = tuple(m for m in checked.methods if question.id not in rows[m])
                if missing:
                    baseline_row = rows[plan.baseline].get(question.id) if plan.replay else None
                    units.append(Unit(suite_name, temperature, question, missing, scored, baseline_row))
    status = "interrupted"
    writers: dict[Path, RowWriter] = {}
    loads: dict[tuple, list] = {}   # (suite, method, temperature) -> this sweep's row load records
    bar = tqdm(total=sum(len(u.methods) for u in units), desc=f"{plan.workers} workers", file=sys.stderr,
               dynamic_ncols=True)
    def record_workers() -> None:
        sweep.update(workers=pool.identities, worker_deaths=pool.deaths)
        manifest.save()

    try:
        for _, rows in pool.results(units, record_workers):
            for row in rows:
                path = answer_file(run_dir, row["suite"], row["method"], row["temperature"])
                if path not in writers:
                    writers[path] = RowWriter(path)
                writers[path].write(row)
                loads.setdefault((row["suite"], row["method"], row["temperature"]), []).append(row.get("load"))
            bar.update(len(rows))
        status = "complete"
    finally:
        bar.close()
        for writer in writers.values():
            writer.close()
        for (suite, method, temperature), records in loads.items():   # each cell's load, from the rows timed
            manifest.add_cell_load({"suite": suite, "method": method, "temperature": temperature},
                                   machine_load.of_rows(records))
        manifest.finish_sweep(status)


class Pool:
    """Ray actors of one class: started, each loaded once (``load()``), fed one unit at a time (``work(unit)``),
    and replaced when one dies, its unit queued again. Every worker must report the same ``agree`` value."""

    def __init__(self, worker_cls: type, args: tuple, workers: int, device: str, device_map: str | None,
                 local: bool) -> None:
        self.ray = require_ray()
        self.resources = worker_resources(workers, device, device_map)
        threads = None if "num_gpus" in self.resources else worker_threads(self.resources["num_cpus"], local)
        actor = self.ray.remote(worker_cls).options(**self.resources, max_restarts=0)
        self._new = lambda: actor.remote(*args, threads)
        self.workers = workers
        self.actors: list = []
        self.identities: list[dict] = []
        self.deaths = 0
        self._agreed: object = None

    def start(self) -> dict:
        """Start the workers and wait until each has loaded; returns the first one's load() report."""
        self.actors = [self._new() for _ in range(self.workers)]
        try:
            infos = [self._get(ref) for ref in [a.load.remote() for a in self.actors]]
        except self.ray.exceptions.RayActorError as exc:
            raise UserError(f"a Ray worker died while loading the target: {str(exc).splitlines()[0]}") from None
        for info in infos:
            self._admit(info)
        return infos[0]

    def _admit(self, info: dict) -> None:
        if self._agreed is None:
            self._agreed = info["agree"]
        elif info["agree"] != self._agreed:
            changed = sorted(k for k in self._agreed if self._agreed[k] != info["agree"].get(k))
            raise UserError(f"Ray workers disagree on {', '.join(changed)} (worker {info['worker']['host']}); "
                            f"give every node the same software, target files and devices")
        self.identities.append(info["worker"])

    def results(self, units: deque, on_change=lambda: None):
        """Yield (unit, result) as workers finish units; a dead worker's unit is queued again for another.
        ``on_change`` runs after a worker died or a replacement joined (to record it)."""
        ray = self.ray
        idle, running, attempts = list(self.actors), {}, {}
        while units or any(unit is not None for _, unit in running.values()):
            while units and idle:
                actor, unit = idle.pop(), units.popleft()
                running[actor.work.remote(unit)] = (actor, unit)
            ready, _ = ray.wait(list(running), num_returns=1)
            actor, unit = running.pop(ready[0])
            try:
                result = self._get(ready[0])
            except ray.exceptions.RayActorError:
                self.actors.remove(actor)
                if unit is None:
                    raise UserError("a replacement Ray worker died while loading the target; finished work "
                                    "is saved: rerun the same command to resume") from None
                attempts[repr(unit)] = attempts.get(repr(unit), 0) + 1
                if attempts[repr(unit)] >= UNIT_ATTEMPTS:
                    raise UserError(f"{unit} lost its worker {UNIT_ATTEMPTS} times; finished work is saved") from None
                units.appendleft(unit)
                self.deaths += 1
                on_change()
                tqdm.write(f"note: a Ray worker died; {unit} runs again on another worker", file=sys.stderr)
                replacement = self._new()
                self.actors.append(replacement)
                running[replacement.load.remote()] = (replacement, None)
                continue
            if unit is None:   # a replacement finished loading
                self._admit(result)
                on_change()
            else:
                yield unit, result
            idle.append(actor)

    def _get(self, ref):
        """ray.get, with a worker's UserError raised here as the one line it is."""
        ray = self.ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, UserError):
                raise UserError(str(exc.cause)) from None
            raise

    def stop(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []
