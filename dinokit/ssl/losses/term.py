"""What a loss term of the objective is, and what its builder is given.

A term is a module `term(student_out, teacher_out, batch, values) → (loss, metrics)`: the unweighted value its
weight multiplies, and metrics to log. It owns its teacher-target module (centering or Sinkhorn-Knopp). The
meta-architecture multiplies the value by `values["weight/<name>"]`, sums the terms and logs both the value
(`<name>`) and the weighted value (`<name>_weighted`).

A kind of term is one entry of the table in `losses/__init__.py`: its config section (`losses.<name>` in a run's
configuration, a dataclass whose `float | CurveConfig` fields become schedules) and a builder that receives that
section and a `BuildContext`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn


class LossTerm(nn.Module):
    """Base class of the loss terms (see the module docstring for the call signature)."""


@dataclass(frozen=True)
class BuildContext:
    """What term builders may use besides their own config section."""

    target: Callable[[int], nn.Module]  # the teacher-target module for K prototypes (`teacher.target`)
    n_prototypes: dict[str, int]  # "dino" / "ibot" → K of the head whose logits the term reads
    teachers: dict[str, nn.Module] = field(default_factory=dict)  # extra teachers by name (e.g. "gram")
    # groups of `size` consecutive ranks → this rank's group (None: the term works per device, as in one process)
    subgroup: Callable[[int], Any] = lambda size: None


@dataclass(frozen=True)
class TermKind:
    """One row of the term table: the config section, the builder, which heads of the student the term reads
    ("dino": the CLS logits, "ibot": the masked-patch logits, "projection": tokens projected to the teacher's
    width), whether the term is on by default, and — for distillation — the kind of teacher it needs ("heads":
    a teacher with DINO / iBOT heads, "features": its tokens; None: either)."""

    config: type
    build: Callable[[Any, BuildContext], LossTerm]
    heads: tuple[str, ...] = ()
    default_on: bool = True
    teacher: str | None = None
