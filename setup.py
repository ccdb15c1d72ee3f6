"""The model catalog lives at the top-level ``models/`` folder and ships in the wheel as the
package ``localsym._models`` (``package-dir`` maps the folder to that name). Every package
under ``localsym/`` and ``kernels_numba/`` is found, never listed by hand (a hand list once
left out ``localsym.experts``). The rest of the configuration is in ``pyproject.toml``."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["localsym*", "kernels_numba*"]), "localsym._models"],
    package_dir={"localsym._models": "models"},
    # the semantic signal's code map (memory/semantic.py; made by tools/train_code_map.py)
    package_data={"localsym._models": ["*.toml"], "localsym.memory": ["code_map.npz"]},
)
