"""The synthetic demo set: CommonLit's schema and scale, deterministic, and learnable from text."""

from __future__ import annotations

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import Ridge
from sklearn.model_selection import cross_val_predict

from ftsweep.data.demo import COLUMNS, generate


def test_schema_scale_and_determinism():
    frame = generate(1200, seed=0)
    assert list(frame.columns) == COLUMNS == ["id", "url_legal", "license", "excerpt", "target", "standard_error"]
    assert frame["id"].is_unique and len(frame) == 1200
    assert -1.1 < frame["target"].mean() < -0.85
    assert 0.9 < frame["target"].std() < 1.1
    assert frame["target"].min() >= -3.7 and frame["target"].max() <= 1.7
    assert frame.equals(generate(1200, seed=0))
    assert not frame["excerpt"].equals(generate(1200, seed=1)["excerpt"])


def test_target_is_learnable_from_the_words():
    frame = generate(1200, seed=0)
    features = TfidfVectorizer().fit_transform(frame["excerpt"])
    pred = cross_val_predict(Ridge(alpha=1.0), features, frame["target"], cv=5)
    rmse = np.sqrt(np.mean((pred - frame["target"]) ** 2))
    assert rmse < 0.75 * frame["target"].std()  # a bag of words already beats the mean clearly
