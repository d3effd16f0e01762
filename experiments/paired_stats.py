"""Paired comparison of two configs over seeds: mean difference, its 95% confidence interval, the
two-sided paired t-test p-value, exact through the regularized incomplete beta function, and the
minimum detectable effect of the run, and the chi-square quantiles that bound a variance
estimated from few degrees of freedom (no scipy needed; ``tests/experiments/test_paired_stats.py``
checks them against scipy, closed forms and a worked example). Standard library only."""
import math
import statistics
from typing import Dict, Optional, Sequence


def _beta_cf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz's method)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10000):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            return h
    raise ArithmeticError(f'incomplete beta did not converge for a={a}, b={b}, x={x}')


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x)
                 + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _beta_cf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_cf(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: int) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def t_quantile(q: float, df: int) -> float:
    """The ``q`` quantile (0.5 < q < 1) of Student's t, by bisection on the exact tail."""
    lo, hi = 0.0, 1.0
    while t_two_sided_p(hi, df) > 2 * (1 - q):
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_two_sided_p(mid, df) > 2 * (1 - q) else (lo, mid)
    return (lo + hi) / 2


def gammainc(a: float, x: float) -> float:
    """The regularized lower incomplete gamma function P(a, x): its series below ``a + 1``, the
    continued fraction of 1 - P (modified Lentz's method) above."""
    if x <= 0.0:
        return 0.0
    log_front = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1:
        term = total = 1.0 / a
        for n in range(1, 10000):
            term *= x / (a + n)
            total += term
            if abs(term) < abs(total) * 1e-16:
                return math.exp(log_front) * total
        raise ArithmeticError(f'incomplete gamma series did not converge for a={a}, x={x}')
    tiny, b = 1e-300, x + 1.0 - a
    c, d = 1.0 / tiny, 1.0 / b
    h = d
    for i in range(1, 10000):
        num = -i * (i - a)
        b += 2.0
        d = num * d + b
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = b + num / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            return 1.0 - math.exp(log_front) * h
    raise ArithmeticError(f'incomplete gamma fraction did not converge for a={a}, x={x}')


def chi2_quantile(q: float, df: float) -> float:
    """The ``q`` quantile (0 < q < 1) of the chi-square distribution, by bisection on its CDF
    ``P(df / 2, x / 2)``."""
    if not 0.0 < q < 1.0 or df <= 0:
        raise ValueError(f'chi2_quantile: need 0 < q < 1 and df > 0, got q={q}, df={df}')
    lo, hi = 0.0, max(1.0, 2.0 * df)
    while gammainc(df / 2.0, hi / 2.0) < q:
        lo, hi = hi, 2.0 * hi
    while hi - lo > 1e-14 * hi:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if gammainc(df / 2.0, mid / 2.0) < q else (lo, mid)
    return (lo + hi) / 2


def paired(values: Sequence[float], baseline: Sequence[float], confidence: float = 0.95,
           power: float = 0.8) -> Dict[str, Optional[float]]:
    """Differences ``values - baseline`` seed by seed: their mean, standard deviation, the
    ``confidence`` interval of the mean, the paired t-test's two-sided p-value, and ``mde``, the
    minimum detectable effect: the true mean difference that the test at level
    ``1 - confidence`` finds with probability ``power`` when the differences spread as these do,
    ``(t(1 - alpha / 2, n - 1) + t(power, n - 1)) * std / sqrt(n)`` (None where fewer than two
    pairs make them undefined). A difference well inside ``mde`` that the test calls
    insignificant is no evidence of no effect."""
    if len(values) != len(baseline) or not values:
        raise ValueError(f'paired: need equally many values and baseline values, at least one; '
                         f'got {len(values)} and {len(baseline)}')
    diffs = [v - b for v, b in zip(values, baseline)]
    n, mean = len(diffs), statistics.fmean(diffs)
    out = dict(n=n, diffs=diffs, mean=mean, std=None, ci_low=None, ci_high=None, t=None, p=None,
               mde=None)
    if n < 2:
        return out
    std = statistics.stdev(diffs)
    se = std / math.sqrt(n)
    t_crit = t_quantile(0.5 + confidence / 2, n - 1)
    half = t_crit * se
    t = mean / se if se > 0 else (0.0 if mean == 0 else math.copysign(math.inf, mean))
    out.update(std=std, ci_low=mean - half, ci_high=mean + half, t=t,
               p=1.0 if se == 0 and mean == 0 else t_two_sided_p(t, n - 1),
               mde=(t_crit + t_quantile(power, n - 1)) * se)
    return out
