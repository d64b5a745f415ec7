"""Alpaca files in four formats; every bad record is reported with file and line/index."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.training.samples import write_jsonl
from training.data.loading import DataError, deduplicate, load_data, read_records, split

GOOD = {"instruction": "Define EBITDA.", "input": "", "output": "Earnings before interest..."}


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"instruction": "x", "input": ""}', "'output' is missing"),
        ('{"instruction": "", "output": "y"}', "'instruction' is empty"),
        ('{"instruction": 3, "output": "y"}', "'instruction' must be a string"),
        ('{"instruction": "x", "output": "y", "check": 5}', "'check' must be an object"),
        ('["x", "y"]', "expected an object"),
        ('{"instruction": "x", "output": ', "not valid JSON"),
    ],
)
def test_bad_jsonl_record_names_file_and_line(tmp_path: Path, line: str, reason: str) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + line + "\n", encoding="utf-8")
    with pytest.raises(DataError) as caught:
        read_records(path)
    assert str(caught.value).startswith(f"{path}: line 3: ")  # blank line 2 is skipped
    assert reason in str(caught.value)


def test_json_list_reports_record_index(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text(json.dumps([GOOD, GOOD, {"instruction": "x"}]), encoding="utf-8")
    with pytest.raises(DataError, match=r"data\.json: record 2: 'output' is missing"):
        read_records(path)


def test_broken_json_reports_line(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text('[\n{"instruction": "x",\n "output": }\n]', encoding="utf-8")
    with pytest.raises(DataError, match=r"data\.json:3: not valid JSON"):
        read_records(path)


def test_csv_reports_line_and_header(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["instruction", "input", "output"])
        writer.writerow(["Define alpha.", "", "Excess return\nover a benchmark."])  # two lines
        writer.writerow(["Define beta.", "", ""])
    with pytest.raises(DataError, match=r"data\.csv: line 4: 'output' is empty"):
        read_records(path)
    bad_header = tmp_path / "bad.csv"
    bad_header.write_text("question,answer\nq,a\n", encoding="utf-8")
    with pytest.raises(
        DataError, match=r"bad\.csv:1: header lacks column\(s\) instruction, output"
    ):
        read_records(bad_header)


def test_parquet_reports_record_index(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "data.parquet"
    rows = [GOOD, {"instruction": "Define beta.", "input": "", "output": None}]
    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(DataError, match=r"data\.parquet: record 1: 'output' is missing"):
        read_records(path)


def test_many_bad_records_are_counted(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD, {"instruction": "a"}, {"output": "b"}])
    with pytest.raises(DataError, match=r"line 2: 'output' is missing \(and 1 more bad records\)"):
        read_records(path)


def test_missing_file_and_hub_id_without_permission(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data file not found"):
        read_records(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="allow_hub_downloads=true"):
        load_data("gbharti/finance-alpaca")
    with pytest.raises(DataError, match="unsupported data file type"):
        read_records(write_jsonl(tmp_path / "d.txt", [GOOD]))


def test_check_field_is_kept_and_extra_fields_ignored(tmp_path: Path) -> None:
    check = {"kind": "npv", "params": {"r": 0.1}, "answer": 12.5, "unit": "USD"}
    path = write_jsonl(tmp_path / "d.jsonl", [dict(GOOD, check=check, source="gen")])
    (record,) = read_records(path)
    assert record.check == check and record.input == ""


def test_dedup_and_seeded_split() -> None:
    from training.data.loading import Record

    records = [Record(f"q{i}", "", f"a{i}") for i in range(40)]
    records += [Record("q1", " ", "a1 "), Record("q2", "", "a2")]  # whitespace-only repeats
    unique = deduplicate(records)
    assert len(unique) == 40
    train_a, eval_a = split(unique, 0.1, seed=7)
    train_b, eval_b = split(unique, 0.1, seed=7)
    assert eval_a == eval_b and len(eval_a) == 4 and len(train_a) == 36
    assert not {r.key for r in train_a} & {r.key for r in eval_a}
    assert split(unique, 0.1, seed=8)[1] != eval_a


def test_explicit_eval_file_removes_leaked_prompts(tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "t.jsonl", [GOOD, GOOD, dict(GOOD, instruction="Define ROE.")])
    held = write_jsonl(tmp_path / "e.jsonl", [dict(GOOD, output="another wording")])
    data = load_data(str(train), eval_path=str(held))
    assert [r.instruction for r in data.train] == ["Define ROE."]
    assert len(data.eval) == 1 and data.duplicates_dropped == 2
    assert len(data.sha256) == 64
