"""Shared test fixtures: repository paths and the real reference data in ../shared/data."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sedlib.config import load_config

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
# What `snakemake` needs to run the workflow from another folder (results then land in that folder).
WORKFLOW_PARTS = ("Snakefile", "rules", "envs", "workflow_config.yaml", "docs")


# Every job of a workflow copy's default-target DAG: [rule, sorted inputs, [[output, is it a directory()], ...]].
# Snakemake has no CLI listing that carries the directory flag, so this uses its Python API and the DAG it builds
# (internal names of the pinned Snakemake 9.27.1).
DAG_JOBS = """
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import DAGSettings, OutputSettings, Quietness, ResourceSettings

root = Path(sys.argv[1]).resolve()
with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
    workflow_api = api.workflow(resource_settings=ResourceSettings(cores=1), snakefile=root / "Snakefile", workdir=root)
    workflow_api.dag(DAGSettings())
    workflow = workflow_api._workflow
    workflow._prepare_dag(forceall=False, ignore_incomplete=True, lock_warn_only=True)
    workflow._build_dag()
    print(json.dumps([[job.rule.name, sorted(map(str, job.input)), [[str(f), bool(f.is_directory)] for f in job.output]]
                      for job in workflow.dag.jobs]))
"""


def dag_jobs(root: Path, timeout: int = 300) -> list[tuple[str, list[str], list[tuple[str, bool]]]]:
    """(rule, inputs, [(output, is_directory)]) of every job that ``root``'s default target needs."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run([sys.executable, "-c", DAG_JOBS, str(root)], cwd=root, env=env, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [(rule, inputs, [tuple(out) for out in outputs])
            for rule, inputs, outputs in json.loads(proc.stdout.strip().splitlines()[-1])]  # fmt: skip


@pytest.fixture()
def one_thread():
    """The machine is shared: one intra-op thread keeps training runs fast and reproducible."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


def published_geometry(config: dict) -> dict:
    """``config`` (a loaded workflow config) with the published ATST-SED CRNN input geometry: 128 mels at a 16 ms
    hop, time pooling 4 (10 s: 626 mel frames -> 156 output frames of 64 ms), the published 2 BiGRU layers, with slim
    widths for speed.

    Tests of frame counts, parity and windowing use it; the embedded default itself feeds the CRNN 32 mels at a
    64 ms hop (workflow_config.yaml), which gives the same 64 ms output frames.
    """
    published = load_config(REPO / "configs" / "desed.yaml")
    config["frontends"]["crnn"] = published["frontends"]["crnn"]
    config["model"]["crnn"].update(pooling=published["model"]["crnn"]["pooling"], filters=[4, 8, 12, 16, 16, 16, 16],
                                   rnn_layers=published["model"]["crnn"]["rnn_layers"])
    return config


@pytest.fixture()
def published_config() -> dict:
    """The embedded workflow config with the published CRNN input geometry (``published_geometry``)."""
    return published_geometry(load_config(REPO / "workflow_config.yaml"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Real DESED metadata and recordings (MIT, from ATST-SED); CI clones the repo with shared/ beside it."""
    if not SHARED_DATA.is_dir():
        raise FileNotFoundError(f"reference data expected at {SHARED_DATA} (shared/ beside the checkout)")
    return SHARED_DATA


def _copy_workflow(dest: Path) -> Path:
    """Make ``dest`` a runnable copy of the workflow and return it: its files copied, the sedlib package linked.

    The rules put the workflow folder on PYTHONPATH, so ``python -m sedlib`` in a job imports the linked
    package (this checkout's code) and the Snakefile finds the config schema under sedlib/schemas.
    """
    dest.mkdir(parents=True, exist_ok=True)
    for part in WORKFLOW_PARTS:
        src, dst = REPO / part, dest / part
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    (dest / "sedlib").symlink_to(REPO / "sedlib", target_is_directory=True)
    return dest


@pytest.fixture(scope="session")
def copy_workflow():
    """Function ``dest -> dest`` that copies the workflow into ``dest`` (never run snakemake in the repo)."""
    return _copy_workflow


@pytest.fixture(scope="session")
def random_model_file(tmp_path_factory) -> Path:
    """model.pt of the embedded config's CRNN + ATST-Frame, randomly initialised (seeded), student != teacher."""

    from sedlib.config import load_config
    from sedlib.models import build_sed_model
    from sedlib.models.checkpoint import save_sed_model

    config = published_geometry(load_config(REPO / "workflow_config.yaml"))
    classes = config["datasets"]["desed"]["classes"]
    torch.manual_seed(0)
    student, teacher = build_sed_model(config, len(classes)), build_sed_model(config, len(classes))
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_sed_model(path, student, teacher, config, classes, {"test": "random initialisation"})
    return path
