"""components.data.loaders: every format x schema round trip, and every error's message."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")   # before datasets is imported anywhere

import json
import re
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.data.loaders import SCHEMAS, DataError, detect_format, load_records


@pytest.fixture(autouse=True)
def _offline_datasets(monkeypatch, tmp_path):
    """Never reach the Hub; keep any datasets cache inside tmp_path."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


# --- writers: rows -> a file (or directory) in each supported format ---------------------

def write_jsonl(path: Path, rows: list) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_json(path: Path, rows: list) -> None:
    path.write_text(json.dumps(rows))


def write_csv(path: Path, rows: list) -> None:
    """CSV has no list type: list-valued cells are written as JSON."""
    cells = [{k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in r.items()}
             for r in rows]
    pd.DataFrame(cells).to_csv(path, index=False)


def write_parquet(path: Path, rows: list) -> None:
    pq.write_table(pa.Table.from_pylist(rows), path)


def write_saved_dataset(path: Path, rows: list) -> None:
    import datasets

    datasets.Dataset.from_list(rows).save_to_disk(str(path))


WRITERS = {"data.jsonl": write_jsonl, "data.json": write_json, "data.csv": write_csv,
           "data.parquet": write_parquet, "saved_ds": write_saved_dataset}


def make(tmp_path: Path, name: str, rows: list) -> Path:
    path = tmp_path / name
    WRITERS[name](path, rows)
    return path


# --- round trips: (schema, input rows, expected canonical records) ------------------------

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"}]

ROUND_TRIPS = {
    "sft": (
        [{"messages": CHAT, "id": "a"}, {"messages": CHAT[1:], "id": "b"}],
        [{"messages": CHAT, "id": "a"}, {"messages": CHAT[1:], "id": "b"}],
    ),
    "prompt_answer": (
        [{"question": "2+2?", "answer": 4, "difficulty": "easy"},
         {"question": "3*3?", "answer": 9, "difficulty": "hard"}],
        [{"prompt": "2+2?", "answer": "4", "difficulty": "easy"},
         {"prompt": "3*3?", "answer": "9", "difficulty": "hard"}],
    ),
    "preference": (
        [{"prompt": "p1", "chosen": "good", "rejected": "bad", "id": "a"}],
        [{"prompt": "p1", "chosen": "good", "rejected": "bad", "id": "a"}],
    ),
    "ranking": (
        [{"prompt": "p", "completions": ["mid", "best", "worst"], "scores": [0.5, 0.9, 0.1],
          "id": "a"}],
        [{"prompt": "p", "responses": ["best", "mid", "worst"], "id": "a"}],
    ),
}


@pytest.mark.parametrize("name", WRITERS)
@pytest.mark.parametrize("schema", ROUND_TRIPS)
def test_round_trip_every_format_and_schema(tmp_path, name, schema):
    rows, expected = ROUND_TRIPS[schema]
    assert load_records(make(tmp_path, name, rows), schema) == expected


def test_schema_registry_names():
    assert set(SCHEMAS) == {"text", "sft", "prompt_answer", "prompt", "preference", "ranking"}


ALTERNATIVE_INPUTS = [
    ("sft", {"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Q"},
                               {"from": "gpt", "value": "A"}]},
     {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"},
                   {"role": "assistant", "content": "A"}]}),
    ("sft", {"prompt": "Q", "completion": "A"},
     {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}),
    ("text", {"prompt": "7+3*4: ", "completion": "3*4=12 7+12=19"},
     {"text": "7+3*4: 3*4=12 7+12=19", "prompt": "7+3*4: "}),
    ("text", {"content": "doc"}, {"text": "doc"}),
    ("prompt_answer", {"prompt": "Q", "answer": 2.5}, {"prompt": "Q", "answer": "2.5"}),
    ("prompt_answer", {"problem": "Q", "answer": "x"}, {"prompt": "Q", "answer": "x"}),
    ("prompt", {"prompt": "Q", "answer": None, "kind": "marked"}, {"prompt": "Q", "answer": None, "kind": "marked"}),
    ("prompt", {"question": "Q"}, {"prompt": "Q"}),
    ("preference", {"prompt": "Q",
                    "chosen": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
                    "rejected": [{"role": "assistant", "content": "B"}]},
     {"prompt": "Q", "chosen": "A", "rejected": "B"}),
    ("ranking", {"prompt": "Q", "responses": ["1st", "2nd"]}, {"prompt": "Q", "responses": ["1st", "2nd"]}),
    ("ranking", {"prompt": "Q", "completions": ["3rd", "1st", "2nd"], "ranks": [3, 1, 2]},
     {"prompt": "Q", "responses": ["1st", "2nd", "3rd"]}),
]


