"""The paper's two experiments end to end, offline (Zeng et al. 2024).

:func:`run_demo`: controlled sentiment (Sec. 5.1): sample, pair, train DPO/TDPO1/TDPO2 (several
alphas and seeds), evaluate checkpoints along training, report the reward-KL frontier with a verdict
sentence. :func:`run_hh`: Anthropic HH (Table 1): held-out preference accuracy and generation
entropy. Presets :data:`QUICK`, :data:`FULL`, :data:`HH_QUICK`, :data:`HH_FULL`; every stage
resumes when run again. Modules: ``config`` (presets, time estimate), ``common`` (what both
experiments share: timings, the run folder, the training runs), ``pairs`` (sentiment prompts and
pairs), ``run`` (sentiment stages), ``hh`` (HH stages), ``curves`` (frontier, verdict), ``table1``
(the HH table), ``plots``, ``report`` (report.md, results.json).
"""

from .config import FULL, HH_FULL, HH_QUICK, METHODS, QUICK, DemoConfig, HHConfig, estimate
from .curves import frontier, verdict
from .hh import run_hh
from .report import write_report
from .run import run_demo
from .table1 import hh_sentence, hh_table

__all__ = [
    "FULL",
    "HH_FULL",
    "HH_QUICK",
    "METHODS",
    "QUICK",
    "DemoConfig",
    "HHConfig",
    "estimate",
    "frontier",
    "hh_sentence",
    "hh_table",
    "run_demo",
    "run_hh",
    "verdict",
    "write_report",
]
