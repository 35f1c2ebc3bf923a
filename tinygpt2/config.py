"""GPT-2 hyper-parameters, under Hugging Face's config.json field names.

    C = n_embd, H = n_head, D = head_dim = C // H, F = n_inner (4*C), P = n_positions = n_ctx, V = vocab_size
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from tinygpt2.errors import ConfigError

_REQUIRED = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head")
# Both name the same tanh approximation of GELU; HF's GPT-2 default is gelu_new.
_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")


@dataclass(frozen=True)
class GPT2Config:
    vocab_size: int                    # V: rows of wte (and of the tied lm_head)
    n_positions: int                   # P: rows of wpe, the context window
    n_embd: int                        # C: width of the residual stream
    n_layer: int                       # transformer blocks
    n_head: int                        # H: attention heads, C % H == 0
    layer_norm_epsilon: float = 1e-5
    n_inner: int | None = None         # F: MLP width; None means 4*C (resolved in __post_init__)

    def __post_init__(self):
        for name in _REQUIRED:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if self.n_inner is None:
            object.__setattr__(self, "n_inner", 4 * self.n_embd)
        elif not isinstance(self.n_inner, int) or isinstance(self.n_inner, bool) or self.n_inner <= 0:
            raise ConfigError(f"n_inner must be a positive integer or null, got {self.n_inner!r}")
        eps = self.layer_norm_epsilon
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ConfigError(f"layer_norm_epsilon must be a positive number, got {eps!r}")
        object.__setattr__(self, "layer_norm_epsilon", float(eps))
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")

    @property
    def head_dim(self) -> int:         # D
        return self.n_embd // self.n_head

    @property
    def n_ctx(self) -> int:            # == n_positions
        return self.n_positions

    @classmethod
    def from_dict(cls, d: dict) -> GPT2Config:
        """From the fields of an HF config.json; unknown fields are ignored."""
        if not isinstance(d, dict):
            raise ConfigError(f"a config must be a JSON object, got {type(d).__name__}")
        if d.get("model_type", "gpt2") != "gpt2":
            raise ConfigError(f"model_type is {d['model_type']!r}, not 'gpt2'")
        act = d.get("activation_function", "gelu_new")
        if act not in _ACTIVATIONS:
            raise ConfigError(f"activation_function {act!r} is not supported: GPT-2 uses 'gelu_new'")
        if not d.get("scale_attn_weights", True) or d.get("scale_attn_by_inverse_layer_idx", False):
            raise ConfigError("only the standard 1/sqrt(head_dim) attention scaling is supported "
                              "(scale_attn_weights=true, scale_attn_by_inverse_layer_idx=false)")
        missing = [k for k in _REQUIRED if k not in d]
        if missing:
            raise ConfigError(f"config is missing {', '.join(missing)}")
        kw = {k: d[k] for k in _REQUIRED}
        kw["n_inner"] = d.get("n_inner")
        if d.get("layer_norm_epsilon") is not None:
            kw["layer_norm_epsilon"] = d["layer_norm_epsilon"]
        return cls(**kw)

    @classmethod
    def from_json(cls, path: str | Path) -> GPT2Config:
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"no config file {path}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"cannot read {path}: {e}") from None
        try:
            return cls.from_dict(d)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    def to_dict(self) -> dict:
        """The fields as an HF-style config dict (from_dict(to_dict()) round-trips)."""
        return {"model_type": "gpt2", "activation_function": "gelu_new", **asdict(self)}


PRESETS: dict[str, GPT2Config] = {
    "distilgpt2": GPT2Config(50257, 1024, 768, 6, 12),          # 82M
    "gpt2": GPT2Config(50257, 1024, 768, 12, 12),               # 124M
    "gpt2-medium": GPT2Config(50257, 1024, 1024, 24, 16),       # 355M
    "gpt2-large": GPT2Config(50257, 1024, 1280, 36, 20),        # 774M
    "gpt2-xl": GPT2Config(50257, 1024, 1600, 48, 25),           # 1.5B
}
