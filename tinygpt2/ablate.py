"""Rule-list ablation: what each DLight rule is worth, per target, measured.

For every target and rule list: compile (the compile cache is keyed by the rule list), measure prefill
and decode tok/s with `bench.bench_ours` (medians), the speedup over the `none` list, and which rule
scheduled how many kernels (`Model.rule_of`). Optionally (`per_kernel`, llvm/cuda) the per-kernel time
of one decode step and one prefill (`bench.profile`), and which kernels each list made faster than
`none`. A list that fails to compile or run on a target is a failed row with a one-line reason.

    from tinygpt2 import ablate
    result = ablate.run("random:gpt2", ["llvm", "webgpu"], rule_lists=["none", "gemv", "default"])
    paths = ablate.write(result, "out/")          # ablate.md, ablate.csv, PNG charts
    again = ablate.read("out/")                   # the same result, from the CSVs (redo tables/charts)

Rule lists are preset names of `rules.presets(kind)` (what `none`, `gemv`, ... mean differs between
CPU and GPU targets), or rule names joined by '+' ("matmul+gemv+fallback") for a list of one's own.
"""

from __future__ import annotations

import csv
import datetime
import gc
import io
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from tinygpt2 import rules as R
from tinygpt2.errors import BenchError, CheckpointError, ConfigError, DTypeError, RuleError, TargetError
from tinygpt2.targets import kind as target_kind, require_device

PROFILED = ("llvm", "cuda")          # targets bench.profile can time kernel by kernel
# errors that say the request is wrong (model, dtype, device, workload), whatever the rule list: raised, not rows
REQUEST_ERRORS = (CheckpointError, ConfigError, DTypeError, TargetError, BenchError)


def default_lists(target: str) -> list[str]:
    """Every preset for the target's kind, in reading order: none, each rule alone, default, leave-one-out;
    not `auto`, which is another preset's list under a second name."""
    presets = R.presets(target_kind(target))
    table = R.CPU_RULES if target_kind(target) == "cpu" else R.GPU_RULES
    singles = [name for name in table if name in presets]
    minus = [name for name in presets if name.startswith("default-minus-")]
    order = ["none", *singles, "default", *minus]
    return order + [name for name in presets if name not in order and name != "auto"]


def rules_of(name: str, target: str) -> list[str]:
    """The rule names a rule-list name stands for on `target` (a preset, or names joined by '+')."""
    presets = R.presets(target_kind(target))
    if name in presets:
        return list(presets[name])
    return [r.strip() for r in name.replace(",", "+").split("+") if r.strip()]


@dataclass
class Row:
    target: str
    rule_list: str                       # the name given: a preset or 'a+b+c'
    rules: list[str]                     # the rule names it stands for on this target
    prefill_tok_s: float = 0.0
    decode_tok_s: float = 0.0
    prefill_speedup: float | None = None     # over the `none` row of the same target
    decode_speedup: float | None = None
    kernels_per_rule: dict = field(default_factory=dict)   # rule name ("unscheduled" for None) -> kernels
    profiles: dict = field(default_factory=dict)           # "decode"/"prefill" -> [(kernel, s, launches)]
    seconds: float = 0.0                 # wall time of this row (compile + measure)
    error: str = ""                      # one line when the list failed on this target
    prefill_runs: list = field(default_factory=list)       # tok/s of each round (the figures above: medians)
    decode_runs: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.error


@dataclass
class Ablation:
    model: str
    dtype: str
    prompt_len: int
    decode_tokens: int
    repeats: int
    rounds: int = 1                                       # whole measurements per list, interleaved
    rows: dict = field(default_factory=dict)              # target -> [Row]
    devices: dict = field(default_factory=dict)           # target -> what ran it, in words
    date: str = ""

    def baseline(self, target: str) -> Row | None:
        return next((r for r in self.rows.get(target, []) if r.rule_list == "none" and r.ok), None)


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[-1] if text else ''}"[:300]


def _device_name(target: str, m) -> str:
    if target == "webgpu":
        return f"WebGPU via wgpu on {getattr(m.executor, 'adapter_name', 'unknown adapter')}"
    if target == "cuda":
        try:
            from tinygpt2.tvm_shim import tvm
            return f"CUDA on {tvm.cuda(0).device_name}"
        except Exception:
            return "CUDA"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"CPU ({cpu}, {os.cpu_count()} cores)"


def count_rules(rule_of: dict) -> dict[str, int]:
    """kernel -> rule (or None) as rule -> number of kernels, rules in order of first appearance."""
    out: dict[str, int] = {}
    for rule in rule_of.values():
        key = rule or "unscheduled"
        out[key] = out.get(key, 0) + 1
    return out


