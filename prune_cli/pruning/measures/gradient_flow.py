"""Gradient-based measures: the gradient-flow table of Lubana and Dick ("A Gradient Flow
Framework For Analyzing Network Pruning", ICLR 2021; METHODS.md section 6) and Good et al.'s
Undecayed Pruning (NeurIPS 2022; METHODS.md section 2).

=========================  =======================  =========================================
measure                    per weight               per filter f (row of W.view(out, -1))
=========================  =======================  =========================================
loss_preservation          |theta g|                sum |theta g|   (SNIP on filters; GP)
biased_loss_preservation   |theta^2 g|              sum |theta^2 g|
grasp                      theta Hg                 sum theta Hg    (GraSP, T = 200)
gradient_norm              |theta Hg|               |sum theta Hg|  (T = 1)
taylor                     |theta g|                |sum theta g|   (Taylor first order)
fisher                     theta^2 E[g_b^2]         sum theta^2 E[g_b^2]
undecayed                  |-theta g + eps theta^2| sum of those
=========================  =======================  =========================================

g is the mean gradient over the scoring sample; E[g_b^2] is the mean over its batches of the
squared batch gradient (Fisher as Lubana and Dick's code computes it, ``cal_grad_fisher``: each
batch weighted by its size), not the square of the mean g, which cancels gradients that disagree
across batches.

GraSP and gradient-norm compute g and Hg on a class-balanced sample: one batch of
``samples_per_class`` examples per class (null: ``samples`` // classes, the authors'
``imp_samples / num_classes``), Hg the mean over those batches, as the authors' ``cal_hg``.
GraSP divides the logits by its own ``grasp_temperature`` (200); gradient-norm always scores at
T = 1, whatever ``score_temperature`` the method has, as the authors' ``main.py`` forces
(``grasp_T = 1`` for ``grad_preserve``).

Their *filter* scores take Hg over every parameter of the model (``hessian_grad_all``: BatchNorm,
the classifier, an unpruned first convolution), as the authors' ``cal_hg`` does; their
*per-weight* scores (``method=flow``: GraSP at initialisation) take it over the scored weights
only (``hessian_grad``), as Wang et al. and SynFlow's code do.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from prune_cli.pruning.derivatives import Sample
from prune_cli.pruning.measures import IMPORTANCE, Measure, Site

GRAD = frozenset({"grad"})
HG = frozenset({"hessian_grad"})
#: H g over every parameter of the model (Lubana and Dick's ``cal_hg``): the filter scores'
HG_ALL = frozenset({"hessian_grad_all"})


def class_balanced(base: Sample, per_class: int | None, temperature: float) -> Sample:
    """``base`` as a class-balanced sample (one batch per class) at ``temperature``:
    ``per_class`` examples of each class, or with None ``base.samples`` // classes."""
    return dataclasses.replace(
        base,
        batches=None,
        samples=base.samples if per_class is None else None,
        per_class=per_class,
        balanced=True,
        temperature=temperature,
    )


@IMPORTANCE.register("loss_preservation")
@dataclass
class LossPreservation(Measure):
    """|theta g|: the first-order loss change of removing the weight (SNIP; GP of Good et al.)."""

    needs: ClassVar[frozenset[str]] = GRAD

    def weight(self, site: Site) -> Tensor:
        return (site.theta * site.g).abs()


@IMPORTANCE.register("biased_loss_preservation")
@dataclass
class BiasedLossPreservation(Measure):
    needs: ClassVar[frozenset[str]] = GRAD

    def weight(self, site: Site) -> Tensor:
        return (site.theta**2 * site.g).abs()


@IMPORTANCE.register("taylor")
@dataclass
class Taylor(Measure):
    """|theta g| per weight; per filter the sum is taken before the absolute value."""

    needs: ClassVar[frozenset[str]] = GRAD

    def weight(self, site: Site) -> Tensor:
        return (site.theta * site.g).abs()

    def filter(self, site: Site) -> Tensor:
        return site.rows(site.theta * site.g).sum(dim=1).abs()


@IMPORTANCE.register("fisher")
@dataclass
class Fisher(Measure):
    """theta^2 E[g_b^2]: squared Taylor first order with the empirical Fisher (Theis et al.
    2018; Lubana and Dick's ``fisher``), the squares taken per batch before the mean."""

    needs: ClassVar[frozenset[str]] = frozenset({"grad_sq"})

    def weight(self, site: Site) -> Tensor:
        return site.theta**2 * site.g2


@IMPORTANCE.register("grasp")
@dataclass
class Grasp(Measure):
    """theta Hg (GraSP, Wang et al. 2020): on a class-balanced sample, logits / temperature
    (both from ``settings``: ``grasp_temperature``, ``samples_per_class``); per filter, Hg over
    all parameters (Lubana and Dick)."""

    needs: ClassVar[frozenset[str]] = HG
    filter_needs: ClassVar[frozenset[str] | None] = HG_ALL

    @property
    def grasp_temperature(self) -> float:
        return self.settings.grasp_temperature

    @property
    def samples_per_class(self) -> int | None:
        """Examples of each class; null: the base sample's ``samples`` // classes (the
        authors')."""
        return self.settings.samples_per_class

    def sample(self, base: Sample) -> Sample:
        return class_balanced(base, self.samples_per_class, self.grasp_temperature)

    def weight(self, site: Site) -> Tensor:
        return site.theta * site.hg


@IMPORTANCE.register("gradient_norm")
@dataclass
class GradientNorm(Measure):
    """|theta Hg| per weight; per filter the sum is taken before the absolute value, with Hg
    over all parameters. Scored as the authors' ``grad_preserve``: at T = 1 (not the method's
    ``score_temperature``) on GraSP's class-balanced sample (``samples_per_class``)."""

    needs: ClassVar[frozenset[str]] = HG
    filter_needs: ClassVar[frozenset[str] | None] = HG_ALL
    #: the authors' main.py sets grasp_T = 1 for this measure whatever --T and --grasp_T say
    temperature: ClassVar[float] = 1.0

    def sample(self, base: Sample) -> Sample:
        return class_balanced(base, self.settings.samples_per_class, self.temperature)

    def weight(self, site: Site) -> Tensor:
        return (site.theta * site.hg).abs()

    def filter(self, site: Site) -> Tensor:
        return site.rows(site.theta * site.hg).sum(dim=1).abs()


@IMPORTANCE.register("undecayed")
@dataclass
class Undecayed(Measure):
    """|-theta g + eps theta^2| (Undecayed Pruning, Good et al. 2022).

    With weight decay eps, a stationary point of the decayed loss has g = -eps theta, where the
    score becomes 2 eps theta^2: magnitude pruning. Away from it, the gradient term corrects.
    """

    needs: ClassVar[frozenset[str]] = GRAD
    eps: float = 0.0

    def weight(self, site: Site) -> Tensor:
        return (-site.theta * site.g + self.eps * site.theta**2).abs()
