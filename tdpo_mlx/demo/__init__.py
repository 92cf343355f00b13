"""The paper's controlled-sentiment experiment end to end (Zeng et al. 2024, Sec. 5.1, Fig. 2).

:func:`run_demo` runs the stages (sample, pair, train DPO/TDPO1/TDPO2, evaluate, report) with
the :data:`QUICK` or :data:`FULL` preset; each stage resumes when run again.
"""

from .run import FULL, METHODS, QUICK, DemoConfig, run_demo

__all__ = ["FULL", "METHODS", "QUICK", "DemoConfig", "run_demo"]
