"""tinygpt2: GPT-2 inference as hand-written TVMScript kernels, a Relax graph and our own KV-cache
runtime, compiled per target with a pluggable DLight rule list.

    import tinygpt2
    m = tinygpt2.load("gpt2", target="llvm", dtype="float32", rules="auto")   # auto: tuned on llvm, fused on a GPU
    print(m.generate("Hello", max_new_tokens=20).text)
"""

__version__ = "0.1.0"


def load(*args, **kwargs):
    """See tinygpt2.api.load (imported lazily: `import tinygpt2` stays cheap)."""
    from tinygpt2.api import load as _load
    return _load(*args, **kwargs)


__all__ = ["load", "__version__"]
