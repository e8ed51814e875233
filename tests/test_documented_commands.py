"""Every `snakemake ...` command shown in README.md, docs/*.md, the Snakefile header and the profiles' headers
parses with Snakemake's own argument parser, with its targets as targets (not swallowed by a multi-value option
such as --resources); those that need no cluster, real data or placeholder values also dry-run (`-n`)."""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PLACEHOLDER = re.compile(r"\.\.\.|\b[A-Z][A-Z_]{2,}\b")  # '...', TARGET, FILE, RULE: words to fill in
# a SLURM cluster, real DESED, your own audio, a finished run
PARSE_ONLY = ("profiles/slurm", "configs/desed.yaml", "configs/own_data_example.yaml", "--report")


def shell_commands(text: str) -> list[str]:
    """`snakemake ...` commands of shell text: continuations joined, split at && / ;, comments dropped."""
    commands = []
    for line in text.replace("\\\n", " ").splitlines():
        for part in re.split(r"&&|;", line):
            part = re.sub(r"\s#\s.*$", "", part.strip().lstrip("#"))  # a comment line, a trailing comment
            command = re.search(r"(?:^|\s)(snakemake\s.*)", part)  # also '# GPU box: snakemake ...'
            if command:
                commands.append(" ".join(command.group(1).split()))
    return commands


def documented_commands() -> list[tuple[str, str]]:
    """(source file, command) of every documented snakemake command, in file order, without repeats."""
    found = []
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = path.read_text()
        blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.M | re.S)
        found += [(path.name, c) for block in blocks for c in shell_commands(block)]
        prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
        found += [(path.name, " ".join(c.split())) for c in re.findall(r"`(snakemake [^`]+)`", prose)]
    for path in [REPO / "Snakefile", *sorted(REPO.glob("profiles/*/config.yaml"))]:
        header = re.match(r"(#[^\n]*\n)*", path.read_text()).group(0)
        found += [(str(path.relative_to(REPO)), c) for c in shell_commands(header)]
    return list(dict.fromkeys(found))


def dry_run_key(command: str) -> tuple[str, ...]:
    """The command's arguments without -n and --cores N: commands with equal keys dry-run alike."""
    argv = shlex.split(command)[1:]
    cores = {k + 1 for k, arg in enumerate(argv) if arg == "--cores"}
    return tuple(arg for k, arg in enumerate(argv) if arg not in ("-n", "--cores") and k not in cores)


def dry_runs(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The first (source, command) of each distinct dry run that needs no cluster, real data or placeholder."""
    first = {}
    for source, command in pairs:
        if not PLACEHOLDER.search(command) and not any(p in command for p in PARSE_ONLY):
            first.setdefault(dry_run_key(command), (source, command))
    return list(first.values())


def intended_targets(argv: list[str]) -> list[str]:
    """Paths under results/ that the command names as targets: not right after an option (its value) but '--'."""
    pairs = zip(["snakemake", *argv], argv)
    return [arg for prev, arg in pairs if arg.startswith("results/") and (prev == "--" or not prev.startswith("-"))]


COMMANDS = documented_commands()


def test_the_documentation_shows_commands():
    sources = {source for source, _ in COMMANDS}
    assert {"README.md", "cluster.md", "Snakefile", "profiles/local/config.yaml"} <= sources, sources
    assert ("Snakefile", "snakemake results/eval_psds.json --cores 8 --resources gpu=1") in COMMANDS


def test_a_target_after_resources_is_caught():
    from snakemake.cli import parse_args

    argv = ["--cores", "8", "--resources", "gpu=1", "results/eval_psds.json"]
    with pytest.raises((ValueError, SystemExit)):  # Snakemake 9: 'results/eval_psds.json' is no resource
        assert "results/eval_psds.json" in parse_args(argv)[1].targets


@pytest.mark.parametrize("source, command", COMMANDS, ids=[f"{s}: {c}" for s, c in COMMANDS])
def test_documented_command_parses_with_its_targets(source, command, monkeypatch):
    from snakemake.cli import parse_args

    monkeypatch.chdir(REPO)  # profiles and config files are named relative to the workflow folder
    argv = shlex.split(command)[1:]
    _, args = parse_args(argv)
    assert set(intended_targets(argv)) <= set(args.targets), f"{source}: {command}: targets {args.targets}"


RUNNABLE = dry_runs(COMMANDS)


def test_runnable_commands_dry_run(copy_workflow, tmp_path):
    """The runnable documented commands, as dry runs on a copy of the workflow (no job runs)."""
    assert len(RUNNABLE) >= 10, RUNNABLE
    root = copy_workflow(tmp_path / "wf")
    for part in ("profiles", "configs"):
        shutil.copytree(REPO / part, root / part)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    failures = []
    for source, command in RUNNABLE:
        argv = [sys.executable, "-m", "snakemake", "-n", "--quiet=rules", *shlex.split(command)[1:]]  # before '--'
        proc = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0 or "usage:" in proc.stderr:
            failures.append(f"{source}: {command}: exit {proc.returncode}\n{proc.stdout[-1000:]}{proc.stderr[-1500:]}")
    assert not failures, "\n\n".join(failures)
