"""Theory against practice: a PMC run's measured draws against what the categorical
theory predicts from its first draws (paper Sec. 4; docs/method.md §4).

    python -m theory.practice RUN_DIR [--plot out.png]

RUN_DIR/results.json (pmc_min's run.py writes it) logs, for every epoch t and forget
question q, the rewards (1 - score against y0) of the n answers PMC drew, and the
teacher-forced log p(y0 | q) under the weights of that moment. Only those numbers are
read; nothing of pmc_min is imported.

The prediction treats each question on its own as a categorical model over reward
levels, p_0 = the empirical distribution of its n draws at t = 0, and applies the
idealised curated update (curated.curated_update: best of n, or Bradley-Terry at the
run's selection temperature) once per epoch:

- the mean and variance of the reward under p_t;
- the mass off the top reward level of p_0, m_t (best of n: m_{t+1} = m_t^n);
- log p_t(y0): y0 scores 0 against itself, so it sits at the lowest reward level, and
  the update scales every answer of a level alike, so
  log p_t(y0) = log p_0(y0) + log(p_t(level 0) / p_0(level 0)), which is -inf from t = 1
  on where no draw at t = 0 had reward 0.

What the theory does and does not say about a real run. It assumes that each epoch
refits the model exactly to the selected answers (no statistical error, no
approximation error, infinite capacity). A network trained with a finite learning rate
moves only part of the way towards them in an epoch, generalises across questions, and
is held back by the retain loss, so the theory predicts the direction (the reward rises,
its variance falls, y0's probability goes to 0) and the fixed point (p_0 restricted to
its top level), not the rate. PMC's best-so-far cache also trains on the best answer
ever drawn, not on this epoch's selection. The verdict says which directions hold and
how many epochs practice takes for what the idealised update does in one.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from .curated import curated_update


def levels_of(rewards: list[float]) -> tuple[list[float], list[float]]:
    """(distinct reward levels ascending, their empirical probabilities)."""
    values = sorted(set(rewards))
    return values, [rewards.count(v) / len(rewards) for v in values]


def predicted_path(rewards0: list[float], epochs: int, k: int, tau: float) -> list[list[float]]:
    """p_0 .. p_{epochs-1} over the levels of rewards0, by the exact curated update."""
    levels, p = levels_of(rewards0)
    path = [p]
    for _ in range(epochs - 1):
        nxt = curated_update(path[-1], levels, k, tau)
        total = sum(nxt)
        path.append([x / total for x in nxt])
    return path


def log_level0_ratio(rewards0: list[float], path: list[list[float]], t: int, k: int, tau: float) -> float:
    """log(p_t(level 0) / p_0(level 0)) for the level of reward 0, y0's: -inf from t = 1 on where
    no draw at t = 0 had reward 0. Best of k in closed form (the lowest level's mass L obeys
    L_{t+1} = L_t^k, so the ratio is L_0^(k^t - 1), without underflow); Bradley-Terry from the
    iterated path (-inf once it underflows)."""
    if t == 0:
        return 0.0
    if min(rewards0) != 0:
        return -math.inf
    zero0 = path[0][0]
    if tau == 0:
        return (k ** t - 1) * math.log(zero0)
    return math.log(path[t][0] / zero0) if path[t][0] > 0 else -math.inf


def compare(results: dict) -> dict:
    """Measured against predicted, per epoch t (the t-th draw; t = 0 the first)."""
    curves, config = results["curves"], results["config"]
    draws, logp = curves["draw_rewards"], curves["logp_y0"]
    k, tau = config["n_samples"], config.get("selection_temperature", 0.0)
    epochs, questions = len(draws), len(draws[0])
    first = [q for q in range(questions) if draws[0][q] is not None]
    paths = {q: predicted_path(draws[0][q], epochs, k, tau) for q in first}
    rows = []
    for t in range(epochs):
        drawn = [q for q in first if draws[t][q] is not None]
        m_meas, m_pred = {}, {}
        for q in drawn:
            levels, top, p = sorted(set(draws[0][q])), max(draws[0][q]), paths[q][t]
            r = np.asarray(draws[t][q])
            # p_0 is these draws' own distribution; later draws estimate p_t's variance without bias
            m_meas[q] = (r.mean(), r.var(ddof=1 if t > 0 and len(r) > 1 else 0), float((r < top).mean()),
                         float((r > top).mean()))
            mean = sum(pi * v for pi, v in zip(p, levels))
            m_pred[q] = (mean, sum(pi * (v - mean) ** 2 for pi, v in zip(p, levels)),
                         sum(pi for pi, v in zip(p, levels) if v < top))
        y0_meas = float(np.mean(logp[t])) if t < len(logp) else None
        y0_pred = [logp[0][q] + log_level0_ratio(draws[0][q], paths[q], t, k, tau) for q in first]
        finite = [v for v in y0_pred if v > -math.inf]
        rows.append({"t": t, "drawn": len(drawn),
                     **{f"{name}_{kind}": float(np.mean([vals[q][i] for q in drawn])) if drawn else None
                        for i, name in enumerate(("reward", "variance", "off_top"))
                        for kind, vals in (("measured", m_meas), ("predicted", m_pred))},
                     "above_top_measured": float(np.mean([m_meas[q][3] for q in drawn])) if drawn else None,
                     "logp_y0_measured": y0_meas,
                     "logp_y0_predicted": float(np.mean(finite)) if finite else -math.inf,
                     "y0_gone_predicted": len(y0_pred) - len(finite)})
    return {"k": k, "tau": tau, "questions": questions, "epochs": epochs, "rows": rows,
            "verdict": verdict(rows, logp)}


def verdict(rows: list[dict], logp: list[list[float]]) -> list[str]:
    """Which of the theory's directions hold in the run, and how far it lags the idealised rate."""
    seen = [r for r in rows if r["drawn"]]
    a, b = seen[0], seen[-1]
    out = []
    rises = b["reward_measured"] > a["reward_measured"]
    out.append(f"reward increase: {'holds' if rises else 'does not hold'} (mean reward of the draws "
               f"{a['reward_measured']:.3f} at t = 0, {b['reward_measured']:.3f} at t = {b['t']}; predicted "
               f"{b['reward_predicted']:.3f})")
    falls = b["variance_measured"] < a["variance_measured"]
    out.append(f"variance to 0: {'falls' if falls else 'does not fall'} ({a['variance_measured']:.4f} -> "
               f"{b['variance_measured']:.4f}; predicted {b['variance_predicted']:.4f} at t = {b['t']})")
    mean_logp = [float(np.mean(v)) for v in logp]
    down = mean_logp[-1] < mean_logp[0]
    one = rows[min(1, len(rows) - 1)]
    out.append(f"y0's probability to 0: mean log p(y0 | q) {'falls' if down else 'does not fall'}, "
               f"{mean_logp[0]:.2f} -> {mean_logp[-1]:.2f} nats after {len(logp) - 1} epochs; the idealised update "
               f"predicts {one['logp_y0_predicted']:.2f} after one epoch for the questions with a draw of reward 0, "
               f"and p(y0) = 0 after one for the other {one['y0_gone_predicted']}")
    reached = next((r["t"] for r in rows if r["logp_y0_predicted"] <= mean_logp[-1]), None)
    if reached is not None:
        out.append(f"y0's rate: the idealised update brings mean log p(y0 | q) to the run's final {mean_logp[-1]:.2f} "
                   f"by epoch {reached}; the run took {len(logp) - 1}")
    above = max(r["above_top_measured"] for r in seen)
    out.append(f"support: the idealised update never leaves the reward levels drawn at t = 0, so its mean reward "
               f"stops at their top; the run's draws {'go beyond it' if above > 0 else 'stay within it'} (up to "
               f"{above:.0%} of an epoch's draws score above the question's best draw at t = 0)")
    target = rows[1]["off_top_predicted"] if len(rows) > 1 else None
    if target is not None and rows[1]["drawn"]:
        hit = next((r["t"] for r in seen if r["off_top_measured"] <= target), None)
        out.append(f"rate: the idealised update takes the mass off the top level from {a['off_top_measured']:.3f} "
                   f"to {target:.3f} in one epoch; the run " +
                   (f"takes {hit} epochs" if hit is not None else f"has not got there in {b['t']} epochs "
                    f"(at t = {b['t']}: {b['off_top_measured']:.3f}, among the {b['drawn']} questions still drawn)"))
    return out


