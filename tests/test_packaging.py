"""The installed package carries every subpackage and data file it needs."""

import fnmatch
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_in_pyproject():
    conf = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(conf["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "galseg").rglob("__init__.py")}
    assert found - listed == set(), "add these to [tool.setuptools] packages"
    assert "galseg.configs" in listed and conf["package-dir"]["galseg.configs"] == "configs"


def test_shipped_data_files_are_declared():
    conf = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = {p.relative_to(REPO / "configs").as_posix() for p in (REPO / "configs").rglob("*")
               if p.is_file() and p.suffix not in (".py", ".pyc")}
    # patterns of galseg.configs and its data subpackages, as paths below configs/
    patterns = [(pkg[len("galseg.configs"):].lstrip(".").replace(".", "/") + "/" + pat).lstrip("/")
                for pkg, pats in conf.items() if pkg.startswith("galseg.configs") for pat in pats]

    def matches(name, pattern):  # setuptools globs: '*' never crosses a '/'
        parts, pparts = name.split("/"), pattern.split("/")
        return len(parts) == len(pparts) and all(map(fnmatch.fnmatchcase, parts, pparts))

    unmatched = {f for f in shipped if not any(matches(f, pat) for pat in patterns)}
    assert unmatched == set(), "add patterns for these to package-data"
