"""Every dataset shape and file type, detected with its explanation and standardised (tokenizer only, fast)."""

from __future__ import annotations

import csv
import json

import pytest

from data_files import config_for, sharegpt, write_jsonl
from slothctl.data import load_rows, prepare, split_mask
from slothctl.data.tokenizer import load_text_tokenizer
from slothctl.errors import DataError


@pytest.fixture(scope="module")
def tok(embedded_model):
    return load_text_tokenizer(str(embedded_model))


def run(tmp_path, embedded_model, tok, rows_or_path, **data):
    source = rows_or_path if not isinstance(rows_or_path, list) else write_jsonl(tmp_path / "d.jsonl", rows_or_path)
    return prepare(config_for(source, embedded_model, **data), tok)


def trained_text(tok, prepared, i=0):
    example = prepared.train[i]
    return tok.decode([t for t, label in zip(example.input_ids, example.labels) if label != -100])


@pytest.mark.parametrize("rows, fmt, reason, reply", [
    ([sharegpt(("system", "Be kind."), ("human", "Hi"), ("gpt", "Hello!"))] * 2, "sharegpt",
     "detected sharegpt: column `conversations` with from/value keys in 2/2 rows", "Hello!<|im_end|>"),
    ([{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}], "messages",
     "detected messages: column `messages` with role/content keys in 1/1 rows", "Hello!<|im_end|>"),
    ([{"conversations": [{"role": "developer", "content": "Be kind."}, {"role": "user", "content": "Hi"},
                         {"role": "assistant", "content": [{"type": "text", "text": "Y"},
                                                           {"type": "text", "text": "o"}]}]}], "messages",
     "detected messages: column `conversations` with role/content keys in 1/1 rows", "Yo<|im_end|>"),
    ([{"instruction": "Add", "input": "2 and 3", "output": "5"},
      {"instruction": "Say hi", "input": "", "output": "hi"}], "alpaca",
     "detected alpaca: columns `instruction` and `output` in 2/2 rows", "5<|im_end|>"),
    ([{"prompt": "Capital of Peru?", "completion": "Lima"}], "prompt_completion",
     "detected prompt_completion: columns `prompt` and `completion` in 1/1 rows", "Lima<|im_end|>"),
    ([{"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": "Hey"}]}],
     "prompt_completion", "detected prompt_completion: columns `prompt` and `completion` in 1/1 rows",
     "Hey<|im_end|>"),
    ([{"text": "Sloths move slowly."}], "text", "detected text: column `text` in 1/1 rows",
     "Sloths move slowly.<|im_end|>"),
])
def test_each_format_is_detected_explained_and_trained(tmp_path, embedded_model, tok, rows, fmt, reason, reply):
    prepared = run(tmp_path, embedded_model, tok, rows)
    assert (prepared.format, prepared.detection) == (fmt, reason)
    assert trained_text(tok, prepared) == reply
    forced = run(tmp_path, embedded_model, tok, rows, format=fmt)
    assert forced.detection == reason.replace("detected", "format")


def test_alpaca_input_and_system_become_the_prompt(tmp_path, embedded_model, tok):
    prepared = run(tmp_path, embedded_model, tok, [{"instruction": "Add", "input": "2 and 3", "output": "5",
                                                    "system": "Be exact."}])
    text = tok.decode(prepared.train[0].input_ids)
    assert "<|im_start|>system\nBe exact.<|im_end|>\n<|im_start|>user\nAdd\n\n2 and 3<|im_end|>" in text


def test_csv_json_parquet_txt_and_a_mixed_folder(tmp_path, embedded_model, tok):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a.csv").write_text('instruction,input,output\nAdd,"2, 3",5\n"Multi\nline",,ok\n', encoding="utf-8")
    (folder / "b.json").write_text(json.dumps({"data": [{"instruction": "Hi", "output": "Hello"}]}))
    pq.write_table(pa.Table.from_pylist([{"instruction": "P", "input": None, "output": "Q"}]), folder / "c.parquet")
    (folder / "notes.md").write_text("not data")
    (folder / ".hidden.jsonl").write_text("{broken")
    rows = load_rows(config_for(folder, embedded_model))
    assert rows.origin == ["a.csv:2", "a.csv:3", "b.json#1", "c.parquet#1"]
    assert rows.rows[0] == {"instruction": "Add", "input": "2, 3", "output": "5"}
    assert rows.rows[1]["instruction"] == "Multi\nline" and rows.skipped == ["notes.md"]
    prepared = run(tmp_path, embedded_model, tok, folder)
    assert prepared.format == "alpaca" and len(prepared.train) == 4

    txt = tmp_path / "book.txt"
    txt.write_text("First paragraph,\nstill first.\n\n\nSecond one.\n  \nThird.\n", encoding="utf-8")
    rows = load_rows(config_for(txt, embedded_model))
    assert [r["text"] for r in rows.rows] == ["First paragraph,\nstill first.", "Second one.", "Third."]
    assert rows.origin == ["book.txt:1", "book.txt:5", "book.txt:7"]
    assert run(tmp_path, embedded_model, tok, txt).format == "text"

    chats = tmp_path / "chats.csv"  # conversations stored as JSON text in a CSV cell
    turns = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]
    with open(chats, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["conversations"], [json.dumps(turns)]])
    prepared = run(tmp_path, embedded_model, tok, chats)
    assert prepared.format == "sharegpt" and trained_text(tok, prepared) == "Yo<|im_end|>"