@pytest.mark.parametrize("schema,row,expected", ALTERNATIVE_INPUTS)
def test_alternative_input_columns(tmp_path, schema, row, expected):
    assert load_records(make(tmp_path, "data.jsonl", [row]), schema) == [expected]


def test_extra_columns_preserved_and_consumed_columns_dropped(tmp_path):
    row = {"question": "Q", "answer": "A", "id": 7, "meta": {"src": "x"}, "tags": ["t"]}
    [record] = load_records(make(tmp_path, "data.jsonl", [row]), "prompt_answer")
    assert record == {"prompt": "Q", "answer": "A", "id": 7, "meta": {"src": "x"}, "tags": ["t"]}
    assert list(record)[:2] == ["prompt", "answer"]


def test_first_matching_form_wins_and_others_stay_extras(tmp_path):
    row = {"prompt": "P", "question": "Q", "answer": "A"}
    [record] = load_records(make(tmp_path, "data.jsonl", [row]), "prompt_answer")
    assert record == {"prompt": "P", "answer": "A", "question": "Q"}


def test_column_map_renames_before_validation(tmp_path):
    path = make(tmp_path, "data.csv", [{"query": "Q", "gold": "A", "id": "1"}])
    records = load_records(path, "prompt_answer", column_map={"query": "prompt", "gold": "answer"})
    assert records == [{"prompt": "Q", "answer": "A", "id": "1"}]


def test_limit_reads_only_the_first_rows(tmp_path):
    rows = [{"prompt": f"q{i}", "answer": str(i)} for i in range(3)] + [{"prompt": 5}]
    path = make(tmp_path, "data.jsonl", rows)
    assert [r["prompt"] for r in load_records(path, "prompt_answer", limit=2)] == ["q0", "q1"]
    with pytest.raises(DataError, match="row 4"):
        load_records(path, "prompt_answer")          # no limit: the bad last row is seen
    with pytest.raises(ValueError, match="limit"):
        load_records(path, "prompt_answer", limit=0)


def test_blank_jsonl_lines_are_skipped_but_counted(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"prompt": "a", "answer": "1"}\n\n{"prompt": 3, "answer": "2"}\n')
    with pytest.raises(DataError, match=r"data\.jsonl: row 3: column 'prompt'"):
        load_records(path, "prompt_answer")


def test_csv_empty_cell_is_null(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("prompt,answer,note\nQ1,1,\nQ2,,x\n")
    assert load_records(path, "prompt_answer", limit=1) == [{"prompt": "Q1", "answer": "1", "note": None}]
    with pytest.raises(DataError, match=r"data\.csv: row 2: column 'answer': .*got null"):
        load_records(path, "prompt_answer")


def test_saved_dataset_dict_picks_split(tmp_path):
    import datasets

    rows = {"train": [{"prompt": "t", "answer": "1"}], "test": [{"prompt": "e", "answer": "2"}]}
    data = datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in rows.items()})
    data.save_to_disk(str(tmp_path / "dd"))
    assert load_records(tmp_path / "dd", "prompt_answer", split="test") == rows["test"]
    with pytest.raises(DataError, match=r"dd: no split 'dev'; available: train, test"):
        load_records(tmp_path / "dd", "prompt_answer", split="dev")


