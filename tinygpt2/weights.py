"""Model spec -> named numpy arrays in the layout the kernels use.

Specs: a local directory in the Hub's layout (config.json + model.safetensors, or
model.safetensors.index.json + shards), `random:<preset>`, or a Hub model id ("gpt2", "owner/name").

Names are Hugging Face's without the `transformer.` prefix. The Conv1D weights are stored by HF as
[in, out]; here they are transposed to [out, in] (y = x @ W.T), the layout DLight's GEMV rule matches:

    wte.weight                [V, C]      (also the tied lm_head)
    wpe.weight                [P, C]
    h.{i}.ln_1.weight/.bias   [C]
    h.{i}.attn.c_attn.weight  [3C, C]     h.{i}.attn.c_attn.bias  [3C]
    h.{i}.attn.c_proj.weight  [C, C]      h.{i}.attn.c_proj.bias  [C]
    h.{i}.ln_2.weight/.bias   [C]
    h.{i}.mlp.c_fc.weight     [F, C]      h.{i}.mlp.c_fc.bias     [F]
    h.{i}.mlp.c_proj.weight   [C, F]      h.{i}.mlp.c_proj.bias   [C]
    ln_f.weight/.bias         [C]

bfloat16 tensors are widened to float32 from their raw bytes (numpy has no bfloat16).

A build with `fused-decode` takes the weights with each layernorm's affine folded into the linear after it
(fold_layernorms: kernels/ln_linear.py's make_ln_linear_decode says why): ln_1 and c_attn become

    h.{i}.ln_1.c_attn.weight      [3C, C]  c_attn's W * ln_1's gamma (per column)
    h.{i}.ln_1.c_attn.bias        [3C]     c_attn's b + W @ ln_1's beta
    h.{i}.ln_1.c_attn.weight_sum  [3C]     the row sums of the folded weight, float32 in every dtype

and ln_2 and c_fc likewise (h.{i}.ln_2.c_fc.*); param_names(config, folded=True) is that list.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinygpt2.config import PRESETS, GPT2Config
from tinygpt2.dtypes import check_dtype
from tinygpt2.errors import CheckpointError, OfflineError, TinyGPT2Error

HUB_PATTERNS = ["config.json", "*.safetensors", "model.safetensors.index.json", "vocab.json", "merges.txt",
                "tokenizer.json"]
_LAYER = ("ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
          "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
          "mlp.c_proj.weight", "mlp.c_proj.bias")
_TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_RANDOM_SEED, _RANDOM_STD = 0, 0.02


@dataclass
class Checkpoint:
    config: GPT2Config
    params: dict[str, np.ndarray]   # param_names(config) -> array of param_shapes(config), dtype as requested
    tokenizer_dir: Path | None      # holds vocab.json+merges.txt or tokenizer.json, if the checkpoint has one
    source: str                     # human-readable: local path / hub id / "random:gpt2"


# (layernorm, linear) pairs that fold_layernorms folds, and the names of a pair's three folded tensors
_FOLDED = (("ln_1", "attn.c_attn"), ("ln_2", "mlp.c_fc"))


def _folded_names(ln: str, linear: str) -> tuple[str, str, str]:
    pre = f"{ln}.{linear.split('.')[-1]}"
    return f"{pre}.weight", f"{pre}.bias", f"{pre}.weight_sum"


def param_names(config: GPT2Config, folded: bool = False) -> list[str]:
    """The canonical order of the parameters (the Relax functions take them in this order); folded: with
    the layernorms folded into the linears after them (fold_layernorms)."""
    layer = list(_LAYER)
    if folded:
        for ln, linear in _FOLDED:
            at = layer.index(f"{ln}.weight")
            layer[at:at + 4] = _folded_names(ln, linear)       # ln's weight, bias, the linear's weight, bias
    names = ["wte.weight", "wpe.weight"]
    for i in range(config.n_layer):
        names += [f"h.{i}.{p}" for p in layer]
    return names + ["ln_f.weight", "ln_f.bias"]


def param_shapes(config: GPT2Config, folded: bool = False) -> dict[str, tuple[int, ...]]:
    """Shapes in our layout (linear weights [out, in]), in param_names' order."""
    C, F, V, P = config.n_embd, config.n_inner, config.vocab_size, config.n_positions
    per_layer = {"ln_1.weight": (C,), "ln_1.bias": (C,),
                 "attn.c_attn.weight": (3 * C, C), "attn.c_attn.bias": (3 * C,),
                 "attn.c_proj.weight": (C, C), "attn.c_proj.bias": (C,),
                 "ln_2.weight": (C,), "ln_2.bias": (C,),
                 "mlp.c_fc.weight": (F, C), "mlp.c_fc.bias": (F,),
                 "mlp.c_proj.weight": (C, F), "mlp.c_proj.bias": (C,)}
    for ln, linear in _FOLDED:
        weight, bias, weight_sum = _folded_names(ln, linear)
        out = per_layer[f"{linear}.bias"]
        per_layer.update({weight: per_layer[f"{linear}.weight"], bias: out, weight_sum: out})
    shapes = {"wte.weight": (V, C), "wpe.weight": (P, C)}
    for i in range(config.n_layer):
        shapes.update({f"h.{i}.{p}": s for p, s in per_layer.items()})
    shapes.update({"ln_f.weight": (C,), "ln_f.bias": (C,)})
    return {name: shapes[name] for name in param_names(config, folded)}


