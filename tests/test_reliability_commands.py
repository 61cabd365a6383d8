"""Faults and bad inputs of the commands end in one clear line (exit 2) naming the file or key, and leave
nothing half-written: truncated safetensors, read-only and full file systems, bad devices, parents of
other shapes, --overwrite onto a parent or a file, --top -1, --max-shard-size 0."""
from __future__ import annotations

import contextlib
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from alloy.cli import main
from tests.parents import write_parents


@pytest.fixture(scope="module")
def parents(tmp_path_factory, tiny_tokenizer):
    return write_parents(tmp_path_factory.mktemp("parents"), "llama", tiny_tokenizer, n=2)


@pytest.fixture(scope="module")
def other_shape(tmp_path_factory, tiny_tokenizer):
    """A llama of another hidden size (same vocabulary)."""
    return write_parents(tmp_path_factory.mktemp("wide"), "llama", tiny_tokenizer, n=1, hidden_size=96)[0]


def recipe_file(folder: Path, a: Path, b: Path) -> Path:
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump({"merge_method": "linear", "models": [
        {"model": str(a), "parameters": {"weight": 0.5}}, {"model": str(b), "parameters": {"weight": 0.5}}]}))
    return path


def truncated_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    weights = dst / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    return dst


def error_of(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def no_leftovers(folder: Path, name: str) -> None:
    left = [p.name for p in folder.iterdir() if p.name.startswith(f".{name}")]
    assert not left, f"left behind: {left}"


# --------------------------------------------------------------------------------------------------
def test_truncated_parent_is_named(tmp_path, parents, capsys):
    cut = truncated_copy(parents[1], tmp_path / "cut")
    err = error_of(capsys, ["merge", str(recipe_file(tmp_path, parents[0], cut)), str(tmp_path / "child"), "--quiet"])
    assert str(cut / "model.safetensors") in err and "truncated" in err
    assert not (tmp_path / "child").exists()
    err = error_of(capsys, ["inspect", "--distances", str(parents[0]), str(cut)])
    assert str(cut / "model.safetensors") in err and "truncated" in err


def test_distances_between_different_shapes(parents, other_shape, capsys):
    err = error_of(capsys, ["inspect", "--distances", str(parents[0]), str(other_shape)])
    assert str(other_shape) in err and "shape" in err and "one architecture" in err


def test_bad_devices(tmp_path, parents, capsys):
    recipe = str(recipe_file(tmp_path, parents[0], parents[1]))
    err = error_of(capsys, ["merge", recipe, str(tmp_path / "child"), "--device", "banana", "--quiet"])
    assert "--device 'banana'" in err
    err = error_of(capsys, ["merge", recipe, str(tmp_path / "child"), "--device", "meta", "--quiet"])
    assert "cpu or cuda" in err
    if not torch.cuda.is_available():
        assert "CUDA is not available" in error_of(capsys, ["merge", recipe, str(tmp_path / "child"), "--device",
                                                            "cuda:3", "--quiet"])
    assert not (tmp_path / "child").exists()


def test_overwrite_refuses_parents_and_files_and_leaves_no_old_copy(tmp_path, parents, capsys):
    a = shutil.copytree(parents[0], tmp_path / "a")
    b = shutil.copytree(parents[1], tmp_path / "b")
    recipe = str(recipe_file(tmp_path, a, b))
    before = (a / "model.safetensors").read_bytes()
    err = error_of(capsys, ["merge", recipe, str(a), "--overwrite", "--quiet"])
    assert "would overwrite the parent checkpoint" in err and str(a) in err
    assert (a / "model.safetensors").read_bytes() == before
    err = error_of(capsys, ["merge", recipe, str(tmp_path), "--overwrite", "--quiet"])  # a folder holding parents
    assert "would overwrite the parent checkpoint" in err and a.is_dir() and b.is_dir()

    target = tmp_path / "out.bin"
    target.write_text("precious")
    err = error_of(capsys, ["merge", recipe, str(target), "--overwrite", "--quiet"])
    assert "is a file" in err and target.read_text() == "precious"
    no_leftovers(tmp_path, "out.bin")

    child = tmp_path / "child"
    assert main(["merge", recipe, str(child), "--quiet"]) == 0
    (tmp_path / ".child.old-99999").mkdir()                   # what a killed run left behind
    assert main(["merge", recipe, str(child), "--overwrite", "--quiet"]) == 0
    assert (child / "model.safetensors").is_file()
    no_leftovers(tmp_path, "child")


def test_board_top_and_shard_size_are_checked(tmp_path, parents, capsys):
    assert "--top -1" in error_of(capsys, ["board", str(tmp_path), "--top", "-1"])
    recipe = str(recipe_file(tmp_path, parents[0], parents[1]))
    err = error_of(capsys, ["merge", recipe, str(tmp_path / "child"), "--max-shard-size", "0", "--quiet"])
    assert "'0'" in err and "positive" in err
    assert not (tmp_path / "child").exists()


# --------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def mounted(point: Path, *args: str):
    """A mount for the duration of the block (root only); skip where this machine does not allow it."""
    point.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", *args, str(point)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here ({done.stderr.strip()}): needs root with CAP_SYS_ADMIN")
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=True)


def test_read_only_output(tmp_path, parents, capsys):
    recipe = str(recipe_file(tmp_path, parents[0], parents[1]))
    (tmp_path / "ro").mkdir()
    with mounted(tmp_path / "ro", "--bind", "-o", "ro", str(tmp_path / "ro")) as ro:
        err = error_of(capsys, ["merge", recipe, str(ro / "child"), "--quiet"])
        assert "read-only" in err and str(ro) in err
        err = error_of(capsys, ["eval", str(parents[0]), "--tasks", "aime24", "--limit", "1",
                                "--output", str(ro / "scores.json"), "--data-dir", "../shared/data"])
        assert "read-only" in err and str(ro / "scores.json") in err
        assert not any(ro.iterdir())


def test_disk_full(tmp_path, parents, capsys):
    recipe = str(recipe_file(tmp_path, parents[0], parents[1]))
    size = (parents[0] / "model.safetensors").stat().st_size
    with mounted(tmp_path / "small", "-t", "tmpfs", "-o", f"size={size // 2}", "tmpfs") as small:
        err = error_of(capsys, ["merge", recipe, str(small / "child"), "--quiet"])
        assert "no space left" in err and str(small / "child") in err
        assert not any(small.iterdir()), "half-written output left on the full disk"
