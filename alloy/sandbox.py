"""Running untrusted (model-written) Python in a separate, confined, resource-limited process.

`run_python(files, stdin=...)` writes the files to a fresh temporary folder and runs `python main.py`
there under bubblewrap (`bwrap`, Debian/Ubuntu package `bubblewrap`), never in the calling process.
The program:

- sees a filesystem made only of the Python runtime, read-only: the interpreter executable, its
  standard library and the folders of the shared libraries it loads (found once per interpreter by
  a probe that imports every extension module of `lib-dynload` and reads `/proc/self/maps`), with
  the interpreter's site-packages folders replaced by empty ones (plus the packages named in
  `packages=`, an explicit allow-list); its own folder `/tmp/work` (writable, its HOME and cwd), a
  private size-limited `/tmp`, `/dev/null`, `/dev/urandom` and a `/proc` of its own PID namespace.
  Nothing else: no data files, no project, no home folders, no `/etc`, no other mounts;
- runs in new network (no network, not even loopback), PID, IPC, UTS and cgroup namespaces, with
  no capabilities, in its own session; the PID namespace dies with bwrap, killing every process
  the program forked;
- when started as root, runs as a throwaway unprivileged uid (unique per run), so RLIMIT_NPROC
  (not enforced for root) bounds a fork bomb; otherwise as the caller inside a user namespace;
- has rlimits on CPU time, address space, file size, open files and processes, a wall-clock limit
  counted from the moment the program starts, and an environment with nothing inherited.

The interpreter is, unless ALLOY_SANDBOX_PYTHON names another, the base interpreter of the running
Python (`sys._base_executable`: for a virtualenv, the Python it was made from), so the program gets
the same Python version as alloy but none of the venv's packages. It is bound at its real path,
so a venv or pyenv under an unreadable home works too (bwrap, started as root, makes the binds).

There is no weaker fallback: a machine without bwrap, or where it cannot create its namespaces,
gets an AlloyError saying so (`check_sandbox()` runs that check once, before any heavy work).
Running anything requires an explicit opt-in: `allow_code_execution=True` or the environment
variable ALLOY_ALLOW_CODE_EXECUTION=1.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import os
import resource
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from alloy.errors import AlloyError

OPT_IN_ENV = "ALLOY_ALLOW_CODE_EXECUTION"
PYTHON_ENV = "ALLOY_SANDBOX_PYTHON"
INSTALL_HINT = "install bubblewrap (Debian/Ubuntu: apt-get install -y bubblewrap; Fedora: dnf install bubblewrap)"
SANDBOX_UID_BASE = 1_700_000_000
SANDBOX_UID_SPAN = 100_000_000
INNER_WORKDIR = "/tmp/work"
OUTPUT_READ_LIMIT = 64 * 1024 * 1024
SETUP_TIMEOUT_S = 30.0
PROGRAM_ENV = {"PATH": "/usr/bin:/bin", "HOME": INNER_WORKDIR, "TMPDIR": "/tmp", "LANG": "C.UTF-8",
               "LC_ALL": "C.UTF-8"}

# Run by the sandbox's interpreter inside the sandbox (as root with only CAP_SETUID/CAP_SETGID, or
# as the caller): limits, privilege drop, the "ready" byte, then exec of the program.
_STAGE = """
import json, os, resource, sys
config = json.loads(sys.argv[1])
for limit, soft, hard in config["limits"]:
    resource.setrlimit(limit, (soft, hard))
uid = config["uid"]
if uid is not None:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
os.write(config["ready_fd"], b"1")
os.close(config["ready_fd"])
os.execve(config["python"], [config["python"], "-I", "-B", "main.py"], config["env"])
"""

# Run unconfined (it is alloy's own code) by the sandbox's interpreter to find what it needs.
_PROBE = """
import importlib, json, os, site, sys, sysconfig
dynload = sysconfig.get_config_var("DESTSHARED") or ""
if os.path.isdir(dynload):
    for entry in sorted(os.listdir(dynload)):
        try:
            importlib.import_module(entry.split(".")[0])
        except Exception:
            pass
