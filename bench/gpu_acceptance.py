"""One acceptance run of every CUDA path, each step timed and checked, in at most 8 minutes.

Run from the repository root on a CUDA machine (``bench/gpu_acceptance.sh`` sets
up the wheels and data that ``bench/gpu_prepare.sh`` brought along, then calls
this script):

    python bench/gpu_acceptance.py --device cuda --out OUT/acceptance
    python bench/gpu_acceptance.py --device cpu --tiny --out /tmp/acceptance   # every step, CPU, small

Steps, in the order they run (a later step never needs a GPU figure of an
earlier one, so a step that fails does not stop the others):

* ``train-simclr-bf16``, ``train-simclr-fp32``, ``train-simclr-compile``
  (bf16 + ``torch.compile``): ``repdiag train`` of ResNet-18 (CIFAR stem,
  width 1) SimCLR on Fashion-MNIST for 2 epochs; images/s of each epoch and
  the runtime the trainer resolved (precision, channels_last, device-resident
  data, compile), checked against what was asked for;
  ``train-bilevel``, ``train-simsiam``: a few steps of each;
* ``check-first-step-loss``: the loss of the first training step on the
  device (fp32 and bf16 autocast) against the CPU's fp32 loss of the same
  batch and views (same seed, same augmentation draws);
* ``extract``: features of the bf16 checkpoint on the device (train and test);
  ``check-extraction``: features of the same images extracted on the CPU;
  ``check-diagnostics``: rank, spectrum, null space, kNN predictions (h, h_r,
  h_n, z), linear probe and t-SNE computed on the device and on the CPU on a
  subset, plus the t-SNE fallback above ``exact_limit`` points;
  ``tsne-10k``: the exact-gradient torch t-SNE of 10,000 test features;
* ``cli-rank``, ``cli-nullspace-knn``, ``cli-nullspace-linear``,
  ``cli-spectrum``, ``cli-tsne`` (torch backend, 10,000 points),
  ``cli-report``: the ``repdiag`` commands with ``--device``, each timed;
* ``bench-train-r18``, ``bench-train-r50``: ``bench/bench_train.py`` with
  reduced steps (ours / bf16 reference pairs/s, lightly loop / ours epoch);
* ``bench-diagnostics``: ``bench/bench_diagnostics.py``'s suite on 50k/10k x
  2048 generated features, repdiag on the device against the scikit-learn
  route on the host, accuracies of both compared.

Each step has a budget in seconds (``BUDGETS``; they add up to 480 s on one
H100-class GPU); a step is stopped at twice its budget, and no step starts
after ``--time-limit`` seconds (default 480), so the run ends in about 8
minutes whatever happens. ``--tiny`` runs the same steps on generated images
and small models: about a minute or two on a CPU.

Output: ``OUT/acceptance.json`` (rewritten whole after every step, so a run
stopped from outside still leaves the steps done) with the device name,
torch/CUDA versions, the commit, and per step: status (pass, fail, skipped),
seconds, budget, figures and every CPU-against-device comparison (both values,
the tolerance, whether it held). Exit status 0 only if every step passed.
Everything the run writes (runs, logs, feature cache, compiler caches,
temporary files) stays under OUT; the checkpoints and the feature cache are
removed at the end (``--keep`` keeps them).

``--inject NAME[,NAME]`` corrupts the device side of a comparison (loss, knn,
rank, extract, tsne) to show that the check fails; ``--only`` runs a subset of
the steps; ``--in-process`` runs the ``repdiag`` commands and bench_train in
this interpreter instead of one process each (quicker to start on a small CPU
box, but a command that hangs is then stopped only by the step's alarm).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"

# seconds on one H100-class GPU (16 host cores); they add up to the 480 s of --time-limit
BUDGETS = {
    "train-simclr-bf16": 25,
    "check-first-step-loss": 20,
    "extract": 10,
    "check-extraction": 8,
    "check-diagnostics": 15,
    "tsne-10k": 10,
    "cli-rank": 10,
    "cli-nullspace-knn": 12,
    "cli-nullspace-linear": 15,
    "cli-spectrum": 10,
    "cli-tsne": 20,
    "cli-report": 25,
    "train-simclr-fp32": 30,
    "train-simclr-compile": 75,
    "train-bilevel": 15,
    "train-simsiam": 15,
    "bench-train-r18": 35,
    "bench-train-r50": 35,
    "bench-diagnostics": 95,
}
STEPS = tuple(BUDGETS)
TINY_BUDGET = 90  # per step on a 2-core CPU with --tiny (a timeout, not a target)
NEEDS = {  # steps that read what another step made
    **{s: "train-simclr-bf16" for s in ("extract", "check-extraction", "tsne-10k", "cli-rank",
                                        "cli-nullspace-knn", "cli-nullspace-linear",
                                        "cli-spectrum", "cli-tsne", "cli-report")},
    "check-diagnostics": "extract",
    "tsne-10k": "extract",
}
INJECTABLE = ("loss", "knn", "rank", "extract", "tsne")
# the GPU performance goals, judged only on a CUDA device without --tiny
GOALS = {
    "ours_over_bf16_reference_r18": (">=", 0.85),
    "ours_over_bf16_reference_r50": (">=", 0.85),
    "lightly_epoch_over_ours_r18": (">=", 3.0),
    "lightly_epoch_over_ours_r50": (">=", 3.0),
    "diagnostics_speedup_over_sklearn": (">=", 20.0),
    "tsne_10k_optimize_s": ("<=", 2.0),
}


class StepFailed(Exception):
    """A step's own verdict: it ran, but a check did not hold (message says which)."""


