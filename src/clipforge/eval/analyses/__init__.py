"""The paper's further analyses, each a protocol of the evaluation suite (opt-in: ``--suite NAME``).

==============  =============================================================  ==========================
suite name      what it measures                                               reproduces (Radford et al. 2021)
==============  =============================================================  ==========================
``bias``        harmful-label rates, accuracy and top-1 per group, disparity,   §7.1, Tables 3-7 (FairFace)
                bootstrap intervals; the "add a label" experiment
``coarse_fine`` exact / close / wrong answers under a class hierarchy; top-1    §7.2 (CCTV: 91.8% vs 51.1%,
                as the label set grows                                         40.7% close), Table 8
``scaling``     zero-shot error vs training compute over a model series,        §3.1.5, Figure 9
                log-log fit and residuals
``zs_vs_probe`` zero-shot vs linear-probe accuracy across tasks, r and slope   §3.1.5, Figure 8
``adaptation``  linear classifiers fit in distribution (the paper's probe,      §3.3, Figure 14
                and one initialised from the zero-shot head) vs zero-shot,
                in distribution and on every shifted set
==============  =============================================================  ==========================

Each module holds its protocol (``run``, ``available``), its report section and its plot; the
statistics are pure functions in :mod:`~clipforge.eval.analyses.stats`, the files beside a set
they read in :mod:`~clipforge.eval.analyses.sidecars`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from clipforge.eval.analyses import adaptation, bias, coarse_fine, correlation, scaling
from clipforge.eval.analyses.adaptation import AdaptationConfig
from clipforge.eval.analyses.bias import BiasConfig
from clipforge.eval.analyses.coarse_fine import CoarseFineConfig
from clipforge.eval.analyses.scaling import ScalingConfig
from clipforge.eval.protocols import Protocol, register

ANALYSES = ("bias", "coarse_fine", "scaling", "zs_vs_probe", "adaptation")


@dataclass(frozen=True)
class AnalysisConfig:
    bias: BiasConfig = field(default_factory=BiasConfig)
    coarse_fine: CoarseFineConfig = field(default_factory=CoarseFineConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    adaptation: AdaptationConfig = field(default_factory=AdaptationConfig)


for _name, _module in zip(ANALYSES, (bias, coarse_fine, scaling, correlation, adaptation)):
    register(Protocol(_name, _module.run, _module.available, section=_module.section, plot=_module.plot, default=False))

__all__ = ["ANALYSES", "AdaptationConfig", "AnalysisConfig", "BiasConfig", "CoarseFineConfig", "ScalingConfig"]
