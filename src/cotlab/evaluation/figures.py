"""The comparison report's figures, rendered offline to PNG by matplotlib (Agg: no display, no browser, no network),
so reports/compare.md shows them in any Markdown viewer: accuracy with Wilson intervals per task, the training loss
of every method, CODI's loss parts, the Markovian monitors and the transplant curves.

Each figure reads the CSVs the training stages write under plots/train/<model>/<task>.csv; a figure whose curves are
all absent is skipped (its system did not run), never drawn empty.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

def read_curve(path: Path) -> dict[str, list[float]]:
    """A CSV of numbers by column; blank cells (a part not logged at that step) are skipped with their step."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    columns: dict[str, list[float]] = {}
    for name in rows[0] if rows else []:
        columns[name] = [float(r[name]) if r[name] not in ("", None) else float("nan") for r in rows]
    return columns


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
                         "axes.spines.right": False, "axes.unicode_minus": False, "figure.dpi": 100})
    return plt


def palette() -> tuple:
    """matplotlib's ten categorical colours (tab10), in order: series i keeps its colour across figures."""
    import matplotlib

    return matplotlib.colormaps["tab10"].colors


def _save(fig, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", bbox_inches="tight", metadata={"Software": None})  # no version: same bytes
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path.name


def accuracy_figure(result: dict[str, dict[str, dict]], path: Path, trivial: dict[str, dict] | None = None) -> str:
    """One panel per task: each model's accuracy (flexible extraction) with its Wilson interval, as points on a
    0-100 % axis, so a reader sees at once which intervals overlap; the task's majority-class and chance levels
    (`trivial`, compare.baselines) as reference lines, and a collapsed model (one answer on >= 90% of rows) drawn as a
    red cross with "(collapsed)" beside its name."""
    plt = _pyplot()
    tasks = sorted(result)
    heights = [max(1.2, 0.32 * len(result[t]) + 0.6) for t in tasks]
    fig, axes = plt.subplots(len(tasks), 1, figsize=(7.5, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, task in zip(axes[:, 0], tasks):
        models = sorted(result[task])
        acc = [100 * result[task][m]["accuracy"] for m in models]
        low = [a - 100 * result[task][m]["accuracy_ci_low"] for a, m in zip(acc, models)]
        high = [100 * result[task][m]["accuracy_ci_high"] - a for a, m in zip(acc, models)]
        collapsed = [bool(result[task][m].get("collapsed")) for m in models]
        ax.errorbar(acc, range(len(models)), xerr=[low, high], fmt="none", ecolor="#555555", capsize=3)
        for y, (a, c) in enumerate(zip(acc, collapsed)):
            ax.plot(a, y, "x" if c else "o", color="#d62728" if c else palette()[0], markersize=6 if c else 4)
        levels = (trivial or {}).get(task, {})
        for key, label, style in (("majority_accuracy", f"majority ({levels.get('majority_answer')})", "--"),
                                  ("chance", "chance", ":")):
            if levels.get(key) is not None:
                ax.axvline(100 * levels[key], color="#7f7f7f", linestyle=style, linewidth=1, label=label)
        ax.set_yticks(range(len(models)), [f"{m} (collapsed)" if c else m for m, c in zip(models, collapsed)])
        ax.set_ylim(-0.6, len(models) - 0.4)
        ax.invert_yaxis()
        ax.set_xlim(0, 100)
        ax.set_title(f"{task} (n = {result[task][models[0]]['n']})", loc="left", fontsize=10)
        ax.set_xlabel("accuracy % (95% Wilson interval)")
        if levels:
            ax.legend(fontsize=7, frameon=False, loc="lower right")
    fig.tight_layout()
    return _save(fig, path)


Series = tuple[str, Path, str]  # (legend label, the CSV, its column)


def lines_figure(panels: Sequence[tuple[str, Sequence[Series], str]], path: Path, columns: int = 2) -> str | None:
    """Panels of lines against the step: (title, series, y label). A series whose CSV or column is absent is left
    out, a panel with none is dropped, and with no panel at all nothing is written (None)."""
    curves: dict[Path, dict[str, list[float]]] = {}

    def points(csv_path: Path, column: str) -> list[tuple[float, float]] | None:
        if not csv_path.is_file():
            return None
        data = curves.setdefault(csv_path, read_curve(csv_path))
        if column not in data or "step" not in data:
            return None
        return [(step, v) for step, v in zip(data["step"], data[column]) if v == v]  # NaN: not logged at that step

    drawn = [(title, [(label, pts) for label, csv_path, column in series if (pts := points(csv_path, column))],
              ylabel) for title, series, ylabel in panels]
    drawn = [panel for panel in drawn if panel[1]]
    if not drawn:
        return None
    plt = _pyplot()
    rows = (len(drawn) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.2 * rows), squeeze=False)
    colors = palette()
    for ax, (title, series, ylabel) in zip(axes.flat, drawn):
        for i, (label, pts) in enumerate(series):
            ax.plot([s for s, _ in pts], [v for _, v in pts], label=label, color=colors[i % len(colors)],
                    marker="o" if len(pts) < 12 else None, markersize=3)
        ax.set_title(title, loc="left", fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8, frameon=False)
    for ax in list(axes.flat)[len(drawn):]:
        ax.set_visible(False)
    fig.tight_layout()
    return _save(fig, path)


def report_figures(result: dict[str, dict[str, dict]], plots_dir: str | Path, out_dir: str | Path,
                   train_tasks: dict[str, list[str]], trivial: dict[str, dict] | None = None) -> list[tuple[str, str]]:
    """Every figure of the report into out_dir: (title, file name) in report order. `train_tasks` maps a trained
    model (sft, codi, markovian, ...) to the tasks it trained on."""
    plots, out = Path(plots_dir), Path(out_dir)
    csv_of = lambda model, task, suffix="": plots / model / f"{task}{suffix}.csv"  # noqa: E731
    tasks = lambda *models: [(m, t) for m in models for t in train_tasks.get(m, [])]  # noqa: E731
    supervised = [(f"{model}: training loss", [(task, csv_of(model, task), "loss") for _, task in tasks(model)],
                   "loss") for model in ("sft", "cot_distill", "dpo", "cot_sft", "codi")]
    codi = [(f"codi@{task}: loss parts", [(part, csv_of("codi", task), part)
                                           for part in ("ce_student", "ce_teacher", "distill")], "loss")
            for _, task in tasks("codi")]
    dpo = [(f"dpo@{task}: loss parts", [(part.replace("_", " "), csv_of("dpo", task), part)
                                        for part in ("loss", "preference_term", "calibration_term")], "loss")
           for _, task in tasks("dpo")]
    markovian = [(ylabel, [(f"{m}@{t}", csv_of(m, t, suffix), column)
                                         for m, t in tasks("markovian", "non_markovian")], ylabel)
                 for column, suffix, ylabel in (("answer_logprob", "", "gold answer log-prob (nats)"),
                                                ("reward", "", "reward R"),
                                                ("kl", "", "KL to the frozen model (nats/token)"),
                                                ("repetition", "", "repetition share"),
                                                ("accuracy", "_eval", "held-out accuracy"))]
    transplant = [(f"{m}@{t}: test items", [(column.removeprefix("test_"), csv_of(m, t, "_curves"), column)
                                            for column in ("test_accuracy", "test_argument_correct_rate",
                                                           "test_follows_argument_rate")], "rate")
                  for m, t in tasks("transplant", "transplant_masked", "no_transplant")]
    figures = [
        ("Accuracy per task, with 95% Wilson intervals (dashed: majority class; dotted: chance; red cross: collapsed)",
         accuracy_figure(result, out / "accuracy.png", trivial)),
        ("Training loss per method and task", lines_figure(supervised, out / "training_loss.png")),
        ("CODI's loss parts: the student's CE, the teacher's CE, the distillation term",
         lines_figure(codi, out / "codi_loss_parts.png")),
        ("DPO's loss parts: the preference term and Cal-DPO's calibration term (0 in epochs without it)",
         lines_figure(dpo, out / "dpo_loss_parts.png", columns=3)),
        ("Markovian training monitors", lines_figure(markovian, out / "markovian_monitors.png")),
        ("Transplant curves: the verdict's accuracy, the argument's own correctness rate, and how often the verdict "
         "follows the argument", lines_figure(transplant, out / "transplant_curves.png", columns=3)),
    ]
    return [(title, name) for title, name in figures if name]