def table(report: dict) -> str:
    head = ("| t | questions drawn | mean reward (measured / predicted) | reward variance | mass off the top level "
            "| mean log p(y0 given q) |")
    lines = [head, "|---|---|---|---|---|---|"]
    for r in report["rows"]:
        def pair(name, f=".3f"):
            m, p = r[f"{name}_measured"], r[f"{name}_predicted"]
            return "—" if m is None else f"{m:{f}} / {p:{f}}"
        y0m = "—" if r["logp_y0_measured"] is None else f"{r['logp_y0_measured']:.3g}"
        lines.append(f"| {r['t']} | {r['drawn']} | {pair('reward')} | {pair('variance', '.4f')} | {pair('off_top')} "
                     f"| {y0m} / {r['logp_y0_predicted']:.3g} |")
    return "\n".join(lines)


def plot(report: dict, out: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        fail("--plot needs matplotlib: pip install -e '.[plot]'")
    rows = report["rows"]
    t = [r["t"] for r in rows]
    fig, ax = plt.subplots(1, 4, figsize=(17, 3.8))
    for a, (name, title) in zip(ax[:3], (("reward", "mean reward of the draws"), ("variance", "reward variance"),
                                         ("off_top", "mass off the top level of t = 0"))):
        a.plot(t, [r[f"{name}_measured"] for r in rows], "o-", label="measured (PMC run)")
        a.plot(t, [r[f"{name}_predicted"] for r in rows], "s--", label="idealised update")
        a.set(title=title, xlabel="epoch t")
    ax[2].set_yscale("symlog", linthresh=1e-3)
    ax[3].plot(t, [r["logp_y0_measured"] for r in rows], "o-", label="measured (PMC run)")
    pred = [r["logp_y0_predicted"] for r in rows]
    ax[3].plot([x for x, p in zip(t, pred) if p > -math.inf], [p for p in pred if p > -math.inf], "s--",
               label="idealised (questions with p(y0) > 0)")
    measured = [r["logp_y0_measured"] for r in rows if r["logp_y0_measured"] is not None]
    ax[3].set(title="mean log p(y0 | q) (idealised: off the axis below)", xlabel="epoch t",
              ylim=(2 * min(measured) - 1, 0.5))
    ax[0].legend()
    ax[3].legend(fontsize=8)
    fig.suptitle(f"PMC: theory (best of {report['k']}" + (f", Bradley-Terry tau {report['tau']}" if report["tau"]
                                                           else "") + ") against practice")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def fail(message: str):
    """Bad input: one sentence on stderr, exit code 2 (as argparse's own errors)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="the --out folder of a PMC run")
    parser.add_argument("--plot", help="write the figure here (needs matplotlib)")
    args = parser.parse_args(argv)
    path = Path(args.run_dir) / "results.json"
    try:
        results = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        fail(f"{path} cannot be read as a run's results ({e}).")
    if results.get("method") != "pmc" or not results.get("curves", {}).get("draw_rewards"):
        fail(f"{path} is not a PMC run that logged its draws (run.py --method pmc logs them).")
    report = compare(results)
    print(f"{report['questions']} forget questions, {report['epochs']} epochs, n = {report['k']}, "
          f"selection temperature {report['tau']}\n")
    print(table(report))
    print("\n" + "\n".join(f"- {line}" for line in report["verdict"]))
    if args.plot:
        plot(report, args.plot)
        print(f"\nWrote {args.plot}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
