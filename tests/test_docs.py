"""The README matches the code: its methods table, its command list and its commands' names."""
from __future__ import annotations

import re
from pathlib import Path

from alloy.cli import COMMANDS
from alloy.merge.reference import methods_table

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_methods_table_is_generated_from_the_specs():
    block = README.split("<!-- methods-table")[1].split("<!-- end methods-table -->")[0]
    assert block.split("\n", 1)[1].strip() == methods_table().strip()


def test_every_command_is_documented_and_every_documented_command_exists():
    documented = set(re.findall(r"^\| `alloy (\w+)", README, flags=re.M))
    assert documented == set(COMMANDS)


def test_readme_starts_with_the_two_commands():
    head = README[:1500]
    assert "make demo" in head and "make test" in head
