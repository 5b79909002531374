"""The paper's main figure on the embedded default: unlearn quality against utility for
every method over a grid of configurations and seeds, each method's Pareto front, and
a second panel with fact recall (ROUGE alone rewards word salad).

    python tests/benchmarks/pareto.py [--quick] [--out runs/pareto] [--seeds N] [--jobs N] [--report]

Each point is one `run.py --method M ... --seed S --eval factleak` on the tiny
default; its results.json is kept under DIR/runs/<configuration>-s<seed>, so an
interrupted sweep resumes where it stopped (a run cut short continues from its last
complete epoch, `run.py --resume`). Writes DIR/pareto.json (every point and, per
method, the configurations on its front, from the means over seeds) and DIR/pareto.png.
2 seeds; `--jobs N` runs N points at a time, the CPU threads split between them;
`--quick`: 2 configurations per method, the 20-epoch runs (and the PMC selection-temperature
ablation at 20 epochs), a subset of the full grid that shares its cached runs. `--report`
summarises what is cached without running more.
"""

from __future__ import annotations

import argparse
import itertools
import concurrent.futures
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

LRS, EPOCHS, LAMBDAS = (1e-4, 2e-4, 5e-4), (20, 40), (0.5, 1.5)
RETAIN_TERM = ("pmc", "gd", "idk", "npo", "simnpo")  # GA has no retain term
METHODS = ("pmc", "ga", "gd", "idk", "npo", "simnpo")
TAUS = (0.1, 1.0)  # Bradley-Terry selection, beside the default argmax (tau 0)


def grid(quick: bool) -> list[dict]:
    """The configurations: learning rate x epochs (x lambda where there is a retain term),
    and the tau ablation of PMC at its default learning rate and length."""
    out = []
    for method in METHODS:
        lams = LAMBDAS if method in RETAIN_TERM else (None,)
        configs = [dict(method=method, lr=lr, epochs=e, lam=lam) for lr, e, lam in itertools.product(LRS, EPOCHS, lams)]
        out += configs
    # the tau ablation at PMC's default lr and lambda, at both lengths
    out += [dict(method="pmc", lr=2e-4, epochs=e, lam=1.5, tau=tau) for e in EPOCHS for tau in TAUS]
    if quick:  # the short runs at the two larger learning rates, lambda 1.5 (GA has none)
        out = [c for c in out if c["epochs"] == 20 and c["lam"] in (None, 1.5) and c["lr"] != 1e-4]
    # the quick grid's configurations first, then outward from them (lr, then lambda, then epochs),
    # every method at each, so that a sweep cut short has covered each method alike
    return sorted(out, key=lambda c: (c["epochs"] != 20, c.get("lam") not in (None, 1.5), c["lr"] == 1e-4,
                                      c.get("tau") is not None))


def name(config: dict) -> str:
    parts = [config["method"], f"lr{config['lr']:g}", f"e{config['epochs']}"]
    parts += [f"lam{config['lam']:g}"] if config.get("lam") is not None else []
    parts += [f"tau{config['tau']:g}"] if config.get("tau") is not None else []
    return "-".join(parts)


def flags(config: dict, seed: int) -> list[str]:
    out = ["--method", config["method"], "--lr", str(config["lr"]), "--epochs", str(config["epochs"]),
           "--seed", str(seed), "--eval", "factleak"]
    if config.get("lam") is not None:
        out += ["--lam", str(config["lam"])]
    if config.get("tau") is not None:
        out += ["--selection-temperature", str(config["tau"])]
    return out


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """The keys whose (x, y) no other point dominates (>= in both, > in one), both maximised."""
    return sorted(k for k, (x, y) in points.items()
                  if not any(a >= x and b >= y and (a > x or b > y) for j, (a, b) in points.items() if j != k))


