import os

import numpy as np
import pytest

from pipeline.shared import artifacts


def test_atomic_write_leaves_no_temp_on_failure(tmp_path):
    target = tmp_path / "out.json"
    artifacts.write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with artifacts.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert artifacts.read_json(target, "x") == {"a": 1}  # old content intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_written_files_get_normal_permissions(tmp_path):
    artifacts.write_text(tmp_path / "f.txt", "x")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o666 & ~umask


def test_npy_roundtrip_without_pickle(tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    artifacts.save_npy(tmp_path / "a.npy", a)
    np.testing.assert_array_equal(artifacts.load_npy(tmp_path / "a.npy", "a"), a)
    with open(tmp_path / "obj.npy", "wb") as fh:  # an object array: loading it would unpickle
        np.lib.format.write_array_header_1_0(fh, {"descr": "|O", "fortran_order": False, "shape": (1,)})
        fh.write(b"\x80\x04junk")
    with pytest.raises(artifacts.StageError, match="malformed"):
        artifacts.load_npy(tmp_path / "obj.npy", "obj", mmap=False)


def test_read_json_errors(tmp_path):
    with pytest.raises(artifacts.StageError, match="not found"):
        artifacts.read_json(tmp_path / "none.json", "thing")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(artifacts.StageError, match="malformed"):
        artifacts.read_json(tmp_path / "bad.json", "thing")


def test_replace_dir_and_stale_temps(tmp_path):
    final = tmp_path / "model"
    final.mkdir()
    (final / "old").write_text("1")
    tmp = artifacts.temp_dir_for(final)
    (tmp / "new").write_text("2")
    artifacts.replace_dir(tmp, final)
    assert [p.name for p in final.iterdir()] == ["new"]
    stale = artifacts.temp_dir_for(final)
    (tmp_path / f".x.json{artifacts.TMP_TAG}abc").write_text("junk")
    artifacts.remove_stale_temps(tmp_path)
    assert not stale.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_fsync_started_waits_and_raises_what_the_flush_raised(tmp_path):
    done = tmp_path / "done.npy"
    done.write_bytes(b"x" * 4096)
    artifacts.fsync_started([done])()  # flushed: no error
    wait = artifacts.fsync_started([done, tmp_path / "gone.npy"])
    with pytest.raises(FileNotFoundError):
        wait()