def param_dtype(name: str, dtype: str) -> str:
    """A parameter's dtype in a model of `dtype`: the folded row sums are float32 in every dtype."""
    return "float32" if name.endswith(".weight_sum") else dtype


def fold_layernorms(config: GPT2Config, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The parameters with ln_1 folded into c_attn and ln_2 into c_fc (param_names(config, folded=True)).

    With W' = W * gamma (per column), b' = b + W @ beta and s = W' summed over each row (float32),
    W @ ((x - mu) * rstd * gamma + beta) + b = rstd * (W' @ x - mu * s) + b': kernels/ln_linear.py's
    make_ln_linear_decode computes the right side (W' @ x and the statistics in one loop), prefill the
    left one with gamma = 1, beta = 0 (W' @ layernorm(x) + b'). kernels/ln_linear.py's fold_layernorm
    says how each is rounded.
    """
    from tinygpt2.kernels.ln_linear import fold_layernorm

    out = dict(params)
    for i in range(config.n_layer):
        for ln, linear in _FOLDED:
            gamma, beta = out.pop(f"h.{i}.{ln}.weight"), out.pop(f"h.{i}.{ln}.bias")
            w, b = out.pop(f"h.{i}.{linear}.weight"), out.pop(f"h.{i}.{linear}.bias")
            for name, a in zip(_folded_names(ln, linear), fold_layernorm(gamma, beta, w, b)):
                out[f"h.{i}.{name}"] = a
    return {name: out[name] for name in param_names(config, folded=True)}


def load_checkpoint(spec: str, dtype: str = "float32", progress: bool = True) -> Checkpoint:
    """Load `spec` (local dir, `random:<preset>` or Hub id) as arrays of `dtype` in our layout."""
    check_dtype(dtype)
    spec = str(spec)
    if spec.startswith("random:"):
        return _random_checkpoint(spec[len("random:"):], dtype)
    path = Path(spec).expanduser()
    if path.is_dir():
        return load_directory(path, dtype, source=str(path))
    if path.exists():
        raise CheckpointError(f"{spec} is a file: give the checkpoint directory (config.json + *.safetensors)")
    if _looks_like_path(spec):
        raise CheckpointError(f"no such checkpoint directory: {spec}")
    return load_directory(_hub_snapshot(spec, progress), dtype, source=spec)


def peek_config(spec: str) -> GPT2Config | None:
    """`spec`'s config without loading its weights, where that is cheap: a random:<preset> (CheckpointError if
    there is no such preset), a bundled model or a local directory with a readable config.json; None otherwise
    (a Hub id, or something load_checkpoint will reject with its own message). For checks worth making before
    a compile."""
    from tinygpt2.api import BUNDLED

    spec = str(BUNDLED.get(spec, spec))
    if spec.startswith("random:"):
        return preset_config(spec[len("random:"):])            # an unknown preset: its error now
    path = Path(spec).expanduser() / "config.json"
    try:
        return GPT2Config.from_json(path) if path.is_file() else None
    except TinyGPT2Error:
        return None


# ----------------------------------------------------------------------------------- local directories

def load_directory(path: Path, dtype: str = "float32", source: str | None = None) -> Checkpoint:
    path = Path(path)
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path} is not a checkpoint directory (no config.json)")
    config = GPT2Config.from_json(path / "config.json")
    where = _tensor_files(path)                                   # HF key -> file
    by_name: dict[str, tuple[str, Path]] = {}                     # our name -> (HF key, file)
    for key, file in where.items():
        name = key[len("transformer."):] if key.startswith("transformer.") else key
        m = re.match(r"h\.(\d+)\.", name)
        if m and int(m.group(1)) >= config.n_layer:
            raise CheckpointError(f"{file}: tensor {key!r} is past n_layer={config.n_layer} of config.json")
        by_name.setdefault(name, (key, file))

    shapes = param_shapes(config)
    wanted: dict[Path, list[str]] = {}
    for name in param_names(config):
        if name not in by_name:
            raise CheckpointError(f"{path}: tensor {name!r} (or 'transformer.{name}') is missing")
        wanted.setdefault(by_name[name][1], []).append(name)

    params: dict[str, np.ndarray] = {}
    for file, names in wanted.items():
        with _SafetensorsFile(file) as f:
            for name in names:
                key = by_name[name][0]
                transposed = name.endswith(_TRANSPOSED)
                expect = shapes[name][::-1] if transposed else shapes[name]
                got = f.shape(key)
                if got != expect:
                    raise CheckpointError(f"{file}: tensor {key!r} has shape {list(got)}, expected {list(expect)} "
                                          f"(from config.json)")
                a = f.get(key)
                params[name] = np.ascontiguousarray(a.T if transposed else a, dtype=dtype)
                del a
    return Checkpoint(config, {n: params[n] for n in param_names(config)}, _tokenizer_dir(path),
                      source or str(path))


def _tensor_files(path: Path) -> dict[str, Path]:
    """HF tensor key -> the .safetensors file that holds it."""
    index, single = path / "model.safetensors.index.json", path / "model.safetensors"
    if single.is_file():
        with _SafetensorsFile(single) as f:
            return {k: single for k in f.keys()}
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            out = {str(k): path / str(v) for k, v in weight_map.items()}
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"cannot read {index}: {e!r}") from None
        for shard in sorted(set(out.values())):
            if not shard.is_file():
                raise CheckpointError(f"{index} names shard {shard.name}, which is missing")
        return out
    others = sorted(path.glob("*.safetensors"))
    if len(others) == 1:
        with _SafetensorsFile(others[0]) as f:
            return {k: others[0] for k in f.keys()}
    hint = " (found pytorch_model.bin: convert it to safetensors)" if (path / "pytorch_model.bin").exists() else ""
    raise CheckpointError(f"{path} has no model.safetensors or model.safetensors.index.json{hint}")


class _SafetensorsFile:
    """safe_open(framework="numpy") with errors turned into CheckpointError naming the file, and bf16."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        from safetensors import safe_open
        try:
            self._cm = safe_open(str(self.path), framework="numpy")
            self.f = self._cm.__enter__()
        except Exception as e:                               # SafetensorError, OSError
            raise CheckpointError(f"cannot read {self.path}: corrupt or truncated safetensors file ({e})") from None
        return self

    def __exit__(self, *exc):
        self._cm.__exit__(*exc)

    def keys(self) -> list[str]:
        return list(self.f.keys())

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.f.get_slice(key).get_shape())

    def get(self, key: str) -> np.ndarray:
        try:
            if self.f.get_slice(key).get_dtype() == "BF16":
                return self._bf16(key)
            return self.f.get_tensor(key)
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(f"cannot read tensor {key!r} from {self.path}: {e}") from None

    def _bf16(self, key: str) -> np.ndarray:
        """bfloat16 is the high half of a float32: widen the raw 16-bit words."""
        with open(self.path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            info = json.loads(fh.read(n))[key]
            start, end = info["data_offsets"]
            fh.seek(8 + n + start)
            raw = np.frombuffer(fh.read(end - start), dtype="<u2")
        if raw.size != int(np.prod(info["shape"])):
            raise CheckpointError(f"{self.path}: tensor {key!r} is truncated")
        return (raw.astype(np.uint32) << 16).view(np.float32).reshape(info["shape"])


def _tokenizer_dir(path: Path) -> Path | None:
    has = lambda n: (path / n).is_file()                         # noqa: E731
    return path if (has("vocab.json") and has("merges.txt")) or has("tokenizer.json") else None


def _looks_like_path(spec: str) -> bool:
    """Hub ids are `name` or `owner/name`; anything else with a separator is meant as a path."""
    return (spec.startswith((".", "~", "/")) or spec.count("/") > 1 or (os.sep != "/" and os.sep in spec)
            or (os.altsep is not None and os.altsep != "/" and os.altsep in spec))


# ------------------------------------------------------------------------------------------- random

def preset_config(preset: str) -> GPT2Config:
    """The config of random:<preset>; CheckpointError naming the presets if there is none of that name."""
    if preset not in PRESETS:
        raise CheckpointError(f"unknown preset {preset!r} in 'random:{preset}': choose one of {', '.join(PRESETS)}")
    return PRESETS[preset]


def _random_checkpoint(preset: str, dtype: str) -> Checkpoint:
    """Seeded random weights with a preset's real shapes: N(0, 0.02) matrices, LN ones/zeros, zero biases.

    Drawing 1.5B normals one by one takes ~10-20 s on a CPU, so one pool of 2^25 normals is drawn and
    every matrix is copied from windows of it at random offsets (i.i.d. within each window; windows
    overlap only by chance between tensors). Deterministic: seed 0.
    """
    config = preset_config(preset)
    rng = np.random.default_rng(_RANDOM_SEED)
    pool = rng.standard_normal(1 << 25, dtype=np.float32)
    pool *= np.float32(_RANDOM_STD)
    pool = pool.astype(dtype, copy=False)
    params = {}
    for name, shape in param_shapes(config).items():
        if len(shape) == 2:
            a = np.empty(shape, dtype)
            flat, pos = a.reshape(-1), 0
            while pos < flat.size:
                off = int(rng.integers(pool.size))
                k = min(flat.size - pos, pool.size - off)
                flat[pos:pos + k] = pool[off:off + k]
                pos += k
        elif ".ln_" in f".{name}" and name.endswith(".weight"):
            a = np.ones(shape, dtype)
        else:
            a = np.zeros(shape, dtype)
        params[name] = a
    return Checkpoint(config, params, None, f"random:{preset}")


# ---------------------------------------------------------------------------------------------- Hub

_ALTERNATIVES = "use a local checkpoint directory, a bundled model (--model shakespeare) or random weights"


def _offline_message(repo_id: str, why: str = "cannot reach the Hugging Face Hub") -> str:
    return (f"{why} to download {repo_id!r} and it is not in the local cache; "
            f"{_ALTERNATIVES} (--model random:{_suggest(repo_id)})")


def _suggest(repo_id: str) -> str:
    name = repo_id.rsplit("/", 1)[-1]
    return name if name in PRESETS else "gpt2"


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: " + " ".join(str(e).split())[:300]


def _hub_timeout() -> float:
    """Seconds the Hub probe may take: HF_HUB_ETAG_TIMEOUT if set, else 3."""
    try:
        return float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or 3.0)
    except ValueError:
        return 3.0


def _hub_offline_env() -> bool:
    import huggingface_hub.constants as hfc
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE") or hfc.HF_HUB_OFFLINE


def _complete(d: Path) -> bool:
    """A cached snapshot with config.json and all its safetensors."""
    if not (d / "config.json").is_file():
        return False
    try:
        return bool(_tensor_files(d))
    except CheckpointError:
        return False


def hub_config(repo_id: str) -> Path:
    """config.json of a Hub model (for its shapes alone: tinygpt2 explain): from the local cache, else that
    one file downloaded; the same checks and one-line errors (OfflineError, ...) as a whole checkpoint's."""
    return _hub_snapshot(repo_id, progress=False, config_only=True) / "config.json"


def _hub_snapshot(repo_id: str, progress: bool, config_only: bool = False) -> Path:
    """The snapshot directory of `repo_id`: from the local cache if complete there, else downloaded
    (config_only: complete with config.json alone, and only that file downloaded).

    The cache is used without asking the Hub for a newer revision. huggingface_hub 2.x sends its repo
    lookup with no timeout (a host that accepts the connection and never answers hangs it for
    minutes), so before downloading, the Hub is probed with one request bounded by _hub_timeout().
    """
    import huggingface_hub as hf
    from huggingface_hub import errors as hfe
    from huggingface_hub.utils import (are_progress_bars_disabled, disable_progress_bars, enable_progress_bars,
                                       validate_repo_id)

    try:
        validate_repo_id(repo_id)
    except hfe.HFValidationError:
        raise CheckpointError(f"{repo_id!r} is not a local directory, 'random:<preset>' or a Hub model id "
                              "('gpt2', 'owner/name')") from None

    def not_found(e: BaseException) -> CheckpointError | None:
        if isinstance(e, hfe.GatedRepoError):
            return CheckpointError(f"{repo_id!r} on the Hugging Face Hub is gated: log in (hf auth login) "
                                   "and accept its terms first")
        if isinstance(e, (hfe.RepositoryNotFoundError, hfe.RevisionNotFoundError)):
            return CheckpointError(f"no model {repo_id!r} on the Hugging Face Hub (and no such local directory)")
        return None

    patterns = ["config.json"] if config_only else HUB_PATTERNS
    try:                                                          # 1. the local cache, no network
        d = Path(hf.snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
        if (d / "config.json").is_file() if config_only else _complete(d):
            return d
    except Exception:                                             # not cached / incomplete snapshot
        pass
    if _hub_offline_env():
        raise OfflineError(_offline_message(repo_id, "HF_HUB_OFFLINE is set, so cannot use the Hugging Face Hub"))
    try:                                                          # 2. is the Hub there? (one bounded request)
        hf.HfApi().model_info(repo_id, timeout=_hub_timeout())
    except Exception as e:                                        # connection/timeout errors, HTTP errors
        raise (not_found(e) or OfflineError(_offline_message(repo_id))) from e
    quiet = not progress and not are_progress_bars_disabled()
    if quiet:
        disable_progress_bars()
    try:                                                          # 3. download (huggingface_hub's tqdm bars)
        d = Path(hf.snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as e:
        err = not_found(e) or OfflineError(f"downloading {repo_id!r} from the Hugging Face Hub failed "
                                           f"({_one_line(e)}); {_ALTERNATIVES}")
        raise err from e
    finally:
        if quiet:
            enable_progress_bars()
    if not (d / "config.json").is_file():
        raise CheckpointError(f"{repo_id!r} on the Hugging Face Hub has no config.json: not a transformers model")
    return d
