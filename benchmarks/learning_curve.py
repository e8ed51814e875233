"""Learning curve of the embedded default: a scored split's PSDS1 / PSDS2 against optimizer steps and wall time.

Re-runs one member's four training jobs exactly as the workflow runs them (the commands come from
``snakemake --dry-run --printshellcmds --force`` on a finished run): iteration 1 stage 1 and stage 2, then
iteration 2 stage 1 and stage 2, which distil the finished run's iteration-1 ensemble pseudo-labels. Each job
trains into a scratch folder (the run's results are not touched); stage 2 starts from the finished run's stage-1
model, as the workflow's job does. Every ``--every`` optimizer steps (and at the end) the teacher is scored on
the split's audio, windowed as ``score`` does, median-filtered with ``evaluation.median_window``.

This is a measurement, not a selection: hyper-parameters were chosen on the validation split (synth_val).
The wall-time axis counts training only (scoring for the curve is excluded).

    python benchmarks/learning_curve.py --workdir . --member seed1 --split desed/devtest --every 20

Writes ``benchmarks/results/learning_curve.json`` and ``docs/learning_curve.png``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import tempfile
import time
from pathlib import Path

import lightning as L
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from sedlib.config import load_config, output_classes  # noqa: E402
from sedlib.evaluation.metrics import SCENARIOS, clips_with_events, psds, split_truth  # noqa: E402
from sedlib.evaluation.postprocess import postprocess_tables, select_classes  # noqa: E402
from sedlib.evaluation.scoring import clip_id, load_wave, predict_logits, read_split_durations, tables_from_logits  # noqa: E402
from sedlib.features.frontends import build_frontends  # noqa: E402
from sedlib.io import write_json  # noqa: E402
from sedlib.training.run import train  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PHASES = [(1, 1), (1, 2), (2, 1), (2, 2)]  # (iteration, stage)


def workflow_train_command(workdir: Path, iteration: int, stage: int, member: str) -> list[str]:
    """The ``python -m sedlib train ...`` argument list the workflow runs for this job."""
    target = f"results/iter{iteration}/stage{stage}/{member}/model.pt"
    out = subprocess.run(["snakemake", target, "--dry-run", "--printshellcmds", "--force"], cwd=workdir,
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    for line in out.splitlines():
        if "python -m sedlib train" in line:
            args = shlex.split(line[line.index("python -m sedlib train") :])
            return args[: args.index(">")] if ">" in args else args
    raise RuntimeError(f"no training command for {target} in the dry run of {workdir}")


class ScoredSplit:
    """A scored split's audio (16 kHz), ground truth and durations, scored with a model's teacher."""

    def __init__(self, workdir: Path, config: dict, ref: str):
        dataset, split = ref.split("/")
        cfg = config["datasets"][dataset]
        root = workdir / "results" / "data" / dataset
        raw = root / "raw" if cfg["source"] == "synthetic" else Path(cfg["root"])
        durations_tsv = root / split / "durations.tsv"
        durations = read_split_durations(durations_tsv)
        # ground truth, scored classes and their median windows as `evaluate` reads them; the model's outputs are
        # the union of every dataset's classes
        truth = split_truth(ref, {"metadata": raw / cfg["splits"][split]["metadata"], "durations": durations_tsv}, config)
        self.outputs, self.classes, self.median_window = output_classes(config), truth.classes, truth.windows
        self.window_s, self.hop_s = config["evaluation"]["window_seconds"], config["evaluation"]["hop_seconds"]
        self.durations = durations
        self.ground_truth, self.clip_durations = clips_with_events(
            truth.ground_truth, {clip_id(k): v for k, v in durations.items()})
        audio = root / split / "audio_16k"
        self.waves = {name: load_wave(audio / name, config["audio"]["sample_rate"]) for name in durations}

    @torch.inference_mode()
    def psds(self, model: torch.nn.Module, frontends, frame_hop: float) -> dict[str, float]:
        was_training = model.training
        model.eval()
        names = list(self.waves)
        logits = [predict_logits(model, frontends, self.waves[n], self.window_s, self.hop_s, torch.device("cpu"))
                  for n in names]  # fmt: skip
        model.train(was_training)
        tables = tables_from_logits(names, logits, self.durations, self.outputs, frame_hop)
        tables = {c: select_classes(tables[c], self.classes) for c in self.ground_truth}
        tables = postprocess_tables(tables, self.median_window)
        return {name: psds(tables, self.ground_truth, self.clip_durations, s).value for name, s in SCENARIOS.items()}


class Curve(L.Callback):
    """Scores the teacher every ``every`` optimizer steps and at the end; training seconds exclude scoring."""

    def __init__(self, split: ScoredSplit, every: int, label: str):
        self.split, self.every, self.label = split, every, label
        self.points: list[dict] = []
        self.train_seconds, self._since, self._last_step = 0.0, None, -1

    def _score(self, trainer: L.Trainer, module) -> None:
        if trainer.global_step == self._last_step:
            return
        self._last_step = trainer.global_step
        frontends = build_frontends(module.config["frontends"])
        frame_hop = trainer.datamodule.geometry.frame_hop
        values = self.split.psds(module.sed_teacher, frontends, frame_hop)
        self.points.append({"step": trainer.global_step, "train_seconds": round(self.train_seconds, 2), **values})
        print(f"{self.label} step {trainer.global_step} train {self.train_seconds:.0f} s "
              f"PSDS1 {values['psds1']:.3f} PSDS2 {values['psds2']:.3f}", flush=True)  # fmt: skip

    def on_train_start(self, trainer, module) -> None:
        self._score(trainer, module)

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._since = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.train_seconds += time.perf_counter() - self._since
        if trainer.global_step % self.every == 0:
            self._score(trainer, module)

    def on_train_end(self, trainer, module) -> None:
        self._score(trainer, module)


def run(workdir: Path, member: str, split_ref: str, every: int) -> dict:
    config = load_config(workdir / "workflow_config.yaml")
    split = ScoredSplit(workdir, config, split_ref)
    phases = []
    with tempfile.TemporaryDirectory() as scratch:
        for iteration, stage in PHASES:
            args = workflow_train_command(workdir, iteration, stage, member)
            value = {args[i]: args[i + 1] for i in range(len(args) - 1)}
            torch.set_num_threads(int(value["--threads"]))
            label = f"iteration {iteration} stage {stage}"
            curve = Curve(split, every, label)
            started = time.perf_counter()
            inputs = {k: v if k == "splits" else str(workdir / v) for k, v in json.loads(value["--inputs-json"]).items()}
            for entry in inputs["splits"]:
                entry.update({k: str(workdir / v) for k, v in entry.items()
                              if k not in ("dataset", "split", "role", "labels")})  # fmt: skip
            train(json.loads(value["--config-json"]), inputs, Path(scratch) / f"iter{iteration}_stage{stage}",
                  iteration, callbacks=[curve])  # fmt: skip
            phases.append({"iteration": iteration, "stage": stage, "label": label, "points": curve.points,
                           "job_seconds": round(time.perf_counter() - started, 1)})  # fmt: skip
    return {"member": member, "split": split_ref, "every": every, "threads": int(value["--threads"]), "phases": phases,
            "torch": torch.__version__}  # fmt: skip


def plot(result: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for metric, ax in zip(("psds1", "psds2"), axes):
        steps_offset = seconds_offset = 0
        for phase in result["phases"]:
            pts = phase["points"]
            x = [steps_offset + p["step"] for p in pts]
            ax.plot(x, [p[metric] for p in pts], marker="o", ms=3, label=phase["label"])
            steps_offset, seconds_offset = x[-1], seconds_offset + pts[-1]["train_seconds"]
        ax.set_xlabel("optimizer steps (phases chained)")
        ax.set_ylabel(f"{result['split']} {metric.upper()}")
        ax.grid(alpha=0.3)
    total = sum(p["points"][-1]["train_seconds"] for p in result["phases"])
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Embedded default, member {result['member']}: teacher on {result['split']} "
                 f"({total:.0f} s of training, {result['threads']} thread)", fontsize=10)  # fmt: skip
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=REPO, help="a workflow folder with a finished run")
    parser.add_argument("--member", default="seed1")
    parser.add_argument("--split", default="desed/devtest", help="dataset/split scored along the curve")
    parser.add_argument("--every", type=int, default=20, help="optimizer steps between two scorings")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "learning_curve.json")
    parser.add_argument("--plot", type=Path, default=REPO / "docs" / "learning_curve.png")
    args = parser.parse_args()
    result = run(args.workdir.resolve(), args.member, args.split, args.every)
    write_json(args.out, result)
    plot(result, args.plot)
    print(f"wrote {args.out} and {args.plot}")


if __name__ == "__main__":
    main()
