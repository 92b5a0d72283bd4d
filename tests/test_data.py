import json

import pytest

from interpret.data import DataFileError, DataSpec, load_examples


def test_tsv_with_quotes_and_stable_ids(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text('text\tlabel\nit \'s a "gem" .\t1\nnull\t0\n')
    examples = load_examples(DataSpec(str(path)))
    assert examples.texts == ['it \'s a "gem" .', "null"]
    assert examples.labels.tolist() == [1, 0]
    assert examples.ids == ["0", "1"]
    assert load_examples(DataSpec(str(path))).fingerprint == examples.fingerprint
    path.write_text('text\tlabel\nit \'s a "gem" .\t0\nnull\t0\n')
    assert load_examples(DataSpec(str(path))).fingerprint != examples.fingerprint


def test_jsonl_pairs_and_id_column(tmp_path):
    path = tmp_path / "nli.jsonl"
    rows = [
        {"uid": "a", "premise": "p1", "hypothesis": "h1", "y": 2},
        {"uid": "b", "premise": "p2", "hypothesis": "h2", "y": 0},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    spec = DataSpec(
        str(path), text_column="premise", pair_column="hypothesis", label_column="y", id_column="uid"
    )
    examples = load_examples(spec)
    assert examples.pairs == ["h1", "h2"] and examples.ids == ["a", "b"] and examples.num_labels == 3


def test_csv_and_parquet(tmp_path):
    import pandas as pd

    frame = pd.DataFrame({"text": ["a", "b"], "label": [0, 1]})
    frame.to_csv(tmp_path / "d.csv", index=False)
    frame.to_parquet(tmp_path / "d.parquet")
    for name in ("d.csv", "d.parquet"):
        assert load_examples(DataSpec(str(tmp_path / name))).texts == ["a", "b"]


@pytest.mark.parametrize(
    ("content", "spec_kwargs", "message"),
    [
        ("text\tlabel\n", {}, "no rows"),
        ("", {}, "empty"),
        ("sentence\tlabel\nhi\t1\n", {}, "text column 'text' not found"),
        ("text\tlabel\nhi\tpositive\n", {}, "label column 'label' must hold integers"),
        ("text\tlabel\nhi\t-1\n", {}, "negative label"),
        ("text\tlabel\nhi\t1\n", {"pair_column": "hypothesis"}, "pair column 'hypothesis' not found"),
    ],
)
def test_bad_files_name_the_file_and_column(tmp_path, content, spec_kwargs, message):
    path = tmp_path / "bad.tsv"
    path.write_text(content)
    with pytest.raises(DataFileError, match=message) as error:
        load_examples(DataSpec(str(path), **spec_kwargs))
    assert str(path) in str(error.value)


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(DataFileError, match="no such file"):
        load_examples(DataSpec(str(tmp_path / "nope.tsv")))
    (tmp_path / "x.txt").write_text("a")
    with pytest.raises(DataFileError, match="unsupported extension"):
        load_examples(DataSpec(str(tmp_path / "x.txt")))