def measure(model: str, target: str, dtype: str, name: str, *, prompt_len: int = 128, decode_tokens: int = 64,
            repeats: int = 3, per_kernel: bool = False, profile_repeats: int = 10) -> tuple[Row, str]:
    """One row: compile `model` for `target` with the list `name`, time it. Never raises for a failed list."""
    from tinygpt2 import bench as B

    row = Row(target, name, rules_of(name, target))
    device = ""
    t0 = time.perf_counter()
    m = None
    try:
        rules = name if name in R.presets(target_kind(target)) else row.rules
        bench_row, m = B.bench_ours(model, target, dtype, rules, (prompt_len,), prompt_len, decode_tokens, repeats)
        row.prefill_tok_s = bench_row.prefill_tok_s[prompt_len]
        row.decode_tok_s = bench_row.decode_tok_s
        row.prefill_runs, row.decode_runs = [row.prefill_tok_s], [row.decode_tok_s]
        row.kernels_per_rule = count_rules(m.rule_of)
        device = _device_name(target, m)
        if per_kernel and target in PROFILED:
            row.profiles = {"decode": B.profile(m, "decode", 1, prompt_len, profile_repeats),
                            "prefill": B.profile(m, "prefill", prompt_len, 0, profile_repeats)}
    except REQUEST_ERRORS:           # the request itself is wrong: no row can be measured
        raise
    except Exception as e:           # a rule list failing on a target is a result, not a crash
        row.error = _one_line(e)
    finally:
        del m
        gc.collect()
    row.seconds = time.perf_counter() - t0
    return row, device


def check(model: str, targets, dtype: str, rule_lists, prompt_len: int, decode_tokens: int, repeats: int) -> None:
    """The request's errors before anything is compiled: DTypeError, TargetError for a target with no device
    here, RuleError for a list no target takes (naming the rule), BenchError for a prompt that leaves no room
    to decode (where the context is known: peek_config)."""
    from tinygpt2 import bench as B
    from tinygpt2.dtypes import check_dtype
    from tinygpt2.weights import peek_config

    check_dtype(dtype)                                   # DTypeError
    for target in targets:                               # no GPU for one target: before another is measured
        require_device(target, dtype)
    for name in rule_lists or []:        # a list some target takes; on the others it is a failed row
        errors = []
        for target in targets:
            presets = R.presets(target_kind(target))
            try:
                R.resolve(name if name in presets else rules_of(name, target), target_kind(target))
            except RuleError as e:
                errors.append(e)
        if errors and len(errors) == len(targets):
            raise errors[0]
    cfg = peek_config(model)
    B.check_workload(cfg.n_positions if cfg else None, (prompt_len,), prompt_len, decode_tokens, repeats)


def run(model: str, targets, dtype: str = "float32", rule_lists=None, *, prompt_len: int = 128,
        decode_tokens: int = 64, repeats: int = 3, rounds: int = 1, per_kernel: bool = False,
        profile_repeats: int = 10, log=None) -> Ablation:
    """Measure every rule list on every target. `rule_lists` None: `default_lists(target)` per target.
    `none` is measured first on each target even when not asked for: it is what speedups divide by.

    `rounds` > 1 measures every list that many times, round-robin (all lists once, then all again, ...,
    from the compile cache after the first round), and reports the medians: on a shared or noisy machine
    a burst of load then hits every list alike instead of one. Per-kernel profiles: first round only."""
    if isinstance(targets, str):
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    if isinstance(rule_lists, str):
        rule_lists = [r.strip() for r in rule_lists.split(",") if r.strip()]
    log = log or (lambda msg: None)
    check(model, targets, dtype, rule_lists, prompt_len, decode_tokens, repeats)
    result = Ablation(model, dtype, prompt_len, decode_tokens, repeats, max(1, rounds),
                      date=datetime.date.today().isoformat())
    for target in targets:
        names = list(dict.fromkeys(rule_lists)) if rule_lists else default_lists(target)
        if "none" not in names:
            names.insert(0, "none")
        rows: dict[str, Row] = {}
        for rnd in range(result.rounds):
            for name in names:
                if name in rows and not rows[name].ok:
                    continue                                   # failed once: it fails again
                row, device = measure(model, target, dtype, name, prompt_len=prompt_len,
                                      decode_tokens=decode_tokens, repeats=repeats,
                                      per_kernel=per_kernel and rnd == 0, profile_repeats=profile_repeats)
                if device:
                    result.devices.setdefault(target, device)
                status = (f"prefill {row.prefill_tok_s:.1f} tok/s, decode {row.decode_tok_s:.2f} tok/s" if row.ok
                          else f"FAILED: {row.error}")
                where = f" round {rnd + 1}/{result.rounds}" if result.rounds > 1 else ""
                log(f"[{target}]{where} {name}: {status} ({row.seconds:.0f} s)")
                if name not in rows or not row.ok:
                    rows[name] = row
                else:
                    first = rows[name]
                    first.prefill_runs += row.prefill_runs
                    first.decode_runs += row.decode_runs
                    first.seconds += row.seconds
        for row in rows.values():
            if row.ok:
                row.prefill_tok_s = statistics.median(row.prefill_runs)
                row.decode_tok_s = statistics.median(row.decode_runs)
        result.rows[target] = [rows[name] for name in names]
        base = result.baseline(target)
        for row in result.rows[target]:
            if base and row.ok:
                row.prefill_speedup = row.prefill_tok_s / base.prefill_tok_s if base.prefill_tok_s else None
                row.decode_speedup = row.decode_tok_s / base.decode_tok_s if base.decode_tok_s else None
    return result


