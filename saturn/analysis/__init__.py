"""What a finished (or running) sweep produced, for the person who ran it: one row per job with the
hyperparameters that tell the jobs apart, its losses, time and checkpoint (`results`), loss curves
(`curves`), and per-step metrics streamed to a tracker while the run goes (`trackers`).

Reads only what a run directory holds (the journal, `jobs/<job>/metrics.jsonl`), so it works on a
run that is still going, one that crashed, and one from another machine. Data flows one way: this
stage reads the executor's output and never writes into the run directory.

    import saturn
    df = saturn.results("runs/tiny")          # pandas DataFrame, one row per job, best job marked
"""

from saturn.analysis.table import best_job, hyperparameters, results, sort_results

__all__ = ["best_job", "hyperparameters", "results", "sort_results"]
