"""The paired statistics of tools/compare.py against closed forms and a worked example."""
import math
import random
import statistics

import pytest

from experiments.paired_stats import (betainc, chi2_quantile, gammainc, paired, t_quantile,
                                      t_two_sided_p)


def closed_form_p(t, df):
    """Two-sided tail of Student's t where it has an elementary form (df = 1, 2, 3)."""
    t = abs(t)
    if df == 1:
        return 1 - 2 / math.pi * math.atan(t)
    if df == 2:
        return 1 - t / math.sqrt(2 + t * t)
    u = t / math.sqrt(3)
    return 1 - 2 / math.pi * (u / (1 + u * u) + math.atan(u))


@pytest.mark.parametrize('df', [1, 2, 3])
@pytest.mark.parametrize('t', [0.0, 0.3, 1.0, 2.5, 12.0])
def test_t_tail_matches_the_closed_forms(t, df):
    assert t_two_sided_p(t, df) == pytest.approx(closed_form_p(t, df), rel=1e-12, abs=1e-15)


def test_worked_example():
    """Differences 1, 2, 3, 4: mean 2.5, sd sqrt(5/3), t = 2.5 / (sd / 2) = 3.8730 on 3 degrees of
    freedom; t(0.975, 3) = 3.18245 (tables); p from the df = 3 closed form."""
    r = paired([1.0, 2.5, 3.2, 5.0], [0.0, 0.5, 0.2, 1.0])
    sd = math.sqrt(5 / 3)
    assert r['diffs'] == pytest.approx([1, 2, 3, 4]) and r['mean'] == pytest.approx(2.5)
    assert r['std'] == pytest.approx(sd, rel=1e-12)
    assert r['t'] == pytest.approx(2.5 / (sd / 2), rel=1e-12)
    assert t_quantile(0.975, 3) == pytest.approx(3.182446305, rel=1e-9)
    half = 3.182446305284 * sd / 2
    assert (r['ci_low'], r['ci_high']) == pytest.approx((2.5 - half, 2.5 + half), rel=1e-10)
    assert r['p'] == pytest.approx(closed_form_p(r['t'], 3), rel=1e-12)
    assert r['p'] == pytest.approx(0.030466, abs=1e-6)


def test_against_scipy_where_installed():
    stats = pytest.importorskip('scipy.stats')
    for df in (1, 2, 4, 9, 29, 200):
        assert t_quantile(0.975, df) == pytest.approx(stats.t.ppf(0.975, df), rel=1e-10)
        for t in (0.1, 1.7, 4.0):
            assert t_two_sided_p(t, df) == pytest.approx(2 * stats.t.sf(t, df), rel=1e-10)
    for a, b, x in ((0.5, 0.5, 0.3), (2.0, 7.5, 0.9), (15.0, 0.5, 0.99)):
        assert betainc(a, b, x) == pytest.approx(stats.beta.cdf(x, a, b), rel=1e-12)
    for df in (1, 2, 3, 31, 63, 999):
        for q in (0.025, 0.5, 0.975):
            assert chi2_quantile(q, df) == pytest.approx(stats.chi2.ppf(q, df), rel=1e-10)
    for a, x in ((0.5, 0.1), (1.5, 40.0), (3.0, 10.0), (100.0, 90.0)):
        assert gammainc(a, x) == pytest.approx(stats.gamma.cdf(x, a), rel=1e-12)
    values, base = [0.31, 0.35, 0.29, 0.40, 0.33], [0.30, 0.31, 0.30, 0.36, 0.30]
    ref = stats.ttest_rel(values, base)
    r = paired(values, base)
    assert (r['t'], r['p']) == pytest.approx((ref.statistic, ref.pvalue), rel=1e-10)


@pytest.mark.parametrize('q', [0.025, 0.3, 0.975])
def test_chi_square_quantiles_match_the_closed_forms(q):
    """df = 2 is the exponential of mean 2: -2 ln(1 - q); df = 1 is a squared standard normal:
    its q quantile is z((1 + q) / 2) squared."""
    assert chi2_quantile(q, 2) == pytest.approx(-2 * math.log(1 - q), rel=1e-12)
    z = statistics.NormalDist().inv_cdf((1 + q) / 2)
    assert chi2_quantile(q, 1) == pytest.approx(z * z, rel=1e-10)
    with pytest.raises(ValueError, match='need 0 < q < 1 and df > 0, got q=1.5'):
        chi2_quantile(1.5, 2)


def test_degenerate_cases():
    one = paired([0.4], [0.3])
    assert one['mean'] == pytest.approx(0.1) and one['p'] is None and one['ci_low'] is None
    same = paired([0.4, 0.5], [0.4, 0.5])
    assert same['p'] == 1.0 and same['ci_low'] == same['ci_high'] == 0.0
    shifted = paired([0.5, 0.6], [0.4, 0.5])  # the same difference for every seed
    assert shifted['p'] == 0.0 and shifted['ci_low'] == pytest.approx(0.1)
    with pytest.raises(ValueError, match='equally many'):
        paired([0.1, 0.2], [0.1])


def test_minimum_detectable_effect_closed_form():
    """(t(0.975, n-1) + t(0.8, n-1)) sd / sqrt(n), with the quantiles from tables (scipy's
    values): n = 4 (df 3) 3.1824463 and 0.9784723; n = 3 (df 2) 4.3026527 and 1.0606602 =
    sqrt(9/8), the df = 2 closed form t(q) = (2q - 1) / sqrt(2 q (1 - q))."""
    r = paired([1.0, 2.5, 3.2, 5.0], [0.0, 0.5, 0.2, 1.0])  # differences 1, 2, 3, 4
    assert r['mde'] == pytest.approx((3.1824463053 + 0.9784723124) * math.sqrt(5 / 3) / 2,
                                     rel=1e-9)
    assert t_quantile(0.8, 2) == pytest.approx(0.6 / math.sqrt(2 * 0.8 * 0.2), rel=1e-12)
    r = paired([0.30, 0.33, 0.31], [0.30, 0.30, 0.30])  # differences 0, 0.03, 0.01
    sd = statistics.stdev([0.0, 0.03, 0.01])
    assert r['mde'] == pytest.approx((4.3026527297 + math.sqrt(9 / 8)) * sd / math.sqrt(3),
                                     rel=1e-9)
    # more pairs of the same spread resolve less: 1 / sqrt(n) and smaller quantiles
    wide = paired([0.0, 0.03, 0.01] * 4, [0.0] * 12)
    assert wide['mde'] < r['mde'] / 2
    assert paired([0.4], [0.3])['mde'] is None
    assert paired([0.4, 0.5], [0.4, 0.5])['mde'] == 0.0


def test_minimum_detectable_effect_has_its_power():
    """Normal differences of true mean ``mde`` (computed with the true sd) are found significant
    at 5% about 80% of the time (the central-t formula is within a few points of the exact
    noncentral power at n = 10: 0.78); 4000 draws, binomial sd 0.0065."""
    rng = random.Random(0)
    n, sd = 10, 0.02
    delta = (t_quantile(0.975, n - 1) + t_quantile(0.8, n - 1)) * sd / math.sqrt(n)
    hits = 0
    for _ in range(4000):
        diffs = [rng.gauss(delta, sd) for _ in range(n)]
        hits += paired(diffs, [0.0] * n)['p'] < 0.05
    assert 0.75 < hits / 4000 < 0.82
