"""Package layout: the `alloy` packages plus the top-level `evaluators/` (lm-eval tasks) and
`search_spaces/` (example spaces), which the wheel carries as `alloy/evaluators` and
`alloy/search_spaces`. pyproject.toml holds everything else; it cannot add mapped folders to a
package search, hence this file."""
from setuptools import find_namespace_packages, find_packages, setup

SHIPPED = {"alloy.evaluators": "evaluators", "alloy.search_spaces": "search_spaces"}


def shipped_packages() -> list[str]:
    """Each shipped folder and its subfolders, as packages of alloy."""
    names = []
    for package, folder in SHIPPED.items():
        subfolders = find_namespace_packages(where=folder, exclude=["__pycache__", "*.__pycache__"])
        names += [package, *(f"{package}.{sub}" for sub in subfolders)]
    return names


setup(
    packages=find_packages(include=["alloy", "alloy.*"]) + shipped_packages(),
    package_dir=SHIPPED,
    package_data={"alloy.evaluators": ["**/*.yaml", "**/*_yaml"], "alloy.search_spaces": ["*.yaml"]},
)
