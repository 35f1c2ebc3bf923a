#!/usr/bin/env python3
"""Train the small GPT-2 shipped in tinygpt2/assets/shakespeare/ (issue 4).

Uses torch + transformers' GPT2LMHeadModel; neither is a runtime dependency of tinygpt2, only of
this script.  Input: the corpus from scripts/build_corpus.py (train.txt, val.txt).  The real GPT-2
tokenizer (tinygpt2/assets/gpt2-vocab, 50257 tokens) is used, so the model is an ordinary GPT-2
checkpoint, just small.

Data splits:
  train  -- train.txt minus its last --dev-tokens tokens (random 256-token windows)
  dev    -- the last --dev-tokens tokens of train.txt, never trained on; picks the checkpoint
  val    -- val.txt, two whole held-out plays; reported only, never used for any decision

Schedule: AdamW, linear warmup, then cosine decay driven by progress = the larger of (elapsed
time / time cap) and (tokens seen / --max-epochs), so a run ends at its cap whatever the
hardware's speed; bf16 autocast on CUDA.  Several --max-epochs / --dropout values make a small
sweep inside the --minutes budget (split evenly over the runs still to go); the run and step with
the lowest dev loss is saved, in float16, with metrics.json beside it.

Smoke test on CPU (a minute or two; evaluation dominates on a small CPU):
  python scripts/build_corpus.py --out /tmp/shk
  python scripts/train_shakespeare.py --data /tmp/shk --device cpu --minutes 0.2 \\
      --max-train-tokens 20000 --batch-size 8 --warmup 5 --out /tmp/shk-smoke

The shipped model (one H100, ~6 minutes; see tinygpt2/assets/shakespeare/README.md):
  python scripts/build_corpus.py --out .device/shakespeare
  python scripts/train_shakespeare.py --data .device/shakespeare --out /tmp/shk --minutes 7 \\
      --max-epochs 6 15 40 --dropout 0.1 0.2 --warmup 100
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
VOCAB_DIR = REPO / "tinygpt2" / "assets" / "gpt2-vocab"
EOT = 50256


def log(*a):
    print(*a, flush=True)


def gpt2_tokenizer():
    # tokenizers directly: GPT2TokenizerFast's file arguments differ between transformers 4 and 5
    from tokenizers import ByteLevelBPETokenizer
    tok = ByteLevelBPETokenizer(str(VOCAB_DIR / "vocab.json"), str(VOCAB_DIR / "merges.txt"))
    assert tok.get_vocab_size() == 50257 and tok.encode("ROMEO:\n").ids == [33676, 4720, 25, 198]
    return tok


def tokenize(text: str) -> torch.Tensor:
    return torch.tensor(gpt2_tokenizer().encode(text).ids, dtype=torch.long)


def make_model(args, dropout: float):
    from transformers import GPT2Config, GPT2LMHeadModel
    cfg = GPT2Config(
        vocab_size=50257, n_positions=args.n_positions, n_embd=args.n_embd,
        n_layer=args.n_layer, n_head=args.n_head, n_inner=4 * args.n_embd,
        activation_function="gelu_new", resid_pdrop=dropout, embd_pdrop=dropout,
        attn_pdrop=dropout, layer_norm_epsilon=1e-5, initializer_range=0.02,
        bos_token_id=EOT, eos_token_id=EOT, tie_word_embeddings=True)
    model = GPT2LMHeadModel(cfg)
    model.tie_weights()
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    return model


@torch.no_grad()
def strided_nll(model, tokens: torch.Tensor, ctx: int, device, amp, batch=32):
    """Mean next-token NLL over all of `tokens` (every token after the first is scored once),
    with sliding windows of `ctx` tokens and stride ctx//2 (each scored token sees >= ctx//2 of
    context, except at the start)."""
    model.eval()
    stride = ctx // 2
    n = tokens.numel()
    # windows: (start, first scored target index within window)
    wins = []
    start = 0
    while True:
        end = min(start + ctx + 1, n)
        first = 0 if start == 0 else ctx - stride
        wins.append((start, end, first))
        if end == n:
            break
        start += stride
    total, count = 0.0, 0
    for i in range(0, len(wins), batch):
        chunk = wins[i:i + batch]
        L = max(e - s for s, e, _ in chunk)
        x = torch.full((len(chunk), L - 1), EOT, dtype=torch.long)
        y = torch.full((len(chunk), L - 1), -100, dtype=torch.long)
        for j, (s, e, first) in enumerate(chunk):
            seg = tokens[s:e]
            x[j, :seg.numel() - 1] = seg[:-1]
            tgt = seg[1:].clone()
            tgt[:first] = -100
            y[j, :seg.numel() - 1] = tgt
        x, y = x.to(device), y.to(device)
        with amp():
            logits = model(x).logits
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1),
                               ignore_index=-100, reduction="sum")
        total += loss.item()
        count += int((y != -100).sum())
    model.train()
    assert count == n - 1, (count, n)
    return total / count


def unigram_baseline(train: torch.Tensor, val: torch.Tensor, vocab=50257) -> float:
    counts = torch.bincount(train, minlength=vocab).double() + 1.0  # add-one smoothing
    logp = counts.log() - counts.sum().log()
    return float(-logp[val].mean())


def train_one(args, run, train, dev, val, device, amp, cuda, time_cap):
    """One training run from scratch; returns its record and the best-dev-loss weights."""
    max_epochs, dropout = run
    torch.manual_seed(args.seed)
    model = make_model(args, dropout).to(device)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8,
                            **({"fused": True} if cuda else {}))
    ctx = args.n_positions
    token_cap = max_epochs * len(train) if max_epochs else float("inf")
    g = torch.Generator().manual_seed(args.seed)
    hi = len(train) - ctx - 1
    history, best = [], {"dev_loss": float("inf"), "state": None}
    step, tokens_seen, train_ema = 0, 0, None
    t0 = time.time()
    next_eval = args.eval_frac

    def evaluate(lr):
        d = strided_nll(model, dev, ctx, device, amp)
        v = strided_nll(model, val, ctx, device, amp)
        el = time.time() - t0
        rec = {"step": step, "tokens": tokens_seen, "epochs": round(tokens_seen / len(train), 2),
               "seconds": round(el, 1), "lr": lr,
               "train_loss_ema": None if train_ema is None else round(train_ema, 4),
               "dev_loss": round(d, 4), "val_loss": round(v, 4)}
        history.append(rec)
        mark = ""
        if d < best["dev_loss"]:
            best.update(dev_loss=d, step=step, tokens=tokens_seen, seconds=round(el, 1),
                        state={k: t.detach().to("cpu", copy=True)
                               for k, t in model.state_dict().items()})
            mark = " *"
        log(f"step {step:6d} | {el:6.1f}s | epochs {rec['epochs']:6.2f} | "
            f"train {rec['train_loss_ema'] or float('nan'):.4f} | dev {d:.4f} | val {v:.4f} | "
            f"lr {lr:.2e}{mark}")

    model.train()
    lr = 0.0
    while True:
        # progress through the run: whichever of the time cap and the epoch cap comes first
        prog = max((time.time() - t0) / time_cap, tokens_seen / token_cap)
        if prog >= 1.0:
            break
        if prog >= next_eval:
            evaluate(lr)
            next_eval += args.eval_frac
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * (
            args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * prog)))
        for grp in opt.param_groups:
            grp["lr"] = lr
        ix = torch.randint(0, hi, (args.batch_size,), generator=g)
        batch = torch.stack([train[i:i + ctx + 1] for i in ix.tolist()])
        x = batch[:, :-1].to(device, non_blocking=True)
        y = batch[:, 1:].to(device, non_blocking=True)
        with amp():
            logits = model(x).logits
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        step += 1
        tokens_seen += x.numel()
        if step % 10 == 0 or step < 10:
            li = loss.item()
            train_ema = li if train_ema is None else 0.9 * train_ema + 0.1 * li
    seconds = time.time() - t0
    evaluate(lr)
    rec = {"max_epochs": max_epochs, "dropout": dropout, "time_cap_s": round(time_cap, 1),
           "steps": step, "tokens_seen": tokens_seen,
           "epochs": round(tokens_seen / len(train), 2), "train_seconds": round(seconds, 1),
           "best_dev_loss": round(best["dev_loss"], 4), "best_step": best["step"],
           "best_tokens": best["tokens"], "best_seconds": best["seconds"], "history": history}
    log(f"run done: {step} steps, {tokens_seen:,} tokens ({rec['epochs']} epochs) in "
        f"{seconds:.0f}s; best dev {best['dev_loss']:.4f} at step {best['step']}")
    state = best["state"]
    del model, opt
    if cuda:
        torch.cuda.empty_cache()
    return rec, state


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="data/shakespeare", help="dir with train.txt and val.txt")
    ap.add_argument("--out", default="out/shakespeare")
    ap.add_argument("--minutes", type=float, default=7.0,
                    help="training time budget, all runs together (default %(default)s)")
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=192)
    ap.add_argument("--n-head", type=int, default=6)
    ap.add_argument("--n-positions", type=int, default=256)
    ap.add_argument("--dropout", type=float, nargs="+", default=[0.1],
                    help="one value, or several to sweep")
    ap.add_argument("--max-epochs", type=float, nargs="+", default=[0],
                    help="cap a run at this many epochs (0: time only); several values sweep. "
                         "The cosine schedule ends at whichever cap comes first")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr-ratio", type=float, default=0.05)
    ap.add_argument("--warmup", type=int, default=200, help="warmup steps")
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--eval-frac", type=float, default=0.05,
                    help="evaluate dev/val every this fraction of a run")
    ap.add_argument("--dev-tokens", type=int, default=40000)
    ap.add_argument("--max-train-tokens", type=int, default=0, help="use only a slice (smoke)")
    ap.add_argument("--seed", type=int, default=1337)
    args = ap.parse_args(argv)

    t_start = time.time()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        device_name = torch.cuda.get_device_name(device)
        amp = lambda: torch.autocast("cuda", dtype=torch.bfloat16)  # noqa: E731
    else:
        import platform
        device_name = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} threads)"
        amp = lambda: torch.autocast("cpu", enabled=False)  # noqa: E731
    import transformers
    log(f"device: {device_name}; torch {torch.__version__}, transformers {transformers.__version__}")

    data = Path(args.data)
    train_all = tokenize((data / "train.txt").read_text(encoding="utf-8"))
    val = tokenize((data / "val.txt").read_text(encoding="utf-8"))
    unigram = unigram_baseline(train_all, val)
    dev = train_all[-args.dev_tokens:]
    train = train_all[:-args.dev_tokens]
    if args.max_train_tokens:
        train = train[:args.max_train_tokens]
        dev = dev[:max(1000, args.max_train_tokens // 20)]
        val = val[:max(1000, args.max_train_tokens // 20)]
    ctx = args.n_positions
    train_probe = train[len(train) // 2: len(train) // 2 + min(len(val), len(train) // 4)]
    log(f"tokens: train {len(train):,}  dev {len(dev):,}  val {len(val):,}  "
        f"(unigram baseline on val: {unigram:.4f} nats, ppl {math.exp(unigram):.0f})")
    n_params = sum(p.numel() for p in make_model(args, 0.0).parameters())
    log(f"model: {args.n_layer} layers, n_embd {args.n_embd}, {args.n_head} heads "
        f"(head_dim {args.n_embd // args.n_head}), n_positions {ctx}, {n_params:,} parameters")

    runs = [(e, d) for d in args.dropout for e in args.max_epochs]
    budget = args.minutes * 60.0
    t_train = time.time()
    sweep, best_state, best_i = [], None, None
    for i, run in enumerate(runs):
        left = budget - (time.time() - t_train)
        time_cap = max(left / (len(runs) - i), 1.0)
        log(f"\n=== run {i + 1}/{len(runs)}: max_epochs {run[0] or '-'}, dropout {run[1]}, "
            f"time cap {time_cap:.0f}s ===")
        rec, state = train_one(args, run, train, dev, val, device, amp, cuda, time_cap)
        sweep.append(rec)
        if best_i is None or rec["best_dev_loss"] < sweep[best_i]["best_dev_loss"]:
            best_i, best_state = i, state
    train_seconds = time.time() - t_train
    chosen = sweep[best_i]
    log(f"\nchosen by dev loss: run {best_i + 1} (max_epochs {chosen['max_epochs'] or '-'}, "
        f"dropout {chosen['dropout']}), step {chosen['best_step']}")

    model = make_model(args, chosen["dropout"]).to(device)
    model.load_state_dict(best_state)
    val_loss = strided_nll(model, val, ctx, device, amp)
    dev_loss = strided_nll(model, dev, ctx, device, amp)
    train_loss = strided_nll(model, train_probe, ctx, device, amp)

    # samples from the chosen checkpoint (fp32 weights here; the shipped file is fp16)
    tok = gpt2_tokenizer()
    model.eval()
    prompt = torch.tensor([tok.encode("ROMEO:\n").ids], device=device)
    with torch.no_grad():
        greedy = model.generate(prompt, max_new_tokens=60, do_sample=False, pad_token_id=EOT)
        torch.manual_seed(0)
        sampled = model.generate(prompt, max_new_tokens=60, do_sample=True, top_k=50,
                                 temperature=0.8, pad_token_id=EOT)
    samples = {"greedy": tok.decode(greedy[0].tolist()),
               "sampled_T0.8_top50_seed0": tok.decode(sampled[0].tolist())}

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.half()
    model.config.resid_pdrop = model.config.embd_pdrop = model.config.attn_pdrop = 0.0  # inference
    model.save_pretrained(out, safe_serialization=True)
    (out / "generation_config.json").unlink(missing_ok=True)
    for f in ("vocab.json", "merges.txt"):
        shutil.copyfile(VOCAB_DIR / f, out / f)
    size = (out / "model.safetensors").stat().st_size

    metrics = {
        "train_loss": round(train_loss, 4), "train_ppl": round(math.exp(train_loss), 2),
        "dev_loss": round(dev_loss, 4), "dev_ppl": round(math.exp(dev_loss), 2),
        "val_loss": round(val_loss, 4), "val_ppl": round(math.exp(val_loss), 2),
        "unigram_val_loss": round(unigram, 4), "unigram_val_ppl": round(math.exp(unigram), 2),
        "loss_note": "mean next-token cross-entropy in nats per GPT-2 token, fp32 weights of the "
                     "chosen checkpoint, sliding 256-token windows with stride 128; train_loss on "
                     f"a {len(train_probe):,}-token slice of the training text; dev = last "
                     f"{len(dev):,} tokens of train.txt (not trained on, used to pick the "
                     "checkpoint); val = the held-out plays (used for nothing)",
        "val_tokens": len(val), "dev_tokens": len(dev), "train_tokens": len(train),
        "chosen_run": best_i + 1, "max_epochs": chosen["max_epochs"],
        "dropout": chosen["dropout"], "steps": chosen["best_step"],
        "tokens_seen": chosen["best_tokens"],
        "epochs": round(chosen["best_tokens"] / len(train), 2),
        "seconds_to_checkpoint": chosen["best_seconds"],
        "sweep_train_seconds": round(train_seconds, 1),
        "wall_seconds": round(time.time() - t_start, 1),
        "device": device_name, "torch": torch.__version__, "transformers": transformers.__version__,
        "parameters": n_params, "safetensors_bytes": size, "args": vars(args),
        "samples": samples,
        "sweep": sweep,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    log(f"\n{'run':>4}{'max_ep':>8}{'drop':>6}{'steps':>8}{'epochs':>8}{'best_dev':>10}{'@step':>8}")
    for i, r in enumerate(sweep):
        log(f"{i + 1:>4}{r['max_epochs'] or '-':>8}{r['dropout']:>6}{r['steps']:>8}"
            f"{r['epochs']:>8}{r['best_dev_loss']:>10.4f}{r['best_step']:>8}"
            + ("  <- chosen" if i == best_i else ""))
    log(f"\n{'split':<8}{'loss':>8}{'ppl':>10}")
    for k in ("train", "dev", "val"):
        log(f"{k:<8}{metrics[k + '_loss']:>8.4f}{metrics[k + '_ppl']:>10.2f}")
    log(f"{'unigram':<8}{unigram:>8.4f}{math.exp(unigram):>10.2f}   (val, add-one smoothed)")
    log(f"\nmodel.safetensors: {size:,} bytes; {n_params:,} parameters; saved to {out}")
    for k, v in samples.items():
        log(f"\n--- {k} ---\n{v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
