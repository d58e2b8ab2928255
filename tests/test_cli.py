"""The command line: user errors are one line and exit 2; anything else is a bug, shown with its traceback, exit 1."""
import pytest

from pipeline.faces import commands as cli
from pipeline.shared.errors import StageError, UserError
from pipeline.stages import compare


def _fail_with(monkeypatch, exc):
    def main(args):
        raise exc
    monkeypatch.setattr(compare, "main", main)


@pytest.mark.parametrize("exc", [UserError("bad params: [train] epochs must be >= 1"),
                                 StageError("runs/x has no finished prepare stage")])
def test_user_errors_are_one_line_and_exit_2(monkeypatch, capsys, exc):
    _fail_with(monkeypatch, exc)
    assert cli.main(["compare", "runs/x"]) == 2
    err = capsys.readouterr().err
    assert str(exc) in err and "Traceback" not in err


@pytest.mark.parametrize("exc", [ValueError("operands could not be broadcast together"),  # e.g. from numpy
                                 ZeroDivisionError("division by zero"), KeyError("labels")])
def test_anything_else_is_a_bug_with_its_traceback_and_exit_1(monkeypatch, capsys, exc):
    _fail_with(monkeypatch, exc)
    assert cli.main(["compare", "runs/x"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and type(exc).__name__ in err and "-v for the full traceback" in err
    assert cli.main(["-v", "compare", "runs/x"]) == 1
    full = capsys.readouterr().err
    assert "Traceback" in full and "cli.py" in full and "-v for the full" not in full  # every frame under -v


def test_file_system_errors_stay_one_line(monkeypatch, capsys):
    import errno

    _fail_with(monkeypatch, OSError(errno.ENOSPC, "No space left on device", "/full/disk"))
    assert cli.main(["compare", "runs/x"]) == 2
    err = capsys.readouterr().err
    assert "no space left on the device (/full/disk)" in err and "Traceback" not in err


def test_a_command_that_needs_the_training_stack_says_so(monkeypatch, capsys):
    """In the light install (no TensorFlow, Keras, scikit-learn...), a command that needs them is exit 2 with
    what to install, not a traceback; a missing module that is not part of the training stack is a bug."""
    _fail_with(monkeypatch, ModuleNotFoundError("No module named 'keras'", name="keras"))
    assert cli.main(["compare", "runs/x"]) == 2
    err = capsys.readouterr().err
    assert "`pipeline compare` needs the full install (keras is not installed): pip install '.[train]'" in err
    assert "Traceback" not in err
    _fail_with(monkeypatch, ModuleNotFoundError("No module named 'pipelin'", name="pipelin"))
    assert cli.main(["compare", "runs/x"]) == 1


def test_a_taken_port_is_one_clear_error_before_anything_loads(tmp_path, capsys):
    import socket

    from pipeline import __main__ as main
    from pipeline.shared import cli
    from pipeline.shared.errors import UserError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UserError, match=f"port {port} on 127.0.0.1 is in use"):
            cli.listen("127.0.0.1", port)
        capsys.readouterr()
        assert main.main(["review", "--run", str(tmp_path / "run"), "--port", str(port)]) == 2
        err = capsys.readouterr().err
        assert "is in use" in err and "Traceback" not in err and "open http" not in err
    free = cli.listen("127.0.0.1", 0)  # a free one: bound, ready for the server
    assert free.getsockname()[1] > 0
    free.close()
    for bad in ("99999", "-5"):  # not a port: one clear line, exit 2 (not a traceback, not a resolver's words)
        assert main.main(["review", "--run", str(tmp_path / "run"), "--port", bad]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"ERROR: --port {bad} is not a port") and err.count("\n") == 1, err


def test_ctrl_c_is_exit_130_with_one_message(monkeypatch, capsys):
    """The generic "re-run to continue", unless the stage already said how to go on (predict: with --resume)."""
    from pipeline.shared.errors import Interrupted

    _fail_with(monkeypatch, KeyboardInterrupt())
    assert cli.main(["compare", "runs/x"]) == 130
    assert "interrupted; finished artifacts are intact, re-run to continue" in capsys.readouterr().err
    _fail_with(monkeypatch, Interrupted())
    assert cli.main(["compare", "runs/x"]) == 130
    assert "re-run to continue" not in capsys.readouterr().err


def test_a_command_that_fails_on_its_input_leaves_no_run_folder_it_made(tmp_path, capsys):
    """A mistyped DATA= made runs/<name>/logs/ and left it; a run folder that was there before stays."""
    from pipeline import __main__ as main

    run = tmp_path / "runs" / "nope"
    assert main.main(["prepare", "--data", str(tmp_path / "nope"), "--run", str(run)]) == 2
    assert "not found" in capsys.readouterr().err and not run.exists()
    kept = tmp_path / "runs" / "kept"
    (kept / "logs").mkdir(parents=True)
    assert main.main(["prepare", "--data", str(tmp_path / "nope"), "--run", str(kept)]) == 2
    assert (kept / "logs" / "prepare.log").is_file()
