"""The wheel carries every package and the model catalog (a hand-written package list once
left out localsym.experts, which editable installs never noticed); the catalog lives at the
top-level models/ and an installed wheel reads it from localsym/_models."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_holds_every_package_and_the_catalog(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    names = set(zipfile.ZipFile(next(tmp_path.glob("localsym-*.whl"))).namelist())
    packages = [
        p.parent.relative_to(ROOT).as_posix()
        for top in ("localsym", "kernels_numba")
        for p in (ROOT / top).rglob("__init__.py")
    ]
    assert "localsym/experts" in packages and "localsym/session" in packages
    for pkg in packages:
        assert f"{pkg}/__init__.py" in names, pkg
        for mod in (ROOT / pkg).glob("*.py"):
            assert f"{pkg}/{mod.name}" in names, mod
    # the catalog lives at the top-level models/ and ships as localsym/_models
    manifests = sorted(p.name for p in (ROOT / "models").glob("*.toml"))
    assert manifests and all(f"localsym/_models/{m}" in names for m in manifests)
    assert not (ROOT / "localsym" / "_models").exists()
    assert "localsym/memory/code_map.npz" in names  # the semantic signal's code map
    # installed from the wheel alone (no checkout, no site-packages), the catalog reads back
    target = tmp_path / "site"
    zipfile.ZipFile(next(tmp_path.glob("localsym-*.whl"))).extractall(target)
    code = "from localsym.catalog import catalog_dir, load_catalog; print(catalog_dir()); print(sorted(load_catalog()))"
    r = subprocess.run(
        [sys.executable, "-S", "-c", code],
        env={"PYTHONPATH": str(target)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    folder, names_line = r.stdout.splitlines()
    assert folder == str(target / "localsym" / "_models")
    assert names_line == repr(sorted(m.removesuffix(".toml") for m in manifests))
