"""Private Keras names the project patches must still exist (a Keras update that removes one fails here)."""
import importlib.metadata

from pipeline.shared import compat


def test_every_patched_private_name_still_exists():
    assert compat.missing() == [], (
        f"Keras {importlib.metadata.version('keras')} no longer has {compat.missing()}; "
        f"the shims in pipeline/shared/compat.py were verified on {compat.VERIFIED}")


def test_installed_versions_are_within_the_verified_bounds():
    """pyproject.toml bounds keras and tensorflow-cpu (the `train` extra) to what compat.py was verified on."""
    import tomllib
    from pathlib import Path

    deps = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"]
    bounds = {d.split(">=")[0]: d for d in deps["optional-dependencies"]["train"]}
    assert f"<={compat.VERIFIED['keras']}" in bounds["keras"]
    assert f"<={compat.VERIFIED['tensorflow']}" in bounds["tensorflow-cpu"]
    assert importlib.metadata.version("keras") == compat.VERIFIED["keras"]


def test_restore_only_backup_never_writes(tmp_path):
    import keras

    cb = compat.restore_only_backup(str(tmp_path / "backup"))
    assert isinstance(cb, keras.callbacks.BackupAndRestore)
    cb._save_model()  # the patched method: a no-op
    assert not (tmp_path / "backup").exists() or not any((tmp_path / "backup").iterdir())
