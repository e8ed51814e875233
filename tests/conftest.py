"""Shared test fixtures: repository paths and the real reference data in ../shared/data."""

import shutil
from pathlib import Path

import pytest

from sedlib.config import load_config

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
# What `snakemake` needs to run the workflow from another folder (results then land in that folder).
WORKFLOW_PARTS = ("Snakefile", "rules", "envs", "workflow_config.yaml", "docs")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


def published_geometry(config: dict) -> dict:
    """``config`` (a loaded workflow config) with the published ATST-SED CRNN input geometry: 128 mels at a 16 ms
    hop, time pooling 4 (10 s: 626 mel frames -> 156 output frames of 64 ms), with slim widths for speed.

    Tests of frame counts, parity and windowing use it; the embedded default itself feeds the CRNN 32 mels at a
    64 ms hop (workflow_config.yaml), which gives the same 64 ms output frames.
    """
    published = load_config(REPO / "configs" / "desed.yaml")
    config["frontends"]["crnn"] = published["frontends"]["crnn"]
    config["model"]["crnn"].update(pooling=published["model"]["crnn"]["pooling"], filters=[4, 8, 12, 16, 16, 16, 16])
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
    import torch

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