mapped = set()
with open("/proc/self/maps") as maps:
    for line in maps:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith("/"):
            mapped.add(fields[5].strip())
paths = sysconfig.get_paths()
print(json.dumps({
    "executable": os.path.realpath(sys.executable),
    "stdlib": sorted({paths["stdlib"], paths["platstdlib"], dynload} - {""}),
    "site": site.getsitepackages() + [paths["purelib"], paths["platlib"]],
    "mapped": sorted(mapped),
}))
"""


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one sandboxed run (cpu_s defaults to the wall limit + 1 s)."""

    wall_s: float = 6.0
    cpu_s: float | None = None
    memory_bytes: int = 4 * 1024**3
    file_bytes: int = 64 * 1024**2
    processes: int = 64
    open_files: int = 256
    tmpfs_bytes: int = 64 * 1024**2


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one sandboxed run.

    status: "ok" (exit 0), "error" (non-zero exit or killed by a signal) or "timeout"
    (wall-clock limit reached). returncode is the exit code, or -N for signal N; uid is the
    throwaway uid the program ran as (None when alloy was not started as root).
    """

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float
    uid: int | None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class Runtime:
    """What the sandbox's interpreter needs, read-only: its executable, the folders to bind (standard
    library, shared libraries) and its site-packages folders (shown empty)."""

    python: str
    folders: tuple[str, ...]
    site: tuple[str, ...]
    symlinks: tuple[tuple[str, str], ...]


def code_execution_allowed(allow_code_execution: bool | None = None) -> bool:
    """The opt-in: the explicit argument if given, else ALLOY_ALLOW_CODE_EXECUTION in {1,true,yes}."""
    if allow_code_execution is not None:
        return bool(allow_code_execution)
    return os.environ.get(OPT_IN_ENV, "").strip().lower() in {"1", "true", "yes"}


def require_code_execution_opt_in(allow_code_execution: bool | None = None) -> None:
    """Raise AlloyError unless running model-written code was explicitly allowed."""
    if not code_execution_allowed(allow_code_execution):
        raise AlloyError(
            "scoring this task runs model-written code (in alloy's sandbox); it is off by default. "
            f"Opt in by setting the environment variable {OPT_IN_ENV}=1 (or pass "
            "allow_code_execution=True), and for lm-eval also confirm_run_unsafe_code=True."
        )


def check_sandbox(allow_code_execution: bool | None = None) -> None:
    """Fail early: the opt-in is given, bwrap is installed and a trivial program runs confined.

    The successful check is remembered for the process; call it before any heavy work (a task that
    runs code calls it when it loads)."""
    require_code_execution_opt_in(allow_code_execution)
    _bwrap()
    _check_runs(_sandbox_python())


def run_python(
    files: dict[str, str],
    stdin: str = "",
    *,
    limits: SandboxLimits = SandboxLimits(),
    allow_code_execution: bool | None = None,
    packages: Sequence[str] = (),
) -> SandboxResult:
    """Run `python main.py` in a fresh sandbox folder holding `files` (name -> text).

    `files` must contain "main.py"; names are plain file names. `packages` names extra top-level
    packages of the calling environment (e.g. "numpy") that the program may import, bound
    read-only; by default it gets the standard library only. Raises AlloyError when code execution
    was not opted in, the input is malformed or the sandbox cannot start; a misbehaving program
    never raises, it yields a result with status "error" or "timeout".
    """
    require_code_execution_opt_in(allow_code_execution)
    if "main.py" not in files:
        raise AlloyError(f"sandbox files {sorted(files)} lack 'main.py', the program to run")
    for name in files:
        if not name or "/" in name or name.startswith("."):
            raise AlloyError(f"sandbox file name {name!r} must be a plain file name (no '/', no leading '.')")
    if limits.wall_s <= 0 or limits.processes < 1:
        raise AlloyError(f"sandbox limits {limits} need wall_s > 0 and processes >= 1")
    runtime = _runtime(_sandbox_python())
    package_binds = _package_binds(tuple(packages))
    uid = SANDBOX_UID_BASE + secrets.randbelow(SANDBOX_UID_SPAN) if os.geteuid() == 0 else None
    base = Path(tempfile.mkdtemp(prefix="alloy-sandbox-"))
    try:
        workdir = base / "work"
        workdir.mkdir()
        for name, text in files.items():
            (workdir / name).write_text(text, encoding="utf-8")
        if uid is not None:
            for path in [workdir, *workdir.iterdir()]:
                os.chown(path, uid, uid)
        (base / "stdin").write_text(stdin, encoding="utf-8")
        with open(base / "stdin", "rb") as fin, open(base / "stdout", "wb") as fout, open(
            base / "stderr", "wb"
        ) as ferr:
            outcome = _run_confined(runtime, package_binds, workdir, limits, uid, fin, fout, ferr)
        if outcome is None:
            raise AlloyError(f"the sandbox could not start the program (bwrap {_bwrap()}): "
                             f"{_read_text(base / 'stderr').strip()[-2000:] or 'no message'}")
        returncode, timed_out, wall = outcome
        return SandboxResult(
            status="timeout" if timed_out else "ok" if returncode == 0 else "error",
            returncode=None if timed_out else returncode,
            stdout=_read_text(base / "stdout"),
            stderr=_read_text(base / "stderr"),
            wall_s=wall,
            uid=uid,
        )
    finally:
        shutil.rmtree(base, ignore_errors=True)


def sandbox_processes(uid: int | None = None) -> list[int]:
    """Process ids running as `uid`, or as any sandbox uid when uid is None (for checks and tests)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        real_uid = _real_uid(int(entry))
        if real_uid is None:
            continue
        if uid is None:
            if SANDBOX_UID_BASE <= real_uid < SANDBOX_UID_BASE + SANDBOX_UID_SPAN:
                found.append(int(entry))
        elif real_uid == uid:
            found.append(int(entry))
    return found


