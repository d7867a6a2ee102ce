"""Maps the top-level algorithms/ folder to smashlib.algorithms (never a bare `algorithms` package,
a name taken on PyPI) and finds every group folder, so adding an algorithm or a group is adding files."""
from setuptools import find_packages, setup

algorithm_packages = ["smashlib.algorithms"] + [f"smashlib.algorithms.{p}" for p in find_packages("algorithms")]
setup(
    packages=find_packages(include=["smashlib", "smashlib.*"]) + algorithm_packages,
    package_dir={"smashlib.algorithms": "algorithms"},
    package_data={"smashlib.layers": ["*.cpp"]},  # the VNNI kernel's source, built on the machine that runs it
)