# ---- kernel attribution ------------------------------------------------------------------------

def kernel_deltas(base: list, prof: list) -> list[tuple[str, float, float, int]]:
    """[(kernel, seconds under none, seconds here, launches)] for kernels in both profiles, most time saved first."""
    before = {k: t for k, t, _ in base}
    out = [(k, before[k], t, c) for k, t, c in prof if k in before]
    return sorted(out, key=lambda r: r[2] - r[1])


def _attribution(result: Ablation, target: str, top: int) -> list[str]:
    base = result.baseline(target)
    rows = [r for r in result.rows[target] if r.ok and r.profiles]
    if not rows:
        return []
    out = [f"### Per-kernel time on {target}: which kernels each list made faster than `none`", "",
           f"One step timed kernel by kernel (bench.profile): decode of 1 token after {result.prompt_len}, "
           f"prefill of {result.prompt_len}. Time saved per step vs `none`, top {top} kernels.", ""]
    if base is None or not base.profiles:
        return out + ["(no `none` profile to compare with)", ""]
    out += ["| rule list | step | total us (none -> this) | kernels faster | top kernels by time saved (us) "
            "| top kernels by time lost (us) |",
            "|---|---|---|---|---|---|"]
    for row in rows:
        if row is base:
            continue
        for fn in ("decode", "prefill"):
            if fn not in row.profiles or fn not in base.profiles:
                continue
            deltas = kernel_deltas(base.profiles[fn], row.profiles[fn])
            faster = [d for d in deltas if d[2] < 0.95 * d[1]]
            total_base = sum(t for _, t, _ in base.profiles[fn]) * 1e6
            total = sum(t for _, t, _ in row.profiles[fn]) * 1e6
            best = ", ".join(f"{k} {1e6 * b:.0f}->{1e6 * t:.0f}" for k, b, t, _ in deltas[:top] if t < 0.95 * b)
            worst = ", ".join(f"{k} {1e6 * b:.0f}->{1e6 * t:.0f}" for k, b, t, _ in deltas[::-1][:top]
                              if t > 1.05 * b)
            out.append(f"| {row.rule_list} | {fn} | {total_base:.0f} -> {total:.0f} | {len(faster)}/{len(deltas)} "
                       f"| {best or '-'} | {worst or '-'} |")
    return out + [""]


# ---- reports -----------------------------------------------------------------------------------

def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _spread(runs: list, spec: str) -> str:
    return f" ({format(min(runs), spec)}-{format(max(runs), spec)})" if len(runs) > 1 else ""


def _duplicates(rows: list) -> list[list[str]]:
    """Groups of row names that stand for the same rule list on their target."""
    groups: dict[tuple, list[str]] = {}
    for r in rows:
        if r.ok:
            groups.setdefault(tuple(r.rules), []).append(r.rule_list)
    return [names for names in groups.values() if len(names) > 1]