# --------------------------------------------------------------------------------------------
# Building and running the bwrap command.
# --------------------------------------------------------------------------------------------


def _bwrap() -> str:
    found = shutil.which("bwrap")
    if found is None:
        raise AlloyError(f"alloy's sandbox needs bubblewrap (bwrap), which is not on PATH: {INSTALL_HINT}")
    return found


def _sandbox_python() -> str:
    """ALLOY_SANDBOX_PYTHON, else the base interpreter of the running Python (real path)."""
    configured = os.environ.get(PYTHON_ENV)
    if configured:
        if not os.path.isfile(configured) or not os.access(configured, os.X_OK):
            raise AlloyError(f"{PYTHON_ENV}={configured} is not an executable file; point it at a python3")
        return os.path.realpath(configured)
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


@functools.lru_cache(maxsize=None)
def _runtime(python: str) -> Runtime:
    """Probe `python` (unconfined, once) for its standard library and shared-library folders."""
    try:
        probe = subprocess.run([python, "-I", "-c", _PROBE], capture_output=True, text=True, timeout=120,
                               env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"}, check=True)
        found = json.loads(probe.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise AlloyError(f"cannot probe the sandbox's interpreter {python} ({exc}); set {PYTHON_ENV} "
                         "to a working python3") from exc
    executable = found["executable"]
    folders = set(found["stdlib"])
    folders.update(os.path.dirname(path) for path in found["mapped"] if path != executable and os.path.exists(path))
    symlinks: dict[str, str] = {}
    interp = _elf_interpreter(executable)
    if interp:
        _collect_symlinks(interp, symlinks)
        folders.add(os.path.dirname(os.path.realpath(interp)))
    outermost = _outermost(folders)
    site = tuple(dict.fromkeys(path for path in found["site"]
                               if os.path.isdir(path) and any(_inside(path, folder) for folder in outermost)))
    return Runtime(python=executable, folders=outermost, site=site, symlinks=tuple(sorted(symlinks.items())))


def _collect_symlinks(path: str, symlinks: dict[str, str]) -> None:
    """Every symlink met while resolving `path` (link -> target), to recreate in the sandbox."""
    parts = Path(path).parts
    current = "/"
    for index, part in enumerate(parts[1:], start=1):
        current = os.path.join(current, part)
        if os.path.islink(current):
            target = os.readlink(current)
            symlinks[current] = target
            resolved = os.path.normpath(os.path.join(os.path.dirname(current), target))
            _collect_symlinks(os.path.join(resolved, *parts[index + 1:]), symlinks)
            return


def _elf_interpreter(executable: str) -> str | None:
    """The program interpreter (PT_INTERP, e.g. /lib64/ld-linux-x86-64.so.2) of a 64-bit ELF file."""
    import struct

    with open(executable, "rb") as handle:
        header = handle.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2:
            return None
        order = "<" if header[5] == 1 else ">"
        phoff, = struct.unpack_from(order + "Q", header, 32)
        phentsize, phnum = struct.unpack_from(order + "HH", header, 54)
        for index in range(phnum):
            handle.seek(phoff + index * phentsize)
            p_type, _, offset, _, _, size = struct.unpack(order + "IIQQQQ", handle.read(40))
            if p_type == 3:
                handle.seek(offset)
                return handle.read(size).rstrip(b"\0").decode()
    return None


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _outermost(folders: set[str]) -> tuple[str, ...]:
    """The folders not inside another one of the set."""
    ordered = sorted(os.path.realpath(f) for f in folders if os.path.isdir(f))
    kept: list[str] = []
    for folder in ordered:
        if not any(_inside(folder, outer) for outer in kept):
            kept.append(folder)
    return tuple(kept)


def _package_binds(packages: tuple[str, ...]) -> list[tuple[str, str]]:
    """(host path, name in the sandbox's site folder) for each allowed package and its bundled
    shared libraries (`<name>.libs` of manylinux wheels)."""
    binds = []
    for name in packages:
        spec = importlib.util.find_spec(name) if name.isidentifier() else None
        if spec is None or (spec.origin in (None, "built-in", "frozen") and not spec.submodule_search_locations):
            raise AlloyError(f"sandbox package {name!r} is not an installed top-level package of this Python")
        if spec.submodule_search_locations:
            locations = list(spec.submodule_search_locations)
            binds += [(os.path.realpath(location), name) for location in locations[:1]]
            libs = Path(locations[0]).parent / f"{name}.libs"
        else:
            binds.append((os.path.realpath(spec.origin), os.path.basename(spec.origin)))
            libs = Path(spec.origin).parent / f"{name}.libs"
        if libs.is_dir():
            binds.append((str(libs.resolve()), libs.name))
    return binds


def _command(runtime: Runtime, package_binds: list[tuple[str, str]], workdir: Path, limits: SandboxLimits,
             uid: int | None, ready_fd: int) -> list[str]:
    """The bwrap command line of one run."""
    args = [_bwrap(), "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try",
            "--die-with-parent", "--new-session", "--hostname", "sandbox", "--clearenv"]
    if uid is None:
        args += ["--unshare-user", "--disable-userns"]
    else:
        args += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    # bwrap may create the parents of a mount point as private (0700) folders: make them 0755.
    destinations = [link for link, _ in runtime.symlinks] + list(runtime.folders) + [runtime.python, "/dev/null"]
    for folder in sorted({str(parent) for path in destinations for parent in Path(path).parents} - {"/"}):
        if not any(_inside(folder, link) for link, _ in runtime.symlinks):
            args += ["--perms", "0755", "--dir", folder]
    for link, target in runtime.symlinks:
        args += ["--symlink", target, link]
    for folder in runtime.folders:
        args += ["--ro-bind", folder, folder]
    args += ["--ro-bind", runtime.python, runtime.python]
    if package_binds and not runtime.site:
        raise AlloyError(f"the sandbox's interpreter {runtime.python} has no site-packages folder for extra packages")
    for site in runtime.site:
        args += ["--tmpfs", site]
    for source, name in package_binds:
        args += ["--ro-bind", source, os.path.join(runtime.site[0], name)]
    for site in runtime.site:
        args += ["--remount-ro", site]
    args += ["--proc", "/proc", "--dev-bind", "/dev/null", "/dev/null", "--dev-bind", "/dev/urandom", "/dev/urandom"]
    for stream, number in (("stdin", 0), ("stdout", 1), ("stderr", 2)):
        args += ["--symlink", f"/proc/self/fd/{number}", f"/dev/{stream}"]
    args += ["--symlink", "/proc/self/fd", "/dev/fd",
             "--perms", "1777", "--size", str(limits.tmpfs_bytes), "--tmpfs", "/tmp",
             "--bind", str(workdir), INNER_WORKDIR, "--chdir", INNER_WORKDIR, "--remount-ro", "/"]
    cpu = int(limits.cpu_s if limits.cpu_s is not None else int(limits.wall_s) + 1)
    stage = {
        "limits": [
            [resource.RLIMIT_CPU, cpu, cpu + 1],
            [resource.RLIMIT_AS, limits.memory_bytes, limits.memory_bytes],
            [resource.RLIMIT_FSIZE, limits.file_bytes, limits.file_bytes],
            [resource.RLIMIT_NOFILE, limits.open_files, limits.open_files],
            [resource.RLIMIT_NPROC, limits.processes, limits.processes],
            [resource.RLIMIT_CORE, 0, 0],
        ],
        "uid": uid,
        "ready_fd": ready_fd,
        "python": runtime.python,
        "env": PROGRAM_ENV,
    }
    return args + ["--", runtime.python, "-I", "-S", "-B", "-c", _STAGE, json.dumps(stage)]


def _run_confined(runtime: Runtime, package_binds: list[tuple[str, str]], workdir: Path, limits: SandboxLimits,
                  uid: int | None, fin, fout, ferr) -> tuple[int, bool, float] | None:
    """Run the program; (returncode, timed out, wall seconds of the program), or None when the
    sandbox failed before the program started."""
    ready_read, ready_write = os.pipe()
    try:
        process = subprocess.Popen(
            _command(runtime, package_binds, workdir, limits, uid, ready_write),
            stdin=fin, stdout=fout, stderr=ferr, pass_fds=(ready_write,), start_new_session=True, umask=0o022,
            env={"PATH": "/usr/local/bin:/usr/bin:/bin", "LC_ALL": "C.UTF-8"},
        )
    finally:
        os.close(ready_write)
    try:
        with os.fdopen(ready_read, "rb", buffering=0) as ready:
            readable, _, _ = select.select([ready], [], [], SETUP_TIMEOUT_S)
            started = readable and ready.read(1) == b"1"
        if not started:
            return None
        began = time.monotonic()
        try:
            process.wait(timeout=limits.wall_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        wall = time.monotonic() - began
    finally:
        _kill_group(process.pid)
        process.wait()
        if uid is not None:
            _kill_uid(uid)
    code = process.returncode
    returncode = -(code - 128) if code > 128 else code
    return returncode, timed_out, wall


@functools.lru_cache(maxsize=None)
def _check_runs(python: str) -> None:
    result = run_python({"main.py": "print('ok')"}, allow_code_execution=True)
    if result.stdout != "ok\n":
        raise AlloyError(f"alloy's sandbox cannot run a trivial program with {python} "
                         f"(status {result.status}): {result.stderr.strip()[-2000:]}")


def _read_text(path: Path) -> str:
    with open(path, "rb") as handle:
        return handle.read(OUTPUT_READ_LIMIT).decode("utf-8", errors="replace")


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_uid(uid: int) -> None:
    """Kill every process left running as this run's private uid (a last sweep; normally none)."""
    for _ in range(20):
        pids = sandbox_processes(uid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.05)


def _real_uid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None