def test_columns_max_rows_and_dropped_rows(tmp_path, embedded_model, tok):
    rows = [{"question": f"Q{i}", "answer": f"A{i}"} for i in range(6)]
    rows[2] = {"question": "   ", "answer": ""}  # empty
    rows[4] = {"question": "Q4"}  # no answer
    prepared = run(tmp_path, embedded_model, tok, rows, columns={"question": "prompt", "answer": "completion"},
                   max_rows=5)
    assert prepared.rows == 5 and prepared.format == "prompt_completion"
    assert prepared.detection.endswith("in 4/5 rows")
    assert [(p.row, p.origin, p.reason) for p in prepared.invalid] == [(3, "d.jsonl:3", "is empty"),
                                                                       (5, "d.jsonl:5", "`completion` is missing")]
    assert prepared.row_numbers.tolist() == [1, 2, 4]
    with pytest.raises(DataError, match="would be dropped"):
        prepare(config_for(tmp_path / "d.jsonl", embedded_model, columns={"question": "prompt",
                                                                          "answer": "completion"}, strict=True), tok)
    with pytest.raises(DataError, match="maps `questoin`, which no row has"):
        run(tmp_path, embedded_model, tok, rows, columns={"questoin": "prompt"})


def test_no_reply_and_truncation_are_counted(tmp_path, embedded_model, tok):
    long = "word " * 300
    rows = [sharegpt(("human", "Hi"), ("gpt", "Hello")), sharegpt(("human", "Only a question")),
            sharegpt(("human", long), ("gpt", "late")), sharegpt(("human", "Hi"), ("gpt", long))]
    prepared = run(tmp_path, embedded_model, tok, rows, max_seq_length=64)
    assert [(p.row, p.reason) for p in prepared.no_trained_tokens] == [
        (2, "has no assistant reply to train on"), (3, "nothing to train on in its first 64 tokens")]
    assert prepared.report["truncated"] == 2 and prepared.truncated == 2
    assert len(prepared.train) == 2 and len(prepared.train[1].input_ids) == 64 and prepared.train[1].truncated


def test_split_is_deterministic(tmp_path, embedded_model, tok):
    mask = split_mask(200, 0.1, 3407)
    assert mask.sum() == 20 and (split_mask(200, 0.1, 3407) == mask).all()
    assert not (split_mask(200, 0.1, 1) == mask).all()
    assert split_mask(1, 0.5, 0).sum() == 0 and split_mask(10, 0.0, 0).sum() == 0
    rows = [sharegpt(("human", f"Q{i}"), ("gpt", f"A{i}")) for i in range(40)]
    a = run(tmp_path, embedded_model, tok, rows, eval_fraction=0.25, seed=5)
    b = run(tmp_path, embedded_model, tok, rows, eval_fraction=0.25, seed=5, num_proc=2)
    assert (len(a.train), len(a.eval)) == (30, 10)
    assert [e.input_ids for e in a.eval] == [e.input_ids for e in b.eval]


def test_num_proc_gives_the_same_tokens(tmp_path, embedded_model, tok, monkeypatch):
    from slothctl.data import pipeline

    monkeypatch.setattr(pipeline, "CHUNK", 16)  # several chunks and worker processes on a small file
    rows = [sharegpt(("human", f"Question {i}?"), ("gpt", f"Answer {i}." * (i % 5 + 1))) for i in range(100)]
    rows[17] = {"conversations": []}
    rows[32:48] = [{"text": "a chunk without a single valid row"}] * 16
    one = run(tmp_path, embedded_model, tok, rows)
    three = run(tmp_path, embedded_model, tok, rows, num_proc=3)
    assert (one.tokens.ids == three.tokens.ids).all() and (one.tokens.trained == three.tokens.trained).all()
    assert one.report == three.report and [p.row for p in three.invalid] == [18] + list(range(33, 49))
    rows[60] = sharegpt(("narrator", "Once"), ("gpt", "Hm"))
    with pytest.raises(DataError) as failed:  # an error in a worker reaches the user whole
        run(tmp_path, embedded_model, tok, rows, num_proc=3)
    assert failed.value.one_line().startswith('d.jsonl:61 (row 61): unknown role "narrator"')
    assert "(hint: fix the row" in failed.value.one_line()


def test_hub_dataset_that_cannot_be_loaded_is_a_data_error(tmp_path, embedded_model):
    with pytest.raises(DataError) as failed:
        load_rows(config_for("nobody-xyz/no-such-dataset", embedded_model, split="train"))
    assert "cannot load hub dataset `nobody-xyz/no-such-dataset`" in failed.value.one_line()