def to_markdown(result: Ablation, top: int = 5) -> str:
    rounds = (f" Every list measured {result.rounds} times, round-robin: medians, (min-max) beside them."
              if result.rounds > 1 else "")
    out = [f"# Rule-list ablation: {result.model} ({result.dtype})", "",
           f"{result.date}. Prefill of {result.prompt_len} tokens; decode of up to {result.decode_tokens} tokens "
           f"after it (greedy); prefill: median of {result.repeats} repeat(s) after warm-up.{rounds} "
           "Speedups are over the "
           "`none` list of the same target (GPU: `fallback` alone; CPU: no rule). "
           "'kernels per rule' counts which rule scheduled each kernel (`Model.rule_of`).", ""]
    for target, rows in result.rows.items():
        device = result.devices.get(target, "")
        out += [f"## {target}" + (f" ({device})" if device else ""), "",
                "| rule list | rules | prefill tok/s | decode tok/s | prefill x none | decode x none | kernels per rule |",
                "|---|---|---|---|---|---|---|"]
        for r in rows:
            rules = " + ".join(r.rules) or "(no rule)"
            if r.ok:
                kinds = ", ".join(f"{k}: {v}" for k, v in r.kernels_per_rule.items())
                out.append(f"| {r.rule_list} | {rules} | {r.prefill_tok_s:.1f}{_spread(r.prefill_runs, '.1f')} | "
                           f"{r.decode_tok_s:.2f}{_spread(r.decode_runs, '.2f')} | "
                           f"{_fmt(r.prefill_speedup, '.2f')} | {_fmt(r.decode_speedup, '.2f')} | {kinds} |")
            else:
                out.append(f"| {r.rule_list} | {rules} | - | - | - | - | FAILED: {r.error.replace('|', '/')} |")
        out.append("")
        same = _duplicates(rows)
        if same:
            out += ["Measured more than once under different names, the same rule list (their difference is "
                    "run-to-run noise): " + "; ".join(" = ".join(names) for names in same) + ".", ""]
        out += _attribution(result, target, top)
    return "\n".join(out).rstrip() + "\n"


def _csv_num(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}"


CSV_FIELDS = ["target", "model", "dtype", "rule_list", "rules", "prompt_len", "decode_tokens", "repeats",
              "prefill_tok_s", "decode_tok_s", "prefill_speedup", "decode_speedup", "kernels_per_rule", "status",
              "error", "device", "date", "rounds", "prefill_runs", "decode_runs"]


def to_csv(result: Ablation) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    for target, rows in result.rows.items():
        for r in rows:
            w.writerow([target, result.model, result.dtype, r.rule_list, "+".join(r.rules), result.prompt_len,
                        result.decode_tokens, result.repeats,
                        f"{r.prefill_tok_s:.3f}" if r.ok else "", f"{r.decode_tok_s:.3f}" if r.ok else "",
                        _csv_num(r.prefill_speedup), _csv_num(r.decode_speedup),
                        ";".join(f"{k}={v}" for k, v in r.kernels_per_rule.items()),
                        "ok" if r.ok else "failed", r.error, result.devices.get(target, ""), result.date,
                        result.rounds, ";".join(f"{x:.3f}" for x in r.prefill_runs),
                        ";".join(f"{x:.3f}" for x in r.decode_runs)])
    return buf.getvalue()