def launch(seed: int, config: dict, folder: Path, threads: int) -> str | None:
    """One point's run.py in its own process; a folder that an interrupted sweep left with a
    run.json is resumed from its last complete epoch. Returns a failure's message, or None."""
    if (folder / "run.json").is_file():
        command = [sys.executable, "run.py", "--resume", str(folder)]
    else:
        command = [sys.executable, "run.py", *flags(config, seed), "--out", str(folder)]
    print("$", shlex.join(command[1:]), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads))}
    done = subprocess.run([*command, "--no-progress"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    return f"{folder.name} failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}" if done.returncode else None


def sweep(out: Path, quick: bool, seeds: int, run: bool = True, jobs: int = 1) -> dict:
    """Run every configuration and seed not yet cached (seed by seed, so that an interrupted sweep
    has covered the whole grid once before it repeats any of it; `jobs` runs at a time, each with
    its share of the CPU threads), then summarise. A run that fails is reported and left out.
    With run=False, summarise the cached runs only. `complete` says whether every point was there."""
    todo = [(seed, config, out / "runs" / f"{name(config)}-s{seed}")
            for seed, config in itertools.product(range(seeds), grid(quick))]
    if run:
        missing_runs = [(seed, config, folder) for seed, config, folder in todo if not (folder / "results.json").is_file()]
        threads = max(1, (os.cpu_count() or 1) // jobs)
        with concurrent.futures.ThreadPoolExecutor(jobs) as pool:  # each job is a run.py process
            for failure in pool.map(lambda t: launch(*t, threads=threads), missing_runs):
                if failure:
                    print(failure, file=sys.stderr, flush=True)
    points, missing = [], 0
    for seed, config, folder in todo:
        if not (folder / "results.json").is_file():
            missing += 1
            continue
        results = json.loads((folder / "results.json").read_text())
        r = results["after"]
        points.append({**config, "seed": seed, "name": name(config), "unlearn_quality": r["unlearn_quality"],
                       "utility": r["utility"], "fact_recall": r["robustness"]["factleak"]["greedy"],
                       "wall_seconds": results["wall_seconds"]})
    means = {}
    for p in points:
        means.setdefault(p["name"], []).append(p)
    summary = {k: {key: sum(p[key] for p in ps) / len(ps) for key in ("unlearn_quality", "utility", "fact_recall")}
               | {"method": ps[0]["method"], "seeds": len(ps),
                  "config": {c: ps[0].get(c) for c in ("lr", "epochs", "lam", "tau")}}
               for k, ps in means.items()}
    fronts = {}
    for method in METHODS:
        own = {k: v for k, v in summary.items() if v["method"] == method and v["config"]["tau"] is None}
        fronts[method] = {
            "rouge": pareto_front({k: (v["unlearn_quality"], v["utility"]) for k, v in own.items()}),
            "facts": pareto_front({k: (100 * (1 - v["fact_recall"]), v["utility"]) for k, v in own.items()})}
    return {"points": points, "means": summary, "front": fronts, "seeds": seeds, "quick": quick,
            "complete": missing == 0, "missing": missing}


def label(method: str) -> str:
    """A method's name as the figure and the table print it."""
    return "SimNPO" if method == "simnpo" else method.upper()


def plot(result: dict, path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(1, 2, figsize=(13, 5))
    means = result["means"]
    for i, method in enumerate(METHODS):
        color = f"C{i}"
        own = {k: v for k, v in means.items() if v["method"] == method and v["config"]["tau"] is None}
        for a, xkey, front in ((ax[0], "unlearn_quality", "rouge"), (ax[1], "fact_recall", "facts")):
            x = (lambda v: v[xkey]) if xkey == "unlearn_quality" else (lambda v: 100 * (1 - v["fact_recall"]))
            a.scatter([x(v) for v in own.values()], [v["utility"] for v in own.values()], color=color, alpha=0.6,
                      label=label(method))
            line = sorted((x(own[k]), own[k]["utility"]) for k in result["front"][method][front])
            a.plot([p[0] for p in line], [p[1] for p in line], color=color)
    taus = {k: v for k, v in means.items() if v["config"]["tau"] is not None}
    for k, v in taus.items():
        for a, x in ((ax[0], v["unlearn_quality"]), (ax[1], 100 * (1 - v["fact_recall"]))):
            a.scatter([x], [v["utility"]], marker="*", s=120, color="k")
            a.annotate(f"PMC tau {v['config']['tau']:g}, {v['config']['epochs']} ep", (x, v["utility"]), fontsize=7,
                       rotation=30)
    ax[0].set(xlabel="unlearn quality (ROUGE-L)", ylabel="utility", title="unlearn quality against utility")
    ax[1].set(xlabel="100 x (1 - fact recall on the forget set)", ylabel="utility",
              title="facts forgotten against utility")
    for a in ax:
        a.set_ylim(-5, 118)  # room for the tau labels above the points at utility ~100
    ax[0].legend(loc="lower left")
    done = "" if result["complete"] else f" ({len(result['points'])} of {len(result['points']) + result['missing']} runs)"
    fig.suptitle(f"tiny default, means over up to {result['seeds']} seeds{done}; lines: each method's Pareto front")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="runs/pareto")
    parser.add_argument("--seeds", type=int)
    parser.add_argument("--report", action="store_true", help="run nothing: summarise the runs cached so far")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (default 1), the CPU threads split between them")
    args = parser.parse_args()
    if args.jobs < 1 or (args.seeds is not None and args.seeds < 1):
        parser.error("--jobs and --seeds take a positive integer.")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    result = sweep(out, args.quick, args.seeds or 2, run=not args.report, jobs=args.jobs)
    (out / "pareto.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"Wrote {out / 'pareto.json'}" + (f" and {out / 'pareto.png'}" if plot(result, out / "pareto.png") else ""))
    print(table(result))


def table(result: dict) -> str:
    """The means as the markdown table of docs/results-tiny.md, method by method; * marks a configuration on its
    method's front for ROUGE, and + on its front for facts forgotten."""
    rows = ["| method | lr | epochs | λ | τ | seeds | unlearn quality | utility | fact recall | front |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for method in METHODS:
        own = sorted(((k, v) for k, v in result["means"].items() if v["method"] == method),
                     key=lambda kv: (kv[1]["config"]["tau"] is not None, kv[1]["config"]["lr"],
                                     kv[1]["config"]["epochs"], kv[1]["config"]["lam"] or 0, kv[1]["config"]["tau"] or 0))
        for k, v in own:
            c, front = v["config"], result["front"][method]
            mark = ("*" if k in front["rouge"] else "") + ("+" if k in front["facts"] else "")
            lam = "—" if c["lam"] is None else f"{c['lam']:g}"
            rows.append(f"| {label(method)} | {c['lr']:g} | {c['epochs']} | {lam} | "
                        f"{c['tau'] or 0:g} | {v['seeds']} | {v['unlearn_quality']:.1f} | "
                        f"{v['utility']:.1f} | {v['fact_recall']:.3f} | {mark} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
