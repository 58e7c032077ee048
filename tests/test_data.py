"""The loader refuses bad files with one clear line; a good file comes back canonical."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from ftsweep.data.loading import fingerprint, load_frame
from ftsweep.errors import DataError

CFG = OmegaConf.create({"name": "commonlit", "path": None, "max_rows": None, "id_column": "id",
                        "text_column": "excerpt", "target_column": "target"})


def _frame(n=6, **changes):
    frame = pd.DataFrame({
        "id": [f"r{i}" for i in range(n)], "url_legal": "", "license": "",
        "excerpt": [f"Passage number {i} is here." for i in range(n)],
        "target": np.linspace(-2, 1, n), "standard_error": 0.5,
    })
    for column, (row, value) in changes.items():
        frame[column] = frame[column].astype(object)
        frame.loc[row, column] = value
    return frame


def _load(tmp_path, frame=None, text=None, raw=None, n_folds=2, cfg=CFG):
    path = tmp_path / "train.csv"
    if frame is not None:
        frame.to_csv(path, index=False)
    elif text is not None:
        path.write_text(text)
    elif raw is not None:
        path.write_bytes(raw)
    return load_frame(cfg, path, n_folds)


def test_good_file_loads_with_canonical_columns(tmp_path):
    out = _load(tmp_path, _frame())
    assert list(out.columns) == ["id", "excerpt", "target"]
    assert out["target"].dtype == float and len(out) == 6


def test_renamed_columns_are_configurable(tmp_path):
    frame = _frame().rename(columns={"excerpt": "text", "target": "score", "id": "key"})
    cfg = OmegaConf.merge(CFG, {"id_column": "key", "text_column": "text", "target_column": "score"})
    out = _load(tmp_path, frame, cfg=cfg)
    assert out["target"].tolist() == frame["score"].tolist()


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing", "no such file"),
        ("empty", "is empty"),
        ("header_only", "header but no rows"),
        ("semicolons", "not comma-separated"),
        ("binary", "not UTF-8"),
        ("missing_column", "missing column(s) ['target']"),
        ("nan_target", "missing, non-numeric or infinite"),
        ("inf_target", "missing, non-numeric or infinite"),
        ("string_target", "value 'hard'"),
        ("empty_text", "empty text"),
        ("blank_text", "empty text"),
        ("duplicate_id", "duplicate id"),
        ("too_few_rows", "cannot be split into cv.n_folds=10"),
        ("constant_target", "is constant"),
    ],
)
def test_bad_input_gets_one_clear_line(tmp_path, case, expected):
    n_folds = 10 if case == "too_few_rows" else 2
    kwargs = {
        "missing": {},
        "empty": {"text": ""},
        "header_only": {"text": "id,excerpt,target\n"},
        "semicolons": {"text": "id;excerpt;target\na;one text;1.0\nb;two text;2.0\n"},
        "binary": {"raw": b"id,excerpt,target\nx,\xff\xfe\xfa bad,1\n"},
        "missing_column": {"frame": _frame().drop(columns="target")},
        "nan_target": {"frame": _frame(target=(2, np.nan))},
        "inf_target": {"frame": _frame(target=(2, np.inf))},
        "string_target": {"frame": _frame(target=(3, "hard"))},
        "empty_text": {"frame": _frame(excerpt=(1, ""))},
        "blank_text": {"frame": _frame(excerpt=(1, "   "))},
        "duplicate_id": {"frame": _frame(id=(1, "r0"))},
        "too_few_rows": {"frame": _frame()},
        "constant_target": {"frame": _frame().assign(target=0.5)},
    }[case]
    with pytest.raises(DataError) as err:
        _load(tmp_path, n_folds=n_folds, **kwargs)
    message = str(err.value)
    assert expected in message
    assert "\n" not in message and "train.csv" in message


def test_max_rows_takes_a_fixed_subset(tmp_path):
    cfg = OmegaConf.merge(CFG, {"max_rows": 4})
    first = _load(tmp_path, _frame(10), cfg=cfg)
    again = load_frame(cfg, tmp_path / "train.csv", 2)
    assert len(first) == 4 and first["id"].tolist() == again["id"].tolist()


def test_ids_and_texts_stay_as_written(tmp_path):
    ids = ["00000", "00001", "0.10", "0107", "107", "1e3"]
    text = "id,excerpt,target\n" + "".join(f"{i},{t},{v}\n" for i, t, v in
                                           zip(ids, ["007", "1.50", "a b", "c", "d", "e"], [0.1, 0.2, -1, 2, 0, 1], strict=True))
    out = _load(tmp_path, text=text)
    assert out["id"].tolist() == ids  # no 0, 1, 0.1 or false duplicate of 0107 and 107
    assert out["excerpt"].tolist()[:2] == ["007", "1.50"]
    assert out["target"].tolist() == [0.1, 0.2, -1.0, 2.0, 0.0, 1.0]


def test_an_empty_id_is_refused(tmp_path):
    with pytest.raises(DataError, match="1 empty id"):
        _load(tmp_path, text="id,excerpt,target\na,one,1\n,two,2\n")


def test_fingerprint_follows_the_rows_not_the_file(tmp_path):
    base = _load(tmp_path, _frame())
    assert fingerprint(base) == fingerprint(base.copy())
    changed = base.copy()
    changed.loc[3, "target"] += 1e-9
    assert fingerprint(changed) != fingerprint(base)
    renamed = base.copy()
    renamed.loc[0, "id"] = "other"
    assert fingerprint(renamed) != fingerprint(base)


def test_a_repeated_column_name_is_refused(tmp_path):
    with pytest.raises(DataError, match=r"names column\(s\) \['target'\] more than once"):
        _load(tmp_path, text="id,excerpt,target,target\na,one,1,5\nb,two,2,6\n")


def test_targets_float32_training_cannot_hold_are_refused(tmp_path):
    """Targets around 1e30: squared errors overflow float32, and the loss would be blamed on the rate."""
    frame = _frame(target=(4, 3.2e30))
    with pytest.raises(DataError) as err:
        _load(tmp_path, frame)
    assert str(err.value) == (f"{tmp_path / 'train.csv'}: column 'target' reaches 3.2e+30 (first beyond 1e+18: row 6, id "
                              f"'r4'); training computes in float32, where the squared errors of such targets overflow; "
                              f"rescale the targets (e.g. divide them by 1e+31).")
    assert _load(tmp_path, _frame(target=(4, -1e18)))["target"].min() == -1e18  # the limit itself loads
