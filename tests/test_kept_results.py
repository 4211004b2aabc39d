"""A benchmark measured in parts (``--out DIR``): finished rows survive, and rows of other
settings are refused instead of being mixed into one table."""

import json

import pytest

from benchmarks import kept_results


def test_rows_saved_in_one_run_are_kept_by_the_next(tmp_path):
    assert kept_results.load(tmp_path, {"epochs": 12}) == []
    rows = [{"seed": 0, "sdr": 4.2, "settings": {"epochs": 12}, "commit": "abc"}]
    kept_results.save(tmp_path, rows)
    assert kept_results.load(tmp_path, {"epochs": 12}) == rows
    assert not list(tmp_path.glob("*.part"))  # the file is replaced whole, nothing left beside it


def test_rows_of_other_settings_are_refused_with_the_file_and_both_settings(tmp_path):
    kept_results.save(tmp_path, [{"seed": 0, "settings": {"epochs": 3}, "commit": "abc"}])
    with pytest.raises(SystemExit) as raised:
        kept_results.load(tmp_path, {"epochs": 12})
    message = str(raised.value)
    assert str(tmp_path / kept_results.FILE) in message
    assert '"epochs": 3' in message and '"epochs": 12' in message and "--out" in message
    # the refusal touches nothing
    assert json.loads((tmp_path / kept_results.FILE).read_text())[0]["settings"] == {"epochs": 3}


def test_a_second_file_in_the_folder_is_kept_apart(tmp_path):
    kept_results.save(tmp_path, [{"full_lr": 3e-4, "settings": {"epochs": 12}, "commit": "abc"}], "plan.json")
    assert kept_results.load(tmp_path, {"epochs": 12}) == []
    assert kept_results.load(tmp_path, {"epochs": 12}, "plan.json")[0]["full_lr"] == 3e-4


def test_the_code_line_names_every_commit_and_warns_when_they_differ():
    assert kept_results.code_line([{"commit": "abc"}, {"commit": "abc"}]) == "code: abc"
    mixed = kept_results.code_line([{"commit": "abc"}, {"commit": "def+changes"}])
    assert "abc, def+changes" in mixed and "compare with care" in mixed
