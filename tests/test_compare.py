"""compare: the side-by-side table, for people and as a CSV file."""
import csv
import io

from pipeline.stages.compare import format_csv, format_text, table

RUNS = [{"run": "runs/a", "model": "lenet5", "parameters": 62317, "accuracy": 0.97, "macro_f1": 0.96, "epochs": 12,
         "best_epoch": 10, "train_seconds": 16.0, "seconds_per_epoch": 1.3, "test_images": 1234,
         "f1": {"circle": 0.95, "star": None}}]


def test_the_csv_holds_plain_numbers_and_the_text_is_for_people():
    rows = dict((r[0], r[1]) for r in csv.reader(io.StringIO(format_csv(table(RUNS, plain=True)))))
    assert rows["parameters"] == "62317" and rows["test images"] == "1234"
    assert float(rows["macro F1"]) == 0.96 and rows["F1 star"] == ""  # no test images of it: no F1
    text = format_text(table(RUNS))
    assert "62,317" in text and "–" in text


def test_without_runs_it_compares_every_evaluated_run_names_with_spaces_too(tmp_path, monkeypatch, capsys):
    import json

    from pipeline.faces.commands import main
    from pipeline.shared import bundle
    from pipeline.shared import runfolder as rf

    monkeypatch.chdir(tmp_path)
    assert main(["compare"]) == 2 and "no evaluated run under runs/" in capsys.readouterr().err
    for name, acc in (("my photos", 0.9), ("b", 0.8)):
        run = rf.RUNS / name
        (run / rf.BUNDLE).mkdir(parents=True)
        (run / rf.METRICS).write_text(json.dumps({"accuracy": acc, "n": 10, "per_class": {}}))
        (run / rf.BUNDLE / bundle.MARKER).write_text(json.dumps({"model": "lenet5"}))
    (rf.RUNS / "prepared-only").mkdir()  # not evaluated: left out
    assert main(["compare"]) == 0
    rows = dict((r[0], r[1:]) for r in csv.reader(open(rf.RUNS / "compare.csv", encoding="utf-8")))
    assert rows[""] == ["runs/b", "runs/my photos"] and [float(a) for a in rows["test accuracy"]] == [0.8, 0.9]