class StepTimeout(Exception):
    """An in-process step ran past its time."""


# ----------------------------------------------------------------------------- settings
def sizes(tiny: bool) -> dict:
    """Sizes of every step: the GPU run's, or --tiny's (generated images, small models)."""
    if tiny:
        return dict(
            train=["width=0.125", "head.hidden_dim=32", "batch_size=16", "epochs=1",
                   "data_limit=48", "knn_subset=64", "save_every=0"],
            few_steps=["width=0.125", "batch_size=16", "epochs=1", "data_limit=32",
                       "val_fraction=0", "knn_every=0", "save_every=0"],
            first_step=["width=0.125", "batch_size=16", "data_limit=16"],
            limit=128, check_train=128, check_test=64, tsne_check=100, tsne_points=100,
            report_tsne=100,
            bench_train_r18=["--images", "8", "--batch", "4", "--steps", "1", "--warmup", "0",
                             "--workers", "0"],
            bench_train_r50=["--images", "8", "--batch", "4", "--steps", "1", "--warmup", "0",
                             "--workers", "0"],
            features=dict(n_train=500, n_test=100, m=128, d=32),
        )
    return dict(
        train=["width=1", "head.hidden_dim=128", "batch_size=512", "epochs=2", "data_limit=30000",
               "knn_every=2", "save_every=0"],
        few_steps=["width=1", "batch_size=256", "epochs=1", "data_limit=5120", "val_fraction=0",
                   "knn_every=0", "save_every=0"],
        first_step=["width=1", "batch_size=128", "data_limit=128"],
        limit=None, check_train=4000, check_test=1000, tsne_check=300, tsne_points=10000,
        report_tsne=2000,
        bench_train_r18=["--images", "6144", "--batch", "512", "--steps", "6", "--warmup", "2"],
        bench_train_r50=["--images", "3072", "--batch", "256", "--steps", "6", "--warmup", "2"],
        features=dict(n_train=50000, n_test=10000, m=2048, d=128),
    )


# ----------------------------------------------------------------------------- helpers
def _finite_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def compare(checks: dict, name: str, cpu, device, *, rel: float | None = None,
            abs_: float | None = None, equal: bool = False) -> bool:
    """Record one CPU-against-device comparison in ``checks``; True if it holds.

    ``equal``: the two must be identical (ints, lists); otherwise
    |device - cpu| <= abs_ + rel * |cpu| (missing tolerances count as 0).
    """
    if equal:
        ok = cpu == device
        entry = {"cpu": cpu, "device": device, "rule": "equal"}
    else:
        tol = (abs_ or 0.0) + (rel or 0.0) * abs(cpu)
        diff = abs(device - cpu)
        ok = bool(math.isfinite(diff) and diff <= tol)
        entry = {"cpu": cpu, "device": device, "diff": diff, "tol": tol,
                 "rule": f"|device - cpu| <= {abs_ or 0:g} + {rel or 0:g}*|cpu|"}
    entry["ok"] = bool(ok)
    checks[name] = entry
    return bool(ok)


