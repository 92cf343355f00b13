"""The paper's controlled-sentiment experiment end to end (Zeng et al. 2024, Sec. 5.1, Fig. 2).

:func:`run_demo` runs the stages (sample, pair, train DPO/TDPO1/TDPO2, evaluate, report) with
the :data:`QUICK` or :data:`FULL` preset; each stage resumes when run again. Modules: ``config``
(presets), ``run`` (stages), ``report`` (tables, plots, report.md).
"""

from .config import FULL, METHODS, QUICK, DemoConfig
from .report import write_report
from .run import run_demo

__all__ = ["FULL", "METHODS", "QUICK", "DemoConfig", "run_demo", "write_report"]
