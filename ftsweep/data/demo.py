"""A synthetic stand-in for CommonLit's train.csv, generated deterministically.

Each passage has a hidden difficulty. Difficulty raises the share of rare,
long words and the length of sentences; the target is a noisy linear function
of those observable text features, scaled like CommonLit's (mean about -0.96,
sd about 1.03, clipped to -3.7 .. 1.7). A model that reads the text can
therefore learn it, but not perfectly: the noise sets a floor near 0.45 RMSE.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import ndtri  # scipy.stats.norm.ppf, bit for bit, without importing scipy.stats (~1 s)

COLUMNS = ["id", "url_legal", "license", "excerpt", "target", "standard_error"]

# Three tiers per part of speech: everyday, school-level, academic.
_WORDS = {
    "noun": (
        "cat dog sun ball tree house boy girl car book fish bird cake hat road park farm milk "
        "bed cup door hill lake pig box toy rain ship king map",
        "garden village teacher journey market captain river forest engine letter island doctor "
        "winter kitchen window bridge mountain library student farmer soldier station picture "
        "animal family planet meadow harbor castle",
        "hypothesis phenomenon infrastructure jurisprudence metabolism equilibrium constituency "
        "archipelago bureaucracy photosynthesis sovereignty paradigm catalyst dichotomy topography "
        "legislation methodology proliferation epistemology manuscript circumference precipitation "
        "enzyme chromosome consortium aristocracy ordinance apparatus quantification implication",
    ),
    "verb": (
        "ran saw had got sat ate hid hit fed met made took gave held kept found liked played "
        "jumped looked",
        "carried noticed followed gathered visited discovered wandered painted finished prepared "
        "watched remembered answered explored repaired",
        "corroborated necessitated precipitated circumscribed promulgated exacerbated substantiated "
        "disseminated ameliorated extrapolated scrutinized instantiated reconciled delineated "
        "perpetuated",
    ),
    "adj": (
        "big red small hot old new good sad fat wet tall fun soft fast kind",
        "quiet gentle careful ancient curious bright narrow golden distant famous heavy clever "
        "silent crowded frozen",
        "ubiquitous idiosyncratic multifarious perfunctory quintessential surreptitious incongruous "
        "ostensible recalcitrant pernicious heterogeneous magnanimous inexorable esoteric sanguine",
    ),
    "link": (
        "and then but so",
        "while because after although",
        "whereas notwithstanding consequently insofar",
    ),
}
_TIERS = {pos: [tier.split() for tier in tiers] for pos, tiers in _WORDS.items()}
_DETERMINERS = ["the", "a", "this", "that", "every", "one"]
_PREPOSITIONS = ["in", "on", "near", "under", "beyond", "across", "beside"]


def _tier_probs(difficulty: float) -> np.ndarray:
    logits = np.array([1.2 - 1.1 * difficulty, 0.6, -1.4 + 1.5 * difficulty])
    p = np.exp(logits - logits.max())
    return p / p.sum()


def _word(rng: np.random.Generator, pos: str, probs: np.ndarray) -> str:
    tier = _TIERS[pos][rng.choice(3, p=probs)]
    return tier[rng.integers(len(tier))]


def _noun_phrase(rng: np.random.Generator, probs: np.ndarray, adjectives: int) -> list[str]:
    words = [_DETERMINERS[rng.integers(len(_DETERMINERS))]]
    words += [_word(rng, "adj", probs) for _ in range(adjectives)]
    return words + [_word(rng, "noun", probs)]


def _clause(rng: np.random.Generator, probs: np.ndarray, difficulty: float) -> list[str]:
    adjectives = lambda: int(rng.poisson(max(0.2, 0.6 + 0.5 * difficulty)))  # noqa: E731
    words = _noun_phrase(rng, probs, adjectives()) + [_word(rng, "verb", probs)]
    words += _noun_phrase(rng, probs, adjectives())
    if rng.random() < 0.4 + 0.2 * difficulty:
        words += [_PREPOSITIONS[rng.integers(len(_PREPOSITIONS))]] + _noun_phrase(rng, probs, adjectives())
    return words


def _sentence(rng: np.random.Generator, difficulty: float) -> tuple[str, int]:
    probs = _tier_probs(difficulty)
    words = _clause(rng, probs, difficulty)
    for _ in range(int(rng.poisson(max(0.1, 0.5 + 0.6 * difficulty)))):
        words += [_word(rng, "link", probs)] + _clause(rng, probs, difficulty)
    text = " ".join(words)
    return text[0].upper() + text[1:] + ".", len(words)


def _passage(rng: np.random.Generator, difficulty: float, n_words: int) -> tuple[str, dict]:
    sentences, lengths = [], []
    while sum(lengths) < n_words:
        text, length = _sentence(rng, difficulty)
        sentences.append(text)
        lengths.append(length)
    words = " ".join(sentences).replace(".", "").lower().split()
    rare = set(_TIERS["noun"][2] + _TIERS["verb"][2] + _TIERS["adj"][2] + _TIERS["link"][2])
    features = {
        "rare_share": sum(w in rare for w in words) / len(words),
        "word_length": float(np.mean([len(w) for w in words])),
        "sentence_length": float(np.mean(lengths)),
    }
    return " ".join(sentences), features


def generate(n_rows: int = 1200, words_per_passage: int = 45, seed: int = 0, noise: float = 0.45) -> pd.DataFrame:
    """Return a CommonLit-shaped frame of ``n_rows`` synthetic passages."""
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(0.0, 1.0, n_rows)
    texts, feats = zip(*(_passage(rng, d, words_per_passage) for d in difficulty), strict=True)
    f = pd.DataFrame(list(feats))
    z = (f - f.mean()) / f.std(ddof=0)
    signal = -(0.5 * z["rare_share"] + 0.3 * z["word_length"] + 0.2 * z["sentence_length"])
    # Rank-gauss: the features are skewed; a normal signal keeps the target CommonLit-shaped.
    signal = ndtri((signal.rank().to_numpy() - 0.5) / n_rows)
    raw = np.sqrt(1 - noise**2) * signal + noise * rng.normal(0.0, 1.0, n_rows)
    target = np.clip(-0.96 + 1.03 * raw, -3.7, 1.7)
    return pd.DataFrame(
        {
            "id": [f"demo{i:05d}" for i in range(n_rows)],
            "url_legal": "",
            "license": "",
            "excerpt": texts,
            "target": np.round(target, 6),
            "standard_error": np.round(rng.uniform(0.43, 0.55, n_rows), 6),
        },
        columns=COLUMNS,
    )
