"""The sandbox contains misbehaving programs, hides the filesystem and leaves the machine as it was."""
from __future__ import annotations

import os
import socket
import threading
import uuid
from pathlib import Path

import pytest

from alloy.errors import AlloyError
from alloy.sandbox import (
    OPT_IN_ENV,
    PYTHON_ENV,
    SandboxLimits,
    check_sandbox,
    code_execution_allowed,
    run_python,
    sandbox_processes,
)

FAST = SandboxLimits(wall_s=2.0)


def run(source: str, stdin: str = "", limits: SandboxLimits = FAST):
    return run_python({"main.py": source}, stdin, limits=limits, allow_code_execution=True)

REPO = Path(__file__).resolve().parents[1]
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="the private uid is used when alloy runs as root")


def cannot_read(path: Path) -> None:
    """The sandboxed program fails to open `path`, which the test process can read."""
    assert path.read_bytes(), path  # the host can
    result = run(f"print(open({str(path)!r}, 'rb').read()[:80])")
    assert result.status == "error", (path, result.stdout)
    assert "FileNotFoundError" in result.stderr or "PermissionError" in result.stderr
    assert path.read_bytes()[:20].decode(errors="replace") not in result.stdout


def test_opt_in_is_required(monkeypatch):
    monkeypatch.delenv(OPT_IN_ENV, raising=False)
    with pytest.raises(AlloyError, match=OPT_IN_ENV):
        run_python({"main.py": "print(1)"})
    assert not code_execution_allowed()
    monkeypatch.setenv(OPT_IN_ENV, "1")
    assert run_python({"main.py": "print(1)"}).stdout == "1\n"
    assert not code_execution_allowed(False)


def test_bad_input_is_refused_before_running():
    with pytest.raises(AlloyError, match="main.py"):
        run_python({"solution.py": "x"}, allow_code_execution=True)
    with pytest.raises(AlloyError, match="plain file name"):
        run_python({"main.py": "x", "../evil.py": "x"}, allow_code_execution=True)


def test_runs_program_with_stdin_in_its_own_directory():
    result = run("import os, sys\nprint(sys.stdin.read().upper())\nprint(sorted(os.listdir('.')))", "hello")
    assert result.ok and result.returncode == 0
    assert result.stdout.splitlines() == ["HELLO", "['main.py']"]