def kernels_csv(result: Ablation) -> str:
    """Per-kernel profile rows (only lists that were profiled)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["target", "rule_list", "step", "kernel", "launches", "us", "us_none"])
    for target, rows in result.rows.items():
        base = result.baseline(target)
        for r in rows:
            for fn, prof in r.profiles.items():
                before = {k: t for k, t, _ in (base.profiles.get(fn, []) if base else [])}
                for k, t, c in prof:
                    w.writerow([target, r.rule_list, fn, k, c, f"{t * 1e6:.2f}",
                                f"{before[k] * 1e6:.2f}" if k in before else ""])
    return buf.getvalue()


def _val(x: float | None) -> float:
    return x if x else math.nan


def plot(result: Ablation, out: Path) -> list[Path]:
    """PNG charts (matplotlib, Agg): one per target, and the targets side by side when there are several.
    Bars start at 1x (= `none`), so a list slower than `none` points down; log scale."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    out = Path(out)
    paths = []
    title = f"{result.model} {result.dtype}, prefill {result.prompt_len} / decode {result.decode_tokens}"
    times = FuncFormatter(lambda y, _: f"{y:g}x")

    def bars(ax, xs, rows, key, width, label):
        vals = [_val(getattr(r, key)) if r is not None else math.nan for r in rows]
        ax.bar(xs, [v - 1 for v in vals], width, bottom=1.0, label=label)
        for x, v, r in zip(xs, vals, rows):
            if r is not None and not r.ok:
                ax.annotate("failed", (x, 1.0), ha="center", va="bottom", fontsize=7, color="red", rotation=90)
            elif not math.isnan(v):
                ax.annotate(f"{v:.2g}", (x, v), ha="center", va="bottom" if v >= 1 else "top", fontsize=6)

    def finish(ax, names):
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(times)
        ax.yaxis.set_minor_formatter(times)
        ax.tick_params(axis="y", which="minor", labelsize=6)
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_ylabel("speedup over 'none' (log)")
        ax.legend(fontsize=8)

    for target, rows in result.rows.items():
        names = [r.rule_list for r in rows]
        fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(names) + 2), 4.2))
        x = range(len(names))
        bars(ax, [i - 0.2 for i in x], rows, "prefill_speedup", 0.4, "prefill")
        bars(ax, [i + 0.2 for i in x], rows, "decode_speedup", 0.4, "decode")
        finish(ax, names)
        ax.set_title(f"{title} on {target}" + (f"\n{result.devices[target]}" if target in result.devices else ""),
                     fontsize=9)
        fig.tight_layout()
        path = out / f"ablate_{target}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    if len(result.rows) > 1:
        targets = list(result.rows)
        names = []
        for rows in result.rows.values():
            names += [r.rule_list for r in rows if r.rule_list not in names]
        fig, axes = plt.subplots(1, 2, figsize=(max(10.0, 1.2 * len(names) + 3), 4.4))
        width = 0.8 / len(targets)
        for ax, key in zip(axes, ("prefill_speedup", "decode_speedup")):
            for j, target in enumerate(targets):
                by_name = {r.rule_list: r for r in result.rows[target]}
                bars(ax, [i - 0.4 + width * (j + 0.5) for i in range(len(names))],
                     [by_name.get(n) for n in names], key, width, target)
            finish(ax, names)
            ax.set_title(f"{key.split('_')[0]}: {title}", fontsize=9)
        fig.tight_layout()
        path = out / "ablate_backends.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def read(folder) -> Ablation:
    """An Ablation back from the ablate.csv (+ ablate_kernels.csv) that write() left in `folder`: to redo the
    tables and charts of a run (e.g. one from the GPU machine) without measuring again."""
    folder = Path(folder)
    with open(folder / "ablate.csv") as f:
        table = list(csv.DictReader(f))
    if not table:
        raise BenchError(f"{folder / 'ablate.csv'} has no rows")
    first = table[0]
    result = Ablation(first["model"], first["dtype"], int(first["prompt_len"]), int(first["decode_tokens"]),
                      int(first["repeats"]), int(first.get("rounds") or 1), date=first.get("date") or "")

    def num(text):
        return float(text) if text else None

    for r in table:
        kinds = dict(item.split("=", 1) for item in r["kernels_per_rule"].split(";") if item)
        row = Row(r["target"], r["rule_list"], [x for x in r["rules"].split("+") if x],
                  num(r["prefill_tok_s"]) or 0.0, num(r["decode_tok_s"]) or 0.0, num(r["prefill_speedup"]),
                  num(r["decode_speedup"]), {k: int(v) for k, v in kinds.items()}, error=r["error"])
        row.prefill_runs = [float(x) for x in (r.get("prefill_runs") or "").split(";") if x]
        row.decode_runs = [float(x) for x in (r.get("decode_runs") or "").split(";") if x]
        result.rows.setdefault(r["target"], []).append(row)
        if r.get("device"):
            result.devices.setdefault(r["target"], r["device"])
    kernels = folder / "ablate_kernels.csv"
    if kernels.exists():
        with open(kernels) as f:
            for k in csv.DictReader(f):
                row = next(x for x in result.rows[k["target"]] if x.rule_list == k["rule_list"])
                row.profiles.setdefault(k["step"], []).append((k["kernel"], float(k["us"]) / 1e6, int(k["launches"])))
    return result


def write(result: Ablation, out, *, charts: bool = True) -> dict[str, Path]:
    """ablate.md, ablate.csv (+ ablate_kernels.csv when profiled) and the PNG charts, under `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "ablate.md", "csv": out / "ablate.csv"}
    paths["md"].write_text(to_markdown(result))
    paths["csv"].write_text(to_csv(result))
    if any(r.profiles for rows in result.rows.values() for r in rows):
        paths["kernels_csv"] = out / "ablate_kernels.csv"
        paths["kernels_csv"].write_text(kernels_csv(result))
    if charts:
        for p in plot(result, out):
            paths[p.stem] = p
    return paths


def ablate(model: str, targets, dtype: str = "float32", rule_lists=None, out=None, **kwargs) -> Ablation:
    """run() and, when `out` is given, write() its reports there."""
    result = run(model, targets, dtype, rule_lists, **kwargs)
    if out is not None:
        write(result, out)
    return result


__all__ = ["Ablation", "Row", "ablate", "default_lists", "rules_of", "run", "write", "read", "to_markdown", "to_csv",
           "kernels_csv", "plot", "kernel_deltas", "count_rules", "measure"]
