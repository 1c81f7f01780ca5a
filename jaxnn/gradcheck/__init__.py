r"""Gradient verification: hand-derived backward passes against autodiff and finite differences.

Everything runs in float64. For a layer $f$ the check draws a fixed random cotangent $v$ (standard
normal, the shape of the output) and differentiates the scalar

$$S(\theta) = \sum_{k} v_k \, f_k(\theta)$$

where $\theta$ stands for every parameter and the input, three ways:

* **hand-derived**: ``jax.grad`` of $S$ through [`jaxnn.apply`][jaxnn.apply], i.e. the layer's own
  ``backward`` reached through ``jax.custom_vjp``;
* **jax.grad**: ``jax.grad`` of $S$ through [`jaxnn.reference_apply`][jaxnn.reference_apply], the
  same forward under plain autodiff;
* **finite differences**: the fourth-order central difference below, for each entry $\theta_i$
  of every parameter and of the input (at most ``max_fd_entries`` entries per array, sampled at
  random beyond that). All perturbed points of a check are evaluated by one compiled, vmapped
  function.

With $e_i$ the unit vector of entry $i$ and the step $\varepsilon$ = ``fd_eps`` = 1e-3, the
finite-difference estimate is

$$\hat{g}_i(\varepsilon) = \frac{8\,[S(\theta + \varepsilon e_i) - S(\theta - \varepsilon e_i)] -
[S(\theta + 2\varepsilon e_i) - S(\theta - 2\varepsilon e_i)]}{12\varepsilon}$$

the Richardson combination $\frac{4 D(\varepsilon) - D(2\varepsilon)}{3}$ of two plain central
differences $D(h) = \frac{S(\theta + h e_i) - S(\theta - h e_i)}{2h}$: their $h^2$ error terms
cancel, leaving an error of order $\varepsilon^4$.

An entry where the function is not smooth within the step (a ReLU's kink, a tie of
``max_pool``, or curvature too high for the step) is detected and left out of the
finite-difference comparison, counted in [`Comparison.kinks`][jaxnn.gradcheck.Comparison.kinks];
it is still compared with ``jax.grad``, where a hand-derived value between the two one-sided
slopes $(S(\theta) - S(\theta - \tfrac{\varepsilon}{2} e_i))/\tfrac{\varepsilon}{2}$ and
$(S(\theta + \tfrac{\varepsilon}{2} e_i) - S(\theta))/\tfrac{\varepsilon}{2}$ is accepted (at a
kink any one-sided slope is a valid derivative). Seven points are evaluated per entry, at the
offsets $-2\varepsilon, -\varepsilon, -\varepsilon/2, 0, \varepsilon/2, \varepsilon,
2\varepsilon$, and the entry counts as smooth when both of these hold. First, the same stencil
at half the step agrees:
$\lvert \hat{g}_i(\varepsilon) - \hat{g}_i(\varepsilon/2) \rvert \le \tau s_i$.
Second, the gap between the right and the left one-sided slopes

$$\Delta(h) = \frac{S(\theta + h e_i) - S(\theta)}{h} - \frac{S(\theta) - S(\theta - h e_i)}{h}$$

halves with the step, as $h \, \partial_i^2 S$ does for a smooth $S$ (at a kink it stays the
jump of the slope): $\lvert \Delta(\varepsilon) - 2\Delta(\varepsilon/2) \rvert \le \tau s_i$.

Both use $\tau$ = ``rtol_fd / 2`` and
$s_i = \max(\lvert \hat{g}_i \rvert, 10^{-3} \max(\text{scale}, \max_j \lvert \hat{g}_j \rvert))$,
``scale`` being the largest ``jax.grad`` entry of the whole check (every parameter and the input),
plus what rounding can do to them (below).

**Rounding noise.** Each value of $S$ carries a rounding error of at most
$u = \nu\,\epsilon_c A$, with $\epsilon_c$ the machine epsilon of the lowest precision the
function computes in (read from its traced program: float32 for a float32 softmax inside a
float64 call), $A = \sum_k \lvert v_k f_k \rvert$ the size of the terms of $S$, and
$\nu$ = ``noise_factor`` = 32. The estimate $\hat{g}_i(\varepsilon)$ then has the noise floor
$n = 1.5\,u / \varepsilon$; the two smoothness tests allow $4.5\,u/\varepsilon$ and
$20\,u/\varepsilon$ more. Against finite differences an entry's error counts only beyond
$n$: $\max(0, \lvert a_i - \hat{g}_i \rvert - n) / \max(\lvert a_i \rvert,
\lvert \hat{g}_i \rvert, \text{floor})$. Entries where $n$ exceeds the tolerance are reported
"noisy (float32 inside)" (or "large output"), not non-smooth. Below float64 the tolerance against
``jax.grad`` becomes $\max(\text{rtol\_autodiff}, \nu\,\epsilon_c)$ (3.8e-6 in float32) and the
step $\varepsilon\,(\epsilon_c/\epsilon_{64})^{1/5}$ rounded to a power of two (0.0625 in
float32); every one of these is a field of [`Tolerances`][jaxnn.gradcheck.Tolerances] to
override.

**Never a vacuous pass.** Every entry is compared with ``jax.grad`` wherever autodiff is
finite; finite-difference entries whose stencil is not finite (NaN/inf outputs) are counted, not
compared. A leaf none of whose entries any reference could judge is reported ``unverified``
([`GradcheckReport.unverified`][jaxnn.gradcheck.GradcheckReport.unverified]) and the report does
not pass.

[`check_layer`][jaxnn.gradcheck.check_layer] checks at the given input shape and at batch 1 (2 in
training mode), since a backward can be right at one batch size and wrong at another.

The error of one array $a$ (hand-derived) against its reference $b$ is reported as the largest
absolute difference $\max_i \lvert a_i - b_i \rvert$ and the largest relative difference

$$\text{rel}(a, b) = \max_i \frac{\lvert a_i - b_i \rvert}
{\max(\lvert a_i \rvert, \lvert b_i \rvert, \text{floor})}
\qquad \text{floor} = 10^{-3} \max(\max_j \lvert b_j \rvert, \text{scale})$$

where ``scale`` is the largest reference entry of the whole check (every parameter and the
input): entries tiny next to the rest of the gradient — rounding noise around an exact zero,
such as the bias gradient of a layer followed by batch normalization — are judged on the
gradient's scale instead of dividing by ~0 (an entry where $a_i = b_i$ has error 0, one where
either is not finite has error $\infty$). A real error still shows: against ``jax.grad`` an entry
of size $g$ that is wrong by 100% gives a relative error of at least
$\min(1, 1000 g / \text{scale})$. A comparison passes when the relative error is within
``rtol_autodiff`` (default 1e-9) against ``jax.grad`` and ``rtol_fd`` (default 1e-6) against
finite differences (both fields of [`Tolerances`][jaxnn.gradcheck.Tolerances]).

Every exported layer and loss is checked at the configurations of
[`LAYER_CASES`][jaxnn.gradcheck.LAYER_CASES] and
[`LOSS_CASES`][jaxnn.gradcheck.LOSS_CASES] (``jaxnn/gradcheck/_cases.py``), by
[`check_case`][jaxnn.gradcheck.check_case].

Any JAX function with a ``jax.custom_vjp`` / ``jax.custom_jvp`` rule, a user's or a library's,
is checked by [`check_function`][jaxnn.gradcheck.check_function]: the rule against autodiff of the
function with its rules removed and against finite differences. Every report has one row per
parameter or argument leaf with the index of its worst entry, and renders as text
([`GradcheckReport.table`][jaxnn.gradcheck.GradcheckReport.table]),
Markdown ([`GradcheckReport.markdown`][jaxnn.gradcheck.GradcheckReport.markdown]) and HTML
(in notebooks; see [the verification page](../../verification.md)).

Examples:
    A user's own layer is checked by the same call:

    >>> import jaxnn
    >>> report = jaxnn.gradcheck.check_layer(jaxnn.dense(3), (4, 2))
    >>> report.passed
    True
"""

from jaxnn.gradcheck._cases import (
    LAYER_CASES,
    LOSS_CASES,
    NOT_LAYERS_OR_LOSSES,
    LayerCase,
    LossCase,
    case_input,
)
from jaxnn.gradcheck._functions import check_function
from jaxnn.gradcheck._layers import check_case, check_layer, check_loss, check_model
from jaxnn.gradcheck._numerics import compare
from jaxnn.gradcheck._render import plot_errors
from jaxnn.gradcheck._reports import Comparison, GradcheckReport, Tolerances

__all__ = [
    "LAYER_CASES",
    "LOSS_CASES",
    "NOT_LAYERS_OR_LOSSES",
    "Comparison",
    "GradcheckReport",
    "LayerCase",
    "LossCase",
    "Tolerances",
    "case_input",
    "check_case",
    "check_function",
    "check_layer",
    "check_loss",
    "check_model",
    "compare",
    "plot_errors",
]