def test_environment_is_not_inherited(monkeypatch):
    monkeypatch.setenv("ALLOY_SECRET_TOKEN", "do-not-leak")
    result = run("import os\nprint(sorted(os.environ))")
    assert result.ok
    assert "ALLOY_SECRET_TOKEN" not in result.stdout
    assert set(eval(result.stdout)) <= {"PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "LC_CTYPE"}


def test_nonzero_exit_is_an_error():
    result = run("raise SystemExit(3)")
    assert result.status == "error" and result.returncode == 3


def test_infinite_loop_times_out():
    result = run("while True:\n    pass", limits=SandboxLimits(wall_s=1.0))
    assert result.status == "timeout"
    assert not sandbox_processes()


def test_memory_bomb_fails():
    result = run("x = bytearray(16 * 1024 ** 3)\nprint('allocated')", limits=SandboxLimits(memory_bytes=1024**3))
    assert result.status == "error"
    assert "allocated" not in result.stdout
    assert "MemoryError" in result.stderr


def test_fork_bomb_is_bounded_and_fully_killed():
    result = run(
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
        limits=SandboxLimits(wall_s=1.5, processes=32),
    )
    assert result.status == "timeout"
    assert not sandbox_processes()
    assert run("print('still fine')").stdout == "still fine\n"


def test_process_that_leaves_the_group_is_killed():
    result = run(
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    time.sleep(60)\n"
        "print('parent exits')"
    )
    assert result.ok and result.stdout == "parent exits\n"
    assert not sandbox_processes()


def test_writes_outside_its_directory_are_contained(tmp_path):
    token = uuid.uuid4().hex
    # root's folder (or, for a checkout under /tmp, a folder the sandbox's private /tmp hides)
    visible_target = Path(__file__).resolve().parent / f".alloy-sandbox-escape-{token}"
    hidden_target = tmp_path / "escape.txt"  # under /tmp: replaced by the sandbox's own tmpfs
    shared_target = Path("/tmp") / f"alloy-sandbox-escape-{token}"
    try:
        result = run(f"open({str(visible_target)!r}, 'w').write('x')")
        assert result.status == "error" and ("PermissionError" in result.stderr or
                                             "FileNotFoundError" in result.stderr)
        result = run(f"open({str(hidden_target)!r}, 'w').write('x')")
        assert result.status == "error"
        result = run(f"open({str(shared_target)!r}, 'w').write('x')\nprint('wrote')")
        assert result.stdout == "wrote\n"  # into the sandbox's own private /tmp ...
        assert not shared_target.exists()  # ... which the host never sees
        assert not visible_target.exists() and not hidden_target.exists()
    finally:
        for target in (visible_target, shared_target):
            target.unlink(missing_ok=True)


def test_network_is_unreachable():
    accepted = []
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(3.0)
        port = listener.getsockname()[1]

        def accept():
            try:
                accepted.append(listener.accept())
            except OSError:
                pass

        waiter = threading.Thread(target=accept)
        waiter.start()
        result = run(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\nprint('connected')")
        waiter.join()
    assert result.status == "error" and "connected" not in result.stdout
    assert not accepted


def test_output_is_bounded():
    result = run("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)", limits=SandboxLimits(wall_s=5.0, file_bytes=1024**2))
    assert result.status == "error"
    assert len(result.stdout) <= 1024**2


def test_no_temporary_folders_are_left(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    run("print(1)")
    run("while True: pass", limits=SandboxLimits(wall_s=0.5))
    assert os.listdir(tmp_path) == []


def test_evaluation_data_files_are_hidden():
    data = (REPO.parent / "shared" / "data").resolve()
    for name in ("livecodebench_subset.jsonl", "aime24.jsonl"):
        cannot_read(data / name)
    assert run(f"import os\nprint(os.path.exists({str(data)!r}))").stdout == "False\n"


def test_project_files_are_hidden():
    for path in (REPO / "alloy" / "sandbox.py", REPO / "README.md", REPO / "pyproject.toml"):
        cannot_read(path)


def test_home_folders_are_hidden():
    token = uuid.uuid4().hex
    secret = Path.home() / f".alloy-sandbox-secret-{token}"
    secret.write_text(f"secret {token}")
    try:
        cannot_read(secret)
        listing = run(f"import os\nprint(os.path.isdir('/home'), os.listdir({str(Path.home())!r}))")
        assert f"secret-{token}" not in listing.stdout
    finally:
        secret.unlink()


def test_path_passed_in_the_environment_is_hidden(tmp_path, monkeypatch):
    folder = tmp_path / "given"
    folder.mkdir()
    (folder / "answers.txt").write_text("expected output 42")
    monkeypatch.setenv("ALLOY_DATA_DIR", str(folder))
    cannot_read(Path(os.environ["ALLOY_DATA_DIR"]) / "answers.txt")


def test_root_shows_only_the_runtime():
    from alloy.sandbox import _runtime, _sandbox_python

    runtime = _runtime(_sandbox_python())
    mounted = [runtime.python, *runtime.folders, *(link for link, _ in runtime.symlinks)]
    allowed = {"dev", "proc", "tmp"} | {Path(path).parts[1] for path in mounted}
    result = run("import os\nprint(sorted(os.listdir('/')))\nprint(sorted(os.listdir('/dev')))\n"
                 "print(sorted(os.listdir('/tmp')))\nprint(sorted(p for p in os.listdir('/proc') if p.isdigit()))")
    assert result.ok, result.stderr
    root, dev, tmp, pids = (eval(line) for line in result.stdout.splitlines())
    assert set(root) <= allowed and not {"etc", "home", "work", "var", "opt", "mnt"} & set(root)
    assert set(dev) <= {"null", "urandom", "fd", "stdin", "stdout", "stderr"}
    assert tmp == ["work"]
    assert len(pids) <= 3  # bwrap's reaper and the program, not the host's processes
    cannot_read(Path("/etc/passwd"))


def test_runtime_is_read_only_and_site_packages_are_empty():
    result = run("import sys, os\nsite = [p for p in sys.path if p.endswith('-packages')]\n"
                 "print([os.listdir(p) for p in site if os.path.isdir(p)])\n"
                 "open(os.path.join(os.path.dirname(os.__file__), 'evil.py'), 'w')")
    assert result.status == "error" and ("Read-only" in result.stderr or "PermissionError" in result.stderr)
    listings = eval(result.stdout)
    assert listings and not any(listings)  # the interpreter's site-packages exist, empty
    assert "ModuleNotFoundError" in run("import numpy").stderr


def test_allowed_packages_are_importable():
    pytest.importorskip("numpy")
    result = run_python({"main.py": "import numpy\nprint(int(numpy.arange(4).sum()))"},
                        allow_code_execution=True, packages=["numpy"])
    assert result.ok and result.stdout == "6\n", result.stderr
    with pytest.raises(AlloyError, match="not an installed"):
        run_python({"main.py": "x"}, allow_code_execution=True, packages=["no_such_package_xyz"])


@ROOT_ONLY
def test_runs_as_a_throwaway_uid():
    first, second = run("import os\nprint(os.getuid())"), run("import os\nprint(os.getuid())")
    assert int(first.stdout) == first.uid != second.uid and first.uid != 0


def test_default_interpreter_is_the_base_python_of_this_environment():
    import sys

    result = run("import sys\nprint(sys.executable)\nprint(sys.version)")
    executable, version = result.stdout.splitlines()
    assert executable == os.path.realpath(sys._base_executable) and version == sys.version.splitlines()[0]


def test_interpreter_can_be_chosen(monkeypatch):
    system = Path("/usr/bin/python3")
    if not system.is_file():
        pytest.skip("no system python3")
    monkeypatch.setenv(PYTHON_ENV, str(system))
    result = run("import sys\nprint(sys.executable)")
    assert result.ok and result.stdout.strip() == os.path.realpath(system)
    monkeypatch.setenv(PYTHON_ENV, "/no/such/python")
    with pytest.raises(AlloyError, match=PYTHON_ENV):
        run("print(1)")


def test_missing_bubblewrap_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(AlloyError, match="apt-get install -y bubblewrap"):
        run("print(1)")
    with pytest.raises(AlloyError, match=OPT_IN_ENV):
        check_sandbox(False)
