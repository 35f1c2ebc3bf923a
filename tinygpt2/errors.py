"""Typed errors. Library code raises these; only the CLI turns them into one-line messages."""


class TinyGPT2Error(Exception):
    """Base class of every error tinygpt2 raises on purpose (bad input, missing things)."""


class ConfigError(TinyGPT2Error):
    """A config.json that is missing fields or describes something GPT-2 is not."""


class CheckpointError(TinyGPT2Error):
    """A checkpoint that is missing, unreadable, corrupt, or has the wrong tensors/shapes."""


class OfflineError(CheckpointError):
    """A Hub model id that is not in the local cache while the Hub cannot be reached."""


class TargetError(TinyGPT2Error):
    """An unknown target, or a target whose device (GPU, WebGPU adapter) is not present."""


class DTypeError(TinyGPT2Error):
    """A dtype the model or target does not support."""


class RuleError(TinyGPT2Error):
    """A rule list that cannot be parsed, or a kernel that no rule in the list scheduled."""


class CompileError(TinyGPT2Error):
    """Compilation failed (the message names the phase and the kernel where known)."""


class CacheError(CompileError):
    """The compile cache's folder (TINYGPT2_CACHE, or ~/.cache/tinygpt2) cannot be used: not a folder, not writable."""


class ContextOverflowError(TinyGPT2Error):
    """The sequence would grow past the model's context window (n_positions)."""


class GenerationError(TinyGPT2Error):
    """Bad generation arguments (negative max tokens, top_p out of range, ...)."""


class StepError(TinyGPT2Error):
    """A step-through request the model cannot satisfy (e.g. --stop-at names no launch or kernel)."""


class ExplainError(TinyGPT2Error):
    """An explain request the model cannot answer (a --kernel it does not have, code it cannot show)."""


class BenchError(TinyGPT2Error):
    """A benchmark request that cannot be measured: no decode steps, a prompt that leaves no room to decode in
    the context, no repeats, an unknown peer."""


class PeerError(TinyGPT2Error):
    """A benchmark peer (Hugging Face transformers) that cannot be run here: torch or transformers missing, or
    not importable."""
