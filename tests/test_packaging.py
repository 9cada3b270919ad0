"""environment.yml and setup.cfg name the same packages with the same version bounds.

setup.cfg is read with configparser; environment.yml with a small parser for the simple YAML it
uses (PyYAML is not a dependency): top-level ``key: value`` lines and ``- item`` lists, with one
nested ``- pip:`` list.
"""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: conda-forge name -> PyPI name, where they differ
CONDA_TO_PIP = {"pytorch": "torch", "openmm-torch": "openmmtorch"}

#: setup.cfg extras mirrored in environment.yml
MIRRORED_EXTRAS = ("test", "openmm-torch")

_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(.*?)\s*$")


def normalise_name(name: str) -> str:
    """PEP 503 normalisation, then conda -> pip names."""
    name = re.sub(r"[-_.]+", "-", name).lower()
    return CONDA_TO_PIP.get(name, name)


def parse_requirement(text: str) -> tuple[str, str]:
    """``"torch >= 2.1"`` -> ``("torch", ">=2.1")`` (the bound without spaces, "" when none)."""
    match = _REQUIREMENT.match(text)
    if match is None:
        raise ValueError(f"cannot parse requirement {text!r}")
    name, bound = match.groups()
    return normalise_name(name), bound.replace(" ", "")


def read_setup_cfg() -> tuple[dict[str, str], str]:
    """Requirements (install_requires + mirrored extras) as ``{name: bound}``, and python_requires."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    lines = config["options"]["install_requires"].splitlines()
    for extra in MIRRORED_EXTRAS:
        lines += config["options.extras_require"][extra].splitlines()
    requirements = dict(parse_requirement(line) for line in lines if line.strip())
    return requirements, config["options"]["python_requires"].replace(" ", "")


def parse_simple_yaml(text: str) -> dict:
    """Parse the YAML subset environment.yml uses: scalars, lists, and list items ``- key:`` opening a nested list."""
    document: dict = {}
    current_list: list | None = None
    nested: list | None = None
    list_indent = 0
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        content = line.strip()
        if indent == 0:
            key, _, value = content.partition(":")
            if not _:
                raise ValueError(f"unexpected top-level line {raw!r}")
            if value.strip():
                document[key.strip()] = value.strip()
                current_list = None
            else:
                current_list = document[key.strip()] = []
            nested = None
            continue
        if current_list is None or not content.startswith("- "):
            raise ValueError(f"unexpected line {raw!r}")
        item = content[2:].strip()
        if nested is not None and indent > list_indent:
            nested.append(item)
            continue
        list_indent = indent
        if item.endswith(":"):
            nested = []
            current_list.append({item[:-1]: nested})
        else:
            nested = None
            current_list.append(item)
    return document


@pytest.fixture(scope="module")
def environment() -> dict:
    return parse_simple_yaml((ROOT / "environment.yml").read_text())


def split_environment(environment: dict) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """Conda requirements ``{name: bound}``, pip requirements ``{name: bound}`` and the raw pip list."""
    conda, pip, pip_raw = {}, {}, []
    for entry in environment["dependencies"]:
        if isinstance(entry, dict):
            pip_raw = entry["pip"]
            pip.update(parse_requirement(item) for item in pip_raw if not item.startswith("-"))
        else:
            name, bound = parse_requirement(entry)
            conda[name] = bound
    return conda, pip, pip_raw


def test_simple_yaml_parser_reads_nested_pip_lists():
    text = "name: x\nchannels:\n  - conda-forge\ndependencies:\n  - a>=1  # why\n  - pip:\n      - b\n      - -e .\n  - c\n"
    assert parse_simple_yaml(text) == {
        "name": "x",
        "channels": ["conda-forge"],
        "dependencies": ["a>=1", {"pip": ["b", "-e ."]}, "c"],
    }


def test_environment_header(environment):
    assert environment["name"] == "boltzgen"
    assert environment["channels"] == ["conda-forge"]
    _, _, pip_raw = split_environment(environment)
    assert "-e ." in pip_raw


def test_environment_and_setup_cfg_list_the_same_packages(environment):
    requirements, _ = read_setup_cfg()
    conda, pip, _ = split_environment(environment)
    conda_packages = set(conda) - {"python", "pip"}
    assert not conda_packages & set(pip), "a package is listed for both conda and pip"
    assert conda_packages | set(pip) == set(requirements)
    assert set(pip) == {"nflows"}, "only what conda-forge lacks goes in the pip section"


def test_environment_version_bounds_match_setup_cfg(environment):
    requirements, python_requires = read_setup_cfg()
    conda, pip, _ = split_environment(environment)
    assert conda["python"] == python_requires
    for name, bound in {**conda, **pip}.items():
        if bound and name not in ("python", "pip"):
            assert bound == requirements[name], f"{name}: environment.yml {bound!r} vs setup.cfg {requirements[name]!r}"


def test_conda_names_are_mapped():
    assert parse_requirement("pytorch>=2.1") == ("torch", ">=2.1")
    assert parse_requirement("openmm-torch >= 1.4") == ("openmmtorch", ">=1.4")
    assert parse_requirement("POT>=0.9") == ("pot", ">=0.9")


def test_setup_cfg_lists_every_subpackage():
    """``packages =`` is explicit (boltzgen.systems lives in the top-level systems/ folder), so a
    new subpackage that is not listed would be missing from a non-editable install."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    listed = {line.strip() for line in config["options"]["packages"].splitlines() if line.strip()}
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "boltzgen").rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert (ROOT / "systems" / "__init__.py").exists()
    assert listed == on_disk | {"boltzgen.systems"}
    assert config["options"]["package_dir"].split("=")[-1].strip() == "systems"