@contextlib.contextmanager
def _alarm(seconds: float):
    """Raise StepTimeout in the main thread after ``seconds`` (in-process steps)."""
    def handler(signum, frame):
        raise StepTimeout(f"ran past its time limit of {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1.0))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _import_bench(name: str):
    """bench/NAME.py as a module (bench/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_acceptance_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def git_state() -> dict:
    """HEAD of the repository and whether the work tree had changes."""
    def git(*a):
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True,
                              timeout=30).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


# ----------------------------------------------------------------------------- the run
class Acceptance:
    """Runs the steps, keeps their records and writes OUT/acceptance.json after each one."""

    def __init__(self, args: argparse.Namespace, steps: list[str]):
        import torch

        self.args = args
        self.out = Path(args.out).resolve()
        self.tiny = args.tiny
        self.size = sizes(args.tiny)
        self.device = torch.device(args.device)
        self.data = args.data
        self.inject = set(args.inject)
        self.steps = steps
        self.records: list[dict] = []
        self.t0 = time.perf_counter()
        self.deadline = self.t0 + args.time_limit
        self.ckpt = self.out / "runs" / "train-simclr-bf16" / "last.pt"
        self.features = None  # (train FeatureSet, test FeatureSet) from the extract step
        self.header = self._header()

    # ------------------------------------------------------------------ environment
    def _header(self) -> dict:
        import torch

        dev = self.device
        return {
            "what": "repdiag GPU acceptance run (bench/gpu_acceptance.py)",
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "device": str(dev),
            "device_name": (torch.cuda.get_device_name(dev) if dev.type == "cuda"
                            else f"{platform.processor() or 'CPU'}, {os.cpu_count()} cores"),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "python": platform.python_version(),
            "host_cores": os.cpu_count(),
            "git": git_state(),
            "tiny": self.tiny,
            "data": self.data,
            "time_limit_s": self.args.time_limit,
            "budgets_s": {s: self.budget(s) for s in self.steps},
            "inject": sorted(self.inject),
        }

    def check_configs(self) -> None:
        """Build every training config of the run (preset + overrides) before any work:
        a key or value the trainer no longer accepts is a UserError naming the step."""
        from repdiag.errors import UserError
        from train.config import load_config

        specs = [(s, *self.train_spec(s)[:2]) for s in self.steps if s.startswith("train-")]
        if "check-first-step-loss" in self.steps:
            specs.append(("check-first-step-loss", "fmnist-tiny", self._first_step_sets("cpu", "fp32")))
        for step, config, sets in specs:
            try:
                load_config(config, sets)
            except UserError as e:
                raise UserError(f"step {step}: {e}") from None

    def budget(self, step: str) -> float:
        """Seconds this step may take (twice that stops it)."""
        return TINY_BUDGET if self.tiny else BUDGETS[step]

    def child_env(self) -> dict:
        """The environment of every child process (and of this one, set in main)."""
        return dict(os.environ)

    # ------------------------------------------------------------------ running
    def run(self) -> dict:
        """Run every step in order, writing the JSON after each; the final document."""
        for step in self.steps:
            rec = {"name": step, "status": None, "seconds": None, "budget_s": self.budget(step),
                   "figures": {}, "checks": {}, "error": None}
            self.records.append(rec)
            need = NEEDS.get(step)
            remaining = self.deadline - time.perf_counter()
            if remaining <= 0:
                rec.update(status="skipped", error=f"not started: the run's time limit of "
                                                   f"{self.args.time_limit:.0f} s was reached")
            elif need and need in self.steps and self._status(need) != "pass":
                rec.update(status="skipped", error=f"needs step {need}, which did not pass")
            else:
                self._run_step(step, rec, min(2 * self.budget(step), remaining))
            print(self._line(rec), flush=True)
            self.write()
        return self.write(final=True)

    def _status(self, step: str) -> str | None:
        return next((r["status"] for r in self.records if r["name"] == step), None)

    def _run_step(self, step: str, rec: dict, timeout: float) -> None:
        fn = getattr(self, "step_" + step.replace("-", "_"))
        t0 = time.perf_counter()
        try:
            with _alarm(timeout):
                fn(rec, timeout)
            failed = [k for k, c in rec["checks"].items() if not c["ok"]]
            if failed:
                raise StepFailed("comparisons that did not hold: " + ", ".join(failed))
            rec["status"] = "pass"
        except (StepFailed, StepTimeout) as e:
            rec.update(status="fail", error=str(e))
        except Exception as e:  # noqa: BLE001 - a broken step is recorded, the others still run
            rec.update(status="fail", error=f"{type(e).__name__}: {' '.join(str(e).split())[:500]}")
        rec["seconds"] = round(time.perf_counter() - t0, 3)
        rec["over_budget"] = rec["seconds"] > rec["budget_s"]

    @staticmethod
    def _line(rec: dict) -> str:
        sec = f"{rec['seconds']:.1f}" if rec["seconds"] is not None else "-"
        text = f"[{rec['status']:>7}] {rec['name']:<22} {sec:>7} s (budget {rec['budget_s']} s)"
        return text + (f"  {rec['error']}" if rec["error"] else "")

    def write(self, final: bool = False) -> dict:
        """OUT/acceptance.json, written whole (temporary file, then rename)."""
        passed = all(r["status"] == "pass" for r in self.records) and (
            len(self.records) == len(self.steps))
        doc = {**self.header,
               "complete": final,
               "passed": passed if final else None,
               "total_seconds": round(time.perf_counter() - self.t0, 3),
               "steps": self.records,
               "figures": {r["name"]: r["figures"] for r in self.records if r["figures"]},
               "goals": self.goals()}
        tmp = self.out / ".acceptance.json.tmp"
        tmp.write_text(json.dumps(doc, indent=1, default=_jsonable) + "\n")
        os.replace(tmp, self.out / "acceptance.json")
        return doc

    def goals(self) -> dict:
        """The GPU performance goals against the figures measured (judged on CUDA, full size)."""
        fig = {r["name"]: r["figures"] for r in self.records}
        values = {
            "ours_over_bf16_reference_r18": fig.get("bench-train-r18", {}).get("ours_over_reference"),
            "ours_over_bf16_reference_r50": fig.get("bench-train-r50", {}).get("ours_over_reference"),
            "lightly_epoch_over_ours_r18": fig.get("bench-train-r18", {}).get("lightly_epoch_over_ours"),
            "lightly_epoch_over_ours_r50": fig.get("bench-train-r50", {}).get("lightly_epoch_over_ours"),
            "diagnostics_speedup_over_sklearn": fig.get("bench-diagnostics", {}).get("speedup_total"),
            "tsne_10k_optimize_s": fig.get("tsne-10k", {}).get("optimize_s"),
        }
        judged = self.device.type == "cuda" and not self.tiny
        out = {}
        for key, (op, target) in GOALS.items():
            v = values[key]
            met = None if v is None or not judged else (v >= target if op == ">=" else v <= target)
            out[key] = {"value": v, "goal": f"{op} {target:g}", "met": met}
        return out

    # ------------------------------------------------------------------ subprocesses
    def _subprocess(self, rec: dict, argv: list[str], timeout: float, log: str) -> str:
        """Run ``argv`` from the repository root; its stdout; a failure raises StepFailed."""
        logs = self.out / "logs"
        logs.mkdir(exist_ok=True)
        rec.setdefault("commands", []).append(" ".join(map(str, argv)))
        t0 = time.perf_counter()
        if self.args.in_process:
            p = _in_process([str(a) for a in argv])
        else:
            try:
                p = subprocess.run([str(a) for a in argv], cwd=ROOT, capture_output=True,
                                   text=True, env=self.child_env(), timeout=max(timeout - 1, 1))
            except subprocess.TimeoutExpired as e:
                (logs / f"{log}.err").write_text(_text(e.stderr))
                raise StepFailed(f"{argv[2] if len(argv) > 2 else argv[0]} ran past "
                                 f"{timeout:.0f} s (log: logs/{log}.err)") from None
        rec["figures"].setdefault("process_s", round(time.perf_counter() - t0, 3))
        (logs / f"{log}.out").write_text(p.stdout)
        (logs / f"{log}.err").write_text(p.stderr)
        if p.returncode:
            last = (p.stderr.strip().splitlines() or ["(no message)"])[-1]
            raise StepFailed(f"exit status {p.returncode}: {last[:400]} (log: logs/{log}.err)")
        return p.stdout

    def _repdiag(self, rec, timeout, *args) -> dict | list:
        """``python -m repdiag ARGS --json``: the parsed JSON it printed."""
        stdout = self._subprocess(rec, [sys.executable, "-m", "repdiag", *args, "--json"],
                                  timeout, rec["name"])
        return json.loads(stdout.strip().splitlines()[-1])

    # ------------------------------------------------------------------ training
    def train_spec(self, step: str) -> tuple[str, list[str], dict]:
        """(preset, every --set of the run, the runtime the trainer must resolve) of a step."""
        cuda = self.device.type == "cuda"
        prec = "bf16" if cuda else "fp32"  # bf16 autocast (what auto picks) is a GPU path
        config, sets, compile_ = {
            "train-simclr-bf16": ("fmnist-tiny", [*self.size["train"], f"precision={prec}"], False),
            "train-simclr-fp32": ("fmnist-tiny", [*self.size["train"], "precision=fp32"], False),
            "train-simclr-compile": ("fmnist-tiny", [*self.size["train"], f"precision={prec}",
                                                     "compile=true"], True),
            "train-bilevel": ("fmnist-tiny", [*self.size["few_steps"], "scheme.kind=bilevel"],
                              False),
            "train-simsiam": ("fmnist-simsiam-tiny", self.size["few_steps"], False),
        }[step]
        expect = {"precision": "fp32" if step == "train-simclr-fp32" else prec,
                  "compile": compile_, "device": str(self.device),
                  "channels_last": cuda, "data_on_device": True}
        return config, [f"data={self.data}", f"device={self.device}", *sets], expect

    def _train(self, rec, timeout) -> None:
        config, sets, expect = self.train_spec(rec["name"])
        run_dir = self.out / "runs" / rec["name"]
        argv = [sys.executable, "-m", "repdiag", "train", "--config", config, "--out", run_dir,
                "--quiet"]
        for s in sets:
            argv += ["--set", s]
        self._subprocess(rec, argv, timeout, rec["name"])
        lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x]
        from repdiag.checkpoint import load_checkpoint

        runtime = load_checkpoint(run_dir / "last.pt").extra.get("runtime", {})
        f = rec["figures"]
        f["epochs"] = len(lines)
        f["images_per_s_each_epoch"] = [round(x["images_per_s"], 1) for x in lines]
        f["images_per_s"] = round(lines[-1]["images_per_s"], 1)  # last epoch: warm, compiled
        f["seconds_each_epoch"] = [round(x["seconds"], 2) for x in lines]
        f["loss_each_epoch"] = [x["loss"] for x in lines]
        for key in ("knn_val", "knn_test"):
            if key in lines[-1]:
                f[key] = lines[-1][key]
        f["runtime"] = runtime
        if not all(math.isfinite(x["loss"]) for x in lines):
            raise StepFailed(f"non-finite loss {f['loss_each_epoch']}")
        wrong = {k: (runtime.get(k), v) for k, v in expect.items() if runtime.get(k) != v}
        if wrong:
            raise StepFailed("the trainer ran otherwise than asked: " + ", ".join(
                f"{k}={got!r} (asked {want!r})" for k, (got, want) in wrong.items()))

    def step_train_simclr_bf16(self, rec, timeout):
        """SimCLR, bf16 autocast on a GPU (fp32 on the CPU): the checkpoint the diagnostics read."""
        self._train(rec, timeout)

    def step_train_simclr_fp32(self, rec, timeout):
        """The same SimCLR training in fp32."""
        self._train(rec, timeout)

    def step_train_simclr_compile(self, rec, timeout):
        """The same SimCLR training with torch.compile of the backbone."""
        self._train(rec, timeout)

    def step_train_bilevel(self, rec, timeout):
        """A few steps of paper G's bilevel scheme (eq. 8)."""
        self._train(rec, timeout)

    def step_train_simsiam(self, rec, timeout):
        """A few steps of SimSiam."""
        self._train(rec, timeout)

    # ------------------------------------------------------------------ first-step loss
    def _first_step_sets(self, device: str, precision: str) -> list[str]:
        return [*self.size["first_step"], f"data={self.data}", f"device={device}",
                f"precision={precision}", "epochs=1", "val_fraction=0", "knn_every=0",
                "save_every=0"]

    def _first_loss(self, device: str, precision: str, tag: str) -> float:
        """The loss of the first SimCLR step (batch and views drawn from the run's seed)."""
        from train.config import load_config
        from train.trainer import Trainer

        cfg = load_config("fmnist-tiny", self._first_step_sets(device, precision))
        tr = Trainer(cfg, self.out / "first-step" / tag, quiet=True)
        v1, v2 = next(iter(tr._epoch_loader(1)))
        return float(tr.scheme.train_step(v1, v2))

    def step_check_first_step_loss(self, rec, timeout):
        """First-step loss on the device (fp32, bf16) against the CPU's fp32 loss."""
        cpu = self._first_loss("cpu", "fp32", "cpu-fp32")
        # bf16 autocast is checked on the CPU too: its autocast runs the same code
        for prec, rel in (("fp32", 2e-3), ("bf16", 3e-2)):
            dev = self._first_loss(str(self.device), prec, f"device-{prec}")
            if "loss" in self.inject:
                dev *= 1.05
            rec["figures"][f"first_loss_{prec}"] = dev
            compare(rec["checks"], f"first_step_loss_{prec}", cpu, dev, rel=rel)
        rec["figures"]["first_loss_cpu_fp32"] = cpu

    # ------------------------------------------------------------------ features
    def step_extract(self, rec, timeout):
        """Train and test features of the checkpoint on the device, timed."""
        from repdiag.features import FeatureSource

        src = FeatureSource(str(self.ckpt), device=str(self.device), limit=self.size["limit"])
        t0 = time.perf_counter()
        tr = src.get("train")
        rec["figures"]["train_s"] = round(time.perf_counter() - t0, 3)
        t0 = time.perf_counter()
        te = src.get("test")
        rec["figures"]["test_s"] = round(time.perf_counter() - t0, 3)
        self.features = (tr, te)
        rec["figures"].update(n_train=len(tr.y), n_test=len(te.y), dim_h=tr.h.shape[1],
                              dim_z=None if tr.z is None else tr.z.shape[1])
        n = len(tr.y) + len(te.y)
        rec["figures"]["images_per_s"] = round(n / (rec["figures"]["train_s"] + rec["figures"]["test_s"]), 1)

    def step_check_extraction(self, rec, timeout):
        """Features of the same test images extracted on the device and on the CPU."""
        import repdiag

        n = min(256, self.size["check_test"] * 8)
        cpu = repdiag.extract(str(self.ckpt), split="test", device="cpu", cache=False, limit=n)
        dev = repdiag.extract(str(self.ckpt), split="test", device=str(self.device), cache=False,
                              limit=n)
        h_dev = dev.h.clone()
        if "extract" in self.inject:
            h_dev[0] += 0.1 * h_dev.abs().max()
        scale = float(cpu.h.abs().max())
        # float32 on both; cuDNN may pick TF32 convolutions (10-bit mantissa): 1e-2 of the scale
        compare(rec["checks"], "h_max_abs_diff_over_max_h", 0.0,
                float((h_dev - cpu.h).abs().max()) / scale, abs_=1e-2)
        compare(rec["checks"], "z_max_abs_diff_over_max_z", 0.0,
                float((dev.z - cpu.z).abs().max() / cpu.z.abs().max()), abs_=1e-2)
        rec["figures"]["images"] = n

    def step_check_diagnostics(self, rec, timeout):
        """Every diagnostic on a feature subset, on the device and on the CPU."""
        import torch

        import repdiag

        tr, te = self.features
        a, b = self.size["check_train"], self.size["check_test"]
        htr, ytr, hte, yte = tr.h[:a], tr.y[:a], te.h[:b], te.y[:b]
        ztr, zte = tr.z[:a], te.z[:b]
        dev = self.device
        c = rec["checks"]
        on = {"cpu": torch.device("cpu"), "device": dev}
        res: dict[str, dict] = {}
        for side, d in on.items():
            r = res[side] = {}
            H, Z, A = htr.to(d), ztr.to(d), tr.weight.to(d)
            r["rank_h"] = repdiag.rank(H).rank
            r["rank_z"] = repdiag.rank(Z).rank
            r["eig_h"] = torch.as_tensor(repdiag.spectrum(H).eigenvalues).double().cpu()
            ns = repdiag.nullspace(H, A)
            r["head_rank"], r["energy_range"] = int(ns.head_rank), float(ns.energy_range)
            split = repdiag.knn_probe_split(H, ytr.to(d), hte.to(d), yte.to(d), ns.basis)
            for k, v in split.items():
                r[f"knn_{k}"] = v.predictions.cpu()
            r["knn_z"] = repdiag.knn_probe(Z, ytr.to(d), zte.to(d), yte.to(d)).predictions.cpu()
            r["linear_h"] = repdiag.linear_probe(H, ytr.to(d), hte.to(d), yte.to(d)).accuracy
            _sync(dev)
        if "rank" in self.inject:
            res["device"]["rank_h"] += 1
        if "knn" in self.inject:
            res["device"]["knn_h"][0] = (res["device"]["knn_h"][0] + 1) % (int(ytr.max()) + 1)
        for key in ("rank_h", "rank_z", "head_rank"):
            compare(c, key, res["cpu"][key], res["device"][key], equal=True)
        e_cpu, e_dev = res["cpu"]["eig_h"], res["device"]["eig_h"]
        compare(c, "spectrum_h_max_diff_over_top", 0.0,
                float((e_dev - e_cpu).abs().max() / e_cpu.max()), abs_=1e-5)
        compare(c, "energy_range", res["cpu"]["energy_range"], res["device"]["energy_range"],
                abs_=1e-5)
        for key in ("knn_h", "knn_h_r", "knn_h_n", "knn_z"):
            if key not in res["cpu"]:
                continue
            differ = int((res["cpu"][key] != res["device"][key]).sum())
            compare(c, f"{key}_predictions_differing", 0, differ, equal=True)
        compare(c, "linear_h_accuracy", res["cpu"]["linear_h"], res["device"]["linear_h"],
                abs_=0.01)
        # t-SNE: the exact-gradient torch optimiser on both; the final KL within 5 %
        n = min(self.size["tsne_check"], len(te.y))
        kl = {}
        for side, d in on.items():
            r = repdiag.tsne(te.h[:n], device=str(d), backend="torch")
            kl[side] = float(r.params["kl_divergence"])
        if "tsne" in self.inject:
            kl["device"] *= 1.2
        compare(c, "tsne_kl", kl["cpu"], kl["device"], rel=0.05)
        # above exact_limit points a cuda request goes to openTSNE on the host (not a CPU one)
        fb = repdiag.tsne(te.h[:n], device=str(dev), backend="torch", exact_limit=n - 1,
                          n_iter=10, early_exaggeration_iter=10)
        want = "opentsne" if dev.type == "cuda" else "torch"
        if fb.params["backend"] != want:
            raise StepFailed(f"t-SNE above exact_limit on {dev} ran {fb.params['backend']}, "
                             f"expected {want}")
        rec["figures"].update(n_train=a if a <= len(tr.y) else len(tr.y), n_test=len(yte),
                              tsne_points=n, fallback_backend=fb.params["backend"],
                              rank_h=res["cpu"]["rank_h"], rank_z=res["cpu"]["rank_z"])

    def step_tsne_10k(self, rec, timeout):
        """The exact-gradient torch t-SNE of (up to) 10,000 test features on the device."""
        import repdiag

        tr, te = self.features
        n = min(self.size["tsne_points"], len(te.y))
        t0 = time.perf_counter()
        r = repdiag.tsne(te.h[:n], te.y[:n], device=str(self.device), backend="torch")
        rec["figures"].update(points=n, seconds=round(time.perf_counter() - t0, 3),
                              optimize_s=r.params.get("optimize_seconds"),
                              kl_divergence=r.params.get("kl_divergence"),
                              backend=r.params["backend"])

    # ------------------------------------------------------------------ the CLI
    def _cli_common(self, name: str) -> list[str]:
        args = [self.ckpt, "--device", str(self.device), "--out", self.out / "cli" / name]
        if self.size["limit"]:
            args += ["--limit", str(self.size["limit"])]
        return args

    def step_cli_rank(self, rec, timeout):
        """``repdiag rank --device``."""
        r = self._repdiag(rec, timeout, "rank", *self._cli_common("rank"))
        rec["figures"].update(rank_h=r["h"]["rank"], rank_z=r["z"]["rank"],
                              rank_deficit=r["rank_deficit"],
                              effective_rank_h=r["h"]["effective_rank"],
                              effective_rank_z=r["z"]["effective_rank"])

    def _cli_nullspace(self, rec, timeout, probe: str):
        r = self._repdiag(rec, timeout, "nullspace", *self._cli_common(f"nullspace-{probe}"),
                          "--probe", probe)
        rec["figures"].update({f"accuracy_{k}": v for k, v in r["accuracy"].items()})
        rec["figures"].update(head_rank=r["head_rank"], energy_range=r["energy_range"],
                              residual=r["residual"])

    def step_cli_nullspace_knn(self, rec, timeout):
        """``repdiag nullspace --probe knn --device``."""
        self._cli_nullspace(rec, timeout, "knn")

    def step_cli_nullspace_linear(self, rec, timeout):
        """``repdiag nullspace --probe linear --device``."""
        self._cli_nullspace(rec, timeout, "linear")

    def step_cli_spectrum(self, rec, timeout):
        """``repdiag spectrum --device``."""
        r = self._repdiag(rec, timeout, "spectrum", *self._cli_common("spectrum"))
        rec["figures"].update(eigenvalues_h=len(r["h"]), top_eigenvalue_h=r["h"][0],
                              eigenvalues_z=len(r["z"]), top_eigenvalue_z=r["z"][0])

    def step_cli_tsne(self, rec, timeout):
        """``repdiag tsne --backend torch --device`` on 10,000 test points."""
        r = self._repdiag(rec, timeout, "tsne", *self._cli_common("tsne"), "--backend", "torch",
                          "--on", "h", "--max-points", str(self.size["tsne_points"]))
        rec["figures"].update(points=r["h"]["n"], backend=r["h"]["backend"],
                              kl_divergence=r["h"]["kl_divergence"])

    def step_cli_report(self, rec, timeout):
        """``repdiag report --device``: the HTML page must be written."""
        r = self._repdiag(rec, timeout, "report", *self._cli_common("report"),
                          "--tsne-points", str(self.size["report_tsne"]))
        html = Path(r["html"])
        if not html.is_file() or html.stat().st_size == 0:
            raise StepFailed(f"report: {html} missing or empty")
        rec["figures"].update(html_bytes=html.stat().st_size, report_figures=r["figures"])

    # ------------------------------------------------------------------ benchmarks
    def _bench_train(self, rec, timeout, backbone: str, extra: list[str]):
        js = self.out / f"{rec['name']}.json"
        self._subprocess(rec, [sys.executable, BENCH / "bench_train.py", "--device", str(self.device),
                               "--backbone", backbone, "--data", "synthetic", *extra,
                               "--json", js], timeout, rec["name"])
        r = json.loads(js.read_text())
        f = rec["figures"]
        for name, v in r["results"].items():
            f[f"{name}_pairs_per_s"] = round(v["pairs_per_s"], 2)
            f[f"{name}_seconds_per_epoch"] = round(v["seconds_per_epoch"], 3)
        f["ours_over_reference"] = r["ratios"].get("ours_pairs_per_s_over_reference")
        f["lightly_epoch_over_ours"] = r["ratios"].get("lightly_epoch_over_ours_epoch")
        f["ours_runtime"] = r["results"]["ours"].get("trainer_runtime")
        f["batch"], f["timed_steps"] = r["batch"], r["timed_steps"]

    def step_bench_train_r18(self, rec, timeout):
        """bench_train.py, ResNet-18, reduced steps."""
        self._bench_train(rec, timeout, "resnet18", self.size["bench_train_r18"])

    def step_bench_train_r50(self, rec, timeout):
        """bench_train.py, ResNet-50, reduced steps."""
        self._bench_train(rec, timeout, "resnet50", self.size["bench_train_r50"])

    def step_bench_diagnostics(self, rec, timeout):
        """bench_diagnostics.py's suite: repdiag on the device against scikit-learn on the host."""
        bd = _import_bench("bench_diagnostics")
        s = self.size["features"]
        htr, ytr, hte, yte, a = bd.make_features(s["n_train"], s["n_test"], s["m"], s["d"], 10)
        tsne_n = min(10_000, s["n_test"])
        d = self.device
        tr_, tb = bd.Timer(), bd.Timer()
        # features and head on the device; the labels stay on the host (every probe moves them
        # to the features' device; the t-SNE map's score is computed on the host)
        acc_r = bd.run_repdiag(htr.to(d), ytr, hte.to(d), yte, a.to(d), tsne_n, True, tr_,
                               tsne_device=str(d))
        acc_b = bd.run_baseline(htr, ytr, hte, yte, a, tsne_n, True, tb)
        f = rec["figures"]
        f.update(n_train=s["n_train"], n_test=s["n_test"], dim=s["m"])
        f["repdiag_s"] = {k: round(v, 3) for k, v in tr_.times.items()}
        f["sklearn_s"] = {k: round(v, 3) for k, v in tb.times.items()}
        f["repdiag_total_s"] = round(sum(tr_.times.values()), 3)
        f["sklearn_total_s"] = round(sum(tb.times.values()), 3)
        f["speedup_total"] = sum(tb.times.values()) / sum(tr_.times.values())
        f["speedup_each"] = {k: tb.times[k] / tr_.times[k] for k in tb.times}
        f["accuracy_repdiag"], f["accuracy_sklearn"] = acc_r, acc_b
        # the two routes compute the same probes: kNN identical up to one test point,
        # linear probes within 0.5 pt (two solvers of the same objective)
        for k in acc_b:
            if k.startswith("knn"):
                compare(rec["checks"], f"{k}_vs_sklearn", acc_b[k], acc_r[k],
                        abs_=max(0.002, 1.0 / s["n_test"]) + 1e-9)
            elif k.startswith("linear"):
                compare(rec["checks"], f"{k}_vs_sklearn", acc_b[k], acc_r[k],
                        abs_=max(0.005, 2.0 / s["n_test"]) + 1e-9)


def _in_process(argv: list[str]) -> subprocess.CompletedProcess:
    """What ``argv`` (``python -m repdiag ...`` or ``python bench/bench_train.py ...``) would
    do, run in this process: its exit status and what it printed (``--in-process``)."""
    import io

    from repdiag.errors import UserError

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            if argv[1:3] == ["-m", "repdiag"]:
                from repdiag.cli import main as cli_main

                rc = cli_main(argv[3:])
            elif Path(argv[1]) == BENCH / "bench_train.py":
                _import_bench("bench_train").main(argv[2:])
                rc = 0
            else:  # pragma: no cover - every command the steps run is one of the two
                raise ValueError(f"cannot run {argv[1]} in-process")
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            rc = UserError.exit_code
    return subprocess.CompletedProcess(argv, rc, out.getvalue(), err.getvalue())


def _text(x) -> str:
    return x.decode(errors="replace") if isinstance(x, bytes) else (x or "")


def _jsonable(x):
    try:
        import torch

        if isinstance(x, torch.Tensor):
            return x.tolist()
    except ImportError:  # pragma: no cover
        pass
    if hasattr(x, "item"):
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


# ----------------------------------------------------------------------------- entry
def build_parser() -> argparse.ArgumentParser:
    """The command-line options (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    ap.add_argument("--out", required=True, help="output folder: must not exist or be empty")
    ap.add_argument("--tiny", action="store_true",
                    help="small models and data: every step in a minute or two on a CPU")
    ap.add_argument("--data", default="auto", choices=("auto", "fashion-mnist", "synthetic"),
                    help="training images (auto: Fashion-MNIST if found, else generated; "
                         "--tiny: generated)")
    ap.add_argument("--time-limit", type=float, default=None,
                    help="no step starts after this many seconds (default 480; 1800 with --tiny)")
    ap.add_argument("--only", default=None, help="comma list of steps to run (default: all)")
    ap.add_argument("--inject", default="",
                    help=f"comma list of comparisons to corrupt on the device side "
                         f"({', '.join(INJECTABLE)}): the checks must then fail")
    ap.add_argument("--in-process", action="store_true",
                    help="run the repdiag commands and bench_train in this process instead of "
                         "one process each (faster start-up; no per-command timeout)")
    ap.add_argument("--keep", action="store_true",
                    help="keep the checkpoints and the feature cache under OUT")
    return ap


class BadOption(Exception):
    """An option that is wrong whatever the machine (found before torch is imported)."""


def check_options(args: argparse.Namespace) -> list[str]:
    """The options that need no import checked; the steps to run. Raises BadOption."""
    args.inject = [x.strip() for x in args.inject.split(",") if x.strip()]
    bad = [x for x in args.inject if x not in INJECTABLE]
    if bad:
        raise BadOption(f"--inject: unknown {', '.join(bad)}; known: {', '.join(INJECTABLE)}")
    steps = list(STEPS)
    if args.only:
        asked = [x.strip() for x in args.only.split(",") if x.strip()]
        bad = [x for x in asked if x not in STEPS]
        if bad:
            raise BadOption(f"--only: unknown step(s) {', '.join(bad)}; known: {', '.join(STEPS)}")
        for s in asked:
            if NEEDS.get(s) and NEEDS[s] not in asked:
                raise BadOption(f"--only: step {s} needs step {NEEDS[s]}; add it")
        steps = [s for s in STEPS if s in asked]
    if args.time_limit is None:
        args.time_limit = 1800.0 if args.tiny else 480.0
    if not args.time_limit > 0:
        raise BadOption(f"--time-limit must be positive, got {args.time_limit}")
    return steps


def check_machine(args: argparse.Namespace, steps: list[str]) -> None:
    """The options checked against this machine: device, data, lightly. Raises UserError."""
    from repdiag.devices import check_device
    from repdiag.errors import UserError

    check_device(args.device)
    if args.data == "auto":
        args.data = "synthetic" if args.tiny else ("fashion-mnist" if _fashion_found() else "synthetic")
    elif args.data == "fashion-mnist" and not _fashion_found():
        raise UserError("--data fashion-mnist: no Fashion-MNIST files found ($REPDIAG_DATA/"
                        "fashion-mnist or the Debian package dataset-fashion-mnist); "
                        "use --data synthetic")
    if any(s.startswith("bench-train") for s in steps):
        import importlib.util

        if importlib.util.find_spec("lightly") is None:
            raise UserError("the bench-train steps need lightly (its SimCLR loop is the baseline); "
                            "install it, or leave them out with --only")


def _fashion_found() -> bool:
    from repdiag.data.paths import candidate_dirs
    from repdiag.data.sources import FASHION_MNIST_SYSTEM_DIR, _fashion_dir

    dirs = candidate_dirs("fashion-mnist", None, (FASHION_MNIST_SYSTEM_DIR,))
    return _fashion_dir(dirs) is not None


def _isolate(out: Path, tiny: bool) -> None:
    """Point every cache and temporary folder of this process and its children under OUT.

    With ``tiny`` every process computes on one CPU and one thread (small tensors on a
    shared CPU: thread start-up and spinning cost more than they bring), and
    torch.compile's inductor code generation, which takes minutes on a CPU, is
    replaced by AOT autograd with eager graphs (dynamo's tracing still runs).
    """
    tmp = out / "tmp"
    for sub in ("mpl", "inductor", "triton", "xdg", "nv"):
        (tmp / sub).mkdir(parents=True, exist_ok=True)
    os.environ.update({
        "REPDIAG_CACHE": str(out / "cache"),
        "REPDIAG_NO_DOWNLOAD": "1",
        "MPLCONFIGDIR": str(tmp / "mpl"),
        "TORCHINDUCTOR_CACHE_DIR": str(tmp / "inductor"),
        "TRITON_CACHE_DIR": str(tmp / "triton"),
        "XDG_CACHE_HOME": str(tmp / "xdg"),
        "CUDA_CACHE_PATH": str(tmp / "nv"),
        "TMPDIR": str(tmp),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONPATH": os.pathsep.join(
            [str(ROOT), *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]]),
    })
    if tiny:
        # one CPU and one thread: t-SNE asks for os.cpu_count() OpenMP threads, which spin
        # for seconds per call on a busy machine (measured 18 s against 1.8 s for 100 points)
        with contextlib.suppress(AttributeError, OSError):
            os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        os.environ.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                           "OPENBLAS_NUM_THREADS": "1",
                           "TORCH_COMPILE_OVERRIDE_BACKENDS": ">=0:aot_eager"})
    tempfile.tempdir = None  # re-read TMPDIR
    sys.dont_write_bytecode = True


def _tidy(out: Path, keep: bool) -> None:
    """Remove temporary files; unless ``keep``, the checkpoints and the feature cache."""
    shutil.rmtree(out / "tmp", ignore_errors=True)
    if keep:
        return
    shutil.rmtree(out / "cache", ignore_errors=True)
    for pattern in ("runs/**/*.pt", "first-step/**/*.pt"):
        for p in out.glob(pattern):
            p.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    """Run the acceptance steps; exit status 0 only if every step passed."""
    args = build_parser().parse_args(argv)
    out = Path(args.out).resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        print(f"gpu_acceptance: --out {args.out}: exists and is not an empty folder; give a new one",
              file=sys.stderr)
        return 2
    try:
        steps = check_options(args)
    except BadOption as e:
        print(f"gpu_acceptance: {e}", file=sys.stderr)
        return 2
    created = not out.exists()
    _isolate(out, args.tiny)  # before the first import of torch, matplotlib or repdiag
    sys.path.insert(0, str(ROOT))
    from repdiag.errors import UserError

    def refuse(e: UserError) -> int:  # one line, and nothing left of what this run created
        shutil.rmtree(out / "tmp", ignore_errors=True)
        if created:
            shutil.rmtree(out, ignore_errors=True)
        print(f"gpu_acceptance: {' '.join(str(e).split())}", file=sys.stderr)
        return UserError.exit_code

    try:
        check_machine(args, steps)
    except UserError as e:
        return refuse(e)
    acc = Acceptance(args, steps)
    try:
        acc.check_configs()
    except UserError as e:
        return refuse(e)
    print(f"gpu_acceptance: {len(steps)} steps on {acc.header['device_name']} ({args.device}), "
          f"torch {acc.header['torch']}, CUDA {acc.header['cuda']}, data {args.data}, "
          f"time limit {args.time_limit:.0f} s -> {out / 'acceptance.json'}", flush=True)
    try:
        doc = acc.run()
    finally:
        _tidy(out, args.keep)
    failed = [r["name"] for r in doc["steps"] if r["status"] != "pass"]
    print(f"gpu_acceptance: {'PASS' if doc['passed'] else 'FAIL'} in {doc['total_seconds']:.0f} s"
          + (f"; not passed: {', '.join(failed)}" if failed else ""), flush=True)
    for key, g in doc["goals"].items():
        if g["value"] is not None:
            print(f"  goal {key}: {g['value']:.3g} ({g['goal']}; met: {g['met']})")
    return 0 if doc["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