def test_hf_source_through_real_load_dataset_on_a_local_directory(tmp_path):
    (tmp_path / "hub_like").mkdir()
    write_parquet(tmp_path / "hub_like" / "train.parquet",
                  [{"question": "Q", "answer": 42, "id": "g1"}])
    records = load_records(f"hf:{tmp_path / 'hub_like'}", "prompt_answer", split="train")
    assert records == [{"prompt": "Q", "answer": "42", "id": "g1"}]


def test_hf_source_passes_name_config_split_and_revision(tmp_path, monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, config, split, revision=None):
        calls.append((name, config, split, revision))
        return datasets.Dataset.from_list([{"question": "Q", "answer": "A"}, {"question": "R"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    with pytest.raises(DataError, match=re.escape(
            "hf:openai/gsm8k (config 'main', split 'test'): row 2: column 'answer': ") + "expected"):
        load_records("hf:openai/gsm8k", "prompt_answer", config="main", split="test", revision="abc")
    assert calls == [("openai/gsm8k", "main", "test", "abc")]


def test_hf_load_failure_is_a_data_error(monkeypatch):
    import datasets

    def failing_load_dataset(name, config, split, revision=None):
        raise FileNotFoundError(f"Dataset '{name}' doesn't exist on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", failing_load_dataset)
    with pytest.raises(DataError, match=r"^hf:nobody/nothing \(split 'train'\): could not load"):
        load_records("hf:nobody/nothing", "sft")


@pytest.mark.parametrize("name,fmt", [("a.jsonl", "jsonl"), ("b.JSON", "json"), ("c.csv", "csv"),
                                      ("d.parquet", "parquet")])
def test_detect_format(tmp_path, name, fmt):
    (tmp_path / name).write_text("x")
    assert detect_format(tmp_path / name) == fmt
    assert detect_format("hf:org/name") == "hf"


# --- source-level errors: the message starts with the source ------------------------------

def test_file_not_found(tmp_path):
    with pytest.raises(DataError, match=r"^.*missing\.jsonl: file not found"):
        load_records(tmp_path / "missing.jsonl", "sft")
    with pytest.raises(DataError, match=r"^org/name: file not found \(for a Hugging Face dataset write 'hf:org/name'\)"):
        load_records("org/name", "sft")


def test_unsupported_extension_lists_supported(tmp_path):
    (tmp_path / "data.txt").write_text("hi")
    with pytest.raises(DataError, match=r"data\.txt: unsupported file extension '\.txt'; "
                                        r"supported: \.jsonl, \.json, \.parquet, \.csv"):
        load_records(tmp_path / "data.txt", "sft")


def test_plain_directory_is_not_a_dataset(tmp_path):
    with pytest.raises(DataError, match="is a directory but not a dataset written by save_to_disk"):
        load_records(tmp_path, "sft")


@pytest.mark.parametrize("name,content,message", [
    ("data.jsonl", "", "file is empty"),
    ("data.json", "", "file is empty"),
    ("data.csv", "", "file is empty"),
    ("data.jsonl", "\n\n", "no rows"),
    ("data.json", "[]", "no rows"),
    ("data.csv", "prompt,answer\n", "no rows"),
    ("data.json", '{"prompt": "a"}', "expected a JSON array of objects, got dict"),
    ("data.json", '{"a": 1}\n{"a": 2}\n', r"invalid JSON at line 2 column 1: Extra data \(one object per line"),
    ("data.parquet", "not parquet", "not a readable parquet file"),
])
def test_file_level_errors(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=f"^{re.escape(str(tmp_path / name))}: {message}"):
        load_records(tmp_path / name, "prompt_answer")


def test_zero_rows_parquet(tmp_path):
    pq.write_table(pa.table({"prompt": pa.array([], pa.string()), "answer": pa.array([], pa.string())}),
                   tmp_path / "data.parquet")
    with pytest.raises(DataError, match=r"data\.parquet: no rows"):
        load_records(tmp_path / "data.parquet", "prompt_answer")


# --- row-level errors: (schema, rows, row number, column or None, detail) -----------------

OK_PA = {"prompt": "Q", "answer": "A"}
OK_SFT = {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}


def sft_row(*messages):
    return {"messages": list(messages)}


ROW_ERRORS = [
    ("not_object", "prompt_answer", [OK_PA, ["Q", "A"]], 2, None, "expected an object, got list"),
    ("missing_column", "prompt_answer", [{"question": "Q", "id": 1}], 1, "answer",
     r"missing required column; columns present: \['id', 'question'\]; schema 'prompt_answer' "
     r"expects columns prompt\+answer \| question\+answer \| problem\+answer"),
    ("missing_any_form", "sft", [{"text": "x"}], 1, "messages",
     r"missing required column; columns present: \['text'\]; schema 'sft' expects columns "
     r"messages \| conversations \| prompt\+completion"),
    ("text_blank_completion", "text", [{"prompt": "7+3: ", "completion": " "}], 1, "completion",
     "expected a non-empty string, got a blank string"),
    ("wrong_type", "prompt_answer", [OK_PA, OK_PA, {"prompt": 5, "answer": "A"}], 3, "prompt",
     "expected a non-empty string, got int"),
    ("empty_string", "prompt_answer", [{"prompt": "", "answer": "A"}], 1, "prompt",
     "expected a non-empty string, got an empty string"),
    ("blank_string", "preference", [{"prompt": "Q", "chosen": "  ", "rejected": "B"}], 1, "chosen",
     "expected a non-empty string, got a blank string"),
    ("null", "prompt_answer", [OK_PA, {"prompt": "Q", "answer": None}], 2, "answer",
     "expected a non-empty string or a number, got null"),
    ("bool_answer", "prompt_answer", [{"prompt": "Q", "answer": True}], 1, "answer",
     "expected a non-empty string or a number, got bool"),
    ("messages_not_list", "sft", [{"messages": "hello"}], 1, "messages",
     "expected a non-empty list, got str"),
    ("messages_empty", "sft", [{"messages": []}], 1, "messages",
     "expected a non-empty list, got an empty list"),
    ("message_not_object", "sft", [sft_row("hi")], 1, "messages",
     "message 1: expected an object with 'role' and 'content', got str"),
    ("missing_role", "sft", [sft_row({"content": "Q"})], 1, "messages", "message 1: missing 'role'"),
    ("missing_content", "sft", [OK_SFT, sft_row({"role": "user", "content": "Q"}, {"role": "assistant"})],
     2, "messages", "message 2: missing 'content'"),
    ("unknown_role", "sft", [sft_row({"role": "bot", "content": "Q"})], 1, "messages",
     "message 1: unknown role 'bot'; expected one of system, user, assistant, human, gpt"),
    ("null_content", "sft", [sft_row({"role": "user", "content": "Q"}, {"role": "assistant", "content": 3})],
     1, "messages", "message 2: expected a non-empty string, got int"),
    ("no_assistant", "sft", [sft_row({"role": "user", "content": "Q"})], 1, "messages",
     "conversation has no assistant turn"),
    ("ends_with_user", "sft", [sft_row({"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"},
                                       {"role": "user", "content": "Q2"})], 1, "messages",
     "conversation must end with an assistant message, but the last one is 'user'"),
    ("no_user", "sft", [sft_row({"role": "system", "content": "S"}, {"role": "assistant", "content": "A"})],
     1, "messages", "conversation has no user message"),
    ("sharegpt_bad_role", "sft", [{"conversations": [{"from": "human", "value": "Q"},
                                                     {"from": "bing", "value": "A"}]}],
     1, "conversations", "message 2: unknown role 'bing'"),
    ("chosen_equals_rejected", "preference", [{"prompt": "Q", "chosen": "A", "rejected": "A"}], 1,
     "rejected", "identical to 'chosen'"),
    ("chosen_no_assistant", "preference",
     [{"prompt": "Q", "chosen": [{"role": "user", "content": "Q"}], "rejected": "B"}], 1, "chosen",
     "message list has no assistant turn"),
    ("ranking_one_response", "ranking", [{"prompt": "Q", "responses": ["a"]}], 1, "responses",
     "expected at least 2 responses, got 1"),
    ("ranking_duplicates", "ranking", [{"prompt": "Q", "responses": ["a", "b", "a"]}], 1, "responses",
     "contains duplicate responses"),
    ("ranking_bad_item", "ranking", [{"prompt": "Q", "responses": ["a", None]}], 1, "responses",
     "item 2: expected a non-empty string, got null"),
    ("ranks_length", "ranking", [{"prompt": "Q", "completions": ["a", "b"], "ranks": [1]}], 1, "ranks",
     "has 1 values for 2 completions"),
    ("scores_not_numbers", "ranking", [{"prompt": "Q", "completions": ["a", "b"], "scores": [1, "x"]}],
     1, "scores", "item 2: expected a finite number, got str"),
]


@pytest.mark.parametrize("schema,rows,row,column,detail",
                         [case[1:] for case in ROW_ERRORS], ids=[case[0] for case in ROW_ERRORS])
def test_row_errors_name_file_row_and_column(tmp_path, schema, rows, row, column, detail):
    path = make(tmp_path, "data.jsonl", rows)
    column_part = f"column '{column}': " if column else ""
    with pytest.raises(DataError, match=f"^{re.escape(str(path))}: row {row}: {re.escape(column_part)}{detail}"):
        load_records(path, schema)


def test_invalid_json_line_names_line_and_parser_message(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"prompt": "Q", "answer": "A"}\n{"prompt": "Q" "answer": "A"}\n')
    with pytest.raises(DataError, match=f"^{re.escape(str(path))}: row 2: invalid JSON at column 16: "
                                        "Expecting ',' delimiter"):
        load_records(path, "prompt_answer")


@pytest.mark.parametrize("name", ["data.json", "data.csv", "data.parquet", "saved_ds"])
def test_row_numbers_in_other_formats(tmp_path, name):
    path = make(tmp_path, name, [OK_PA, OK_PA, {"prompt": None, "answer": "A"}])
    with pytest.raises(DataError, match=f"^{re.escape(str(path))}: row 3: column 'prompt': .*got null"):
        load_records(path, "prompt_answer")


def test_json_element_not_an_object(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([OK_PA, 5]))
    with pytest.raises(DataError, match=r"data\.json: row 2: expected an object, got int"):
        load_records(path, "prompt_answer")


def test_column_map_errors_name_the_users_column(tmp_path):
    path = make(tmp_path, "data.jsonl", [{"query": "Q", "answer": "A"}, {"query": 1, "answer": "A"}])
    with pytest.raises(DataError, match=r"row 2: column 'query' \(mapped to 'prompt'\): expected a non-empty string"):
        load_records(path, "prompt_answer", column_map={"query": "prompt"})
    with pytest.raises(DataError, match=r"row 1: column 'qry': not found \(column_map renames it to 'prompt'\); "
                                        r"columns present: \['answer', 'query'\]"):
        load_records(path, "prompt_answer", column_map={"qry": "prompt"})
    with pytest.raises(DataError, match=r"row 1: column 'query': column_map renames it to 'answer', "
                                        r"but the data already has a column named 'answer'"):
        load_records(path, "prompt_answer", column_map={"query": "answer"})


def test_unknown_schema_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="unknown schema 'dpo'; expected one of text, sft, prompt_answer"):
        load_records(make(tmp_path, "data.jsonl", [OK_PA]), "dpo")


def test_integral_float_answers_become_integer_text(tmp_path):
    # a pandas/parquet float column (an int column that had a missing value) holds 42.0, not 42
    from components.rewards import exact_int
    write_parquet(tmp_path / "f.parquet", [{"prompt": "Q", "answer": 42.0}, {"prompt": "R", "answer": 1e20}])
    records = load_records(tmp_path / "f.parquet", "prompt_answer")
    assert [r["answer"] for r in records] == ["42", "100000000000000000000"]
    assert exact_int(["<answer>42</answer>"], answer=[records[0]["answer"]]) == [1.0]
