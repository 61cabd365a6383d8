"""Quiet output: alloy's lines on the terminal, the libraries' output in the log file; a real sweep's
terminal output holds no Ray-internal line."""
from __future__ import annotations

import logging
import sys
import warnings

import pytest

from alloy.logs import LOG_FILE, lines_to_log_only, quiet_output, say


def test_quiet_output_sends_everything_but_say_to_the_log(tmp_path, capsys):
    early = logging.getLogger("alloy_test.early")               # a library's handler made before the block
    early.addHandler(logging.StreamHandler(sys.stderr))
    early.propagate = False
    late = logging.getLogger("alloy_test.late")
    log = tmp_path / "out" / LOG_FILE
    with quiet_output(log) as path:
        assert path == log and not log.exists()                  # created on the first write only
        say("stage 1/2")
        print("(RayTrainWorker pid=1) library chatter")
        print("progress bar 10%", file=sys.stderr)
        warnings.warn("DDP warning")
        early.warning("early handler line")
        late.addHandler(logging.StreamHandler())                 # made inside: writes to the log
        late.propagate = False
        late.warning("late handler line")
        with lines_to_log_only():
            say("trial 3 done")                                  # the log only
        say("stage 2/2")
    terminal = capsys.readouterr()
    assert terminal.out == "stage 1/2\nstage 2/2\n" and terminal.err == ""
    text = log.read_text()
    for line in ("stage 1/2", "library chatter", "progress bar 10%", "DDP warning", "early handler line",
                 "late handler line", "trial 3 done", "stage 2/2"):
        assert line in text, line
    assert text.index("stage 1/2") < text.index("library chatter") < text.index("stage 2/2")
    with lines_to_log_only():
        say("no quiet block: the terminal")
    assert capsys.readouterr().out == "no quiet block: the terminal\n"
    early.warning("after the block")                             # handlers point at the terminal again
    late.warning("late, after the block")
    assert capsys.readouterr().err == "after the block\nlate, after the block\n"
    for logger in (early, late):
        logger.handlers.clear()


def test_verbose_redirects_nothing_and_failures_point_at_the_log(tmp_path, capsys):
    with quiet_output(tmp_path / LOG_FILE, verbose=True) as path:
        print("shown")
    assert path is None and capsys.readouterr().out == "shown\n" and not (tmp_path / LOG_FILE).exists()
    with pytest.raises(RuntimeError), quiet_output(tmp_path / LOG_FILE):
        print("Traceback context")
        raise RuntimeError("boom")
    assert f"the full output is in {tmp_path / LOG_FILE}" in capsys.readouterr().err
    with pytest.raises(RuntimeError), quiet_output(tmp_path / "none" / LOG_FILE):
        raise RuntimeError("before any output")
    assert capsys.readouterr().err == "" and not (tmp_path / "none").exists()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sweep_terminal_output_has_no_ray_internals(cli_sweep):
    sweep, run = cli_sweep
    assert run.stderr == ""
    lines = [line for line in run.stdout.splitlines() if line.strip()]
    assert sum(line.startswith("trial ") for line in lines) >= 5
    strays = [line for line in lines if not line.startswith(("trial ", "confirming ", "best after confirmation: ",
                                                             "sweep finished: ", "leaderboard: "))]
    assert strays == []
    log = (sweep / LOG_FILE).read_text()
    assert "Started a local Ray instance" in log and "Configuration for experiment" in log
    assert "sweep finished: " in log                              # alloy's lines are in the log too


def test_progress_bar_draws_on_the_terminal_only(tmp_path, capsys):
    import io

    from alloy.logs import progress_bar

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "stderr", terminal)
        with quiet_output(tmp_path / LOG_FILE):
            with progress_bar(4, "generating", unit="answer") as bar:
                bar.update(4)
            with progress_bar(4, "generating", disable=True) as hidden:
                hidden.update(4)
    drawn = terminal.getvalue()
    assert drawn.count("generating: ") >= 1 and "0/4" in drawn and "answer" in drawn
    assert not (tmp_path / LOG_FILE).exists()                     # the bar is not in the log
    with progress_bar(2, "captured") as bar:                     # not a terminal: no bar at all
        bar.update(2)
    assert "captured" not in capsys.readouterr().err
