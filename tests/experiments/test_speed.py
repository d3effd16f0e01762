"""experiments/speed.py: the loss windows and the paired curves against hand computations on a
report of two seeds whose differences are known."""
import math

import pytest

from experiments.paired_stats import t_quantile
from experiments.speed import compare_speed, markdown, window_means, write


def test_window_means_cut_the_schedule_into_equal_parts():
    loss = [(3, 1.0), (6, 2.0), (9, 3.0), (12, 4.0), (15, 5.0), (18, 6.0)]
    assert window_means(loss, 18, 3) == [1.5, 3.5, 5.5]  # iterations 1-6, 7-12, 13-18
    assert window_means(loss, 18, 2) == [2.0, 5.0]
    with pytest.raises(ValueError, match='windows=12: a part of iterations 1..18 holds no logged '
                       'loss; use fewer windows'):
        window_means(loss, 18, 12)


def report(shift_loss, shift_val):
    """Two seeds of a baseline and a config whose loss is lower by ``shift_loss[seed]`` and metric
    higher by ``shift_val[seed]`` at every point."""
    curves = {}
    for name, sign in (('stock', 0), ('doconv', 1)):
        curves[name] = {s: dict(loss=[[i, 2.0 - i / 100 - sign * shift_loss[s]]
                                      for i in range(4, 25, 4)],
                                val=[[step, 0.2 + step / 10 + sign * shift_val[s]]
                                     for step in (1, 2)])
                        for s in (0, 1)}
    return dict(metric='coco/bbox_mAP', baseline='stock', seeds=[0, 1], curves=curves)


def test_compare_speed_pairs_each_window_and_step(tmp_path):
    speed = compare_speed(report({0: 0.1, 1: 0.3}, {0: 0.02, 1: 0.04}))
    assert speed['windows'] == [(1, 8), (9, 16), (17, 24)] and speed['steps'] == [1, 2]
    c = speed['configs']['doconv']
    half = t_quantile(0.975, 1) * math.sqrt(0.02) / math.sqrt(2)  # sd of (-0.1, -0.3)
    for d in c['loss']:
        assert d['diffs'] == pytest.approx([-0.1, -0.3]) and d['mean'] == pytest.approx(-0.2)
        assert d['ci_low'] == pytest.approx(-0.2 - half) and d['ci_high'] == pytest.approx(
            -0.2 + half)
    for d in c['val']:
        assert d['diffs'] == pytest.approx([0.02, 0.04])
    assert [row[0] for row in c['loss_curve']] == [4, 8, 12, 16, 20, 24]
    assert c['loss_curve'][0][1:] == pytest.approx([-0.2, -0.2 - half, -0.2 + half])
    text = markdown(speed)
    assert '| training loss, iterations 1-8 | -0.2000 |' in text
    assert '| coco/bbox_mAP, validation step 2 | +0.0300 |' in text
    paths = write(speed, str(tmp_path / 'speed'))
    assert [p.rsplit('.', 1)[1] for p in paths] == ['md', 'json', 'png']
    assert (tmp_path / 'speed.png').stat().st_size > 5000
