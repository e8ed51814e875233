"""The conda environment (envs/sedlib.yaml) and pyproject.toml pin the same run-time packages."""

import tomllib

import yaml


def _normalise(requirement: str) -> str:
    return requirement.replace(" ", "").replace("-", "_").lower()


def test_conda_env_pins_match_pyproject(repo_root):
    project = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((repo_root / "envs" / "sedlib.yaml").read_text())
    pip_section = next(dep["pip"] for dep in env["dependencies"] if isinstance(dep, dict))
    assert sorted(map(_normalise, pip_section)) == sorted(map(_normalise, project["dependencies"]))


def test_every_rule_file_is_included(repo_root):
    snakefile = (repo_root / "Snakefile").read_text()
    for rule_file in (repo_root / "rules").glob("*.smk"):
        assert f'include: "rules/{rule_file.name}"' in snakefile, rule_file.name
