"""experiments/quant_study.py's summary: per-seed reports (as tools/quant_check.py writes them)
paired by seed, against hand-computed differences."""
import json

import pytest

from experiments import quant_study


def report(fp32, drops, sqnr, out=((40.0, 30.0), (41.0, 31.0))):
    """The fields of a quant_check JSON report that the summary reads, for the two roles."""
    def model(f, d, s, o):
        return dict(metric='coco/bbox_mAP', output_sqnr_db=dict(int8_w=o[0], int8_wa=o[1]),
                    metrics=dict(fp32={'coco/bbox_mAP': f}, int8_w={'coco/bbox_mAP': f - d[0]},
                                 int8_wa={'coco/bbox_mAP': f - d[1]}),
                    drop=dict(int8_w=d[0], int8_wa=d[1]),
                    weights=dict(sqnr_db_median=s, sqnr_db_min=s - 10, worst_layer='rpn_cls'))
    return dict(models=dict(model=model(fp32[0], drops[0], sqnr[0], out[0]),
                            baseline=model(fp32[1], drops[1], sqnr[1], out[1])))


def test_summary_pairs_the_drops_by_seed(tmp_path):
    int8 = tmp_path / 'work_dirs' / 'study' / 'det' / 'int8'
    int8.mkdir(parents=True)
    # seed 0: DO-Conv drops 0.010 / 0.030, stock 0.005 / 0.020;
    # seed 1: DO-Conv 0.020 / 0.040, stock 0.005 / 0.010
    (int8 / 'seed0.json').write_text(json.dumps(report(
        (0.30, 0.28), ((0.010, 0.030), (0.005, 0.020)), (40.0, 41.0))))
    (int8 / 'seed1.json').write_text(json.dumps(report(
        (0.32, 0.30), ((0.020, 0.040), (0.005, 0.010)), (39.0, 41.5),
        ((38.0, 27.0), (41.0, 30.0)))))
    s = quant_study.run_task('unused-root', str(tmp_path), 'det', [0, 1])  # both read, none run
    assert s['metric'] == 'coco/bbox_mAP'
    assert s['paired']['fp32']['diffs'] == pytest.approx([0.02, 0.02], abs=1e-12)
    assert s['paired']['int8_w']['diffs'] == pytest.approx([0.005, 0.015], abs=1e-12)
    assert s['paired']['int8_wa']['mean'] == pytest.approx((0.010 + 0.030) / 2, abs=1e-12)
    assert s['paired']['sqnr_db_median']['diffs'] == pytest.approx([-1.0, -2.5], abs=1e-12)
    assert s['paired']['output_sqnr_w']['diffs'] == pytest.approx([-1.0, -3.0], abs=1e-12)
    assert s['paired']['output_sqnr_wa']['diffs'] == pytest.approx([-1.0, -3.0], abs=1e-12)
    # two pairs (0.005, 0.015): sd 0.005 sqrt 2, standard error 0.005, t = 0.010 / 0.005 = 2;
    # the interval's half width is t(0.975, 1) = 12.7062047 standard errors
    assert s['paired']['int8_w']['t'] == pytest.approx(2.0, rel=1e-9)
    assert s['paired']['int8_w']['ci_high'] - 0.010 == pytest.approx(12.7062047 * 0.005, rel=1e-6)
    rows = quant_study.markdown([s]).splitlines()
    assert rows[2].startswith('| det | coco/bbox_mAP | stock | 0.2900 | +0.0050 | +0.0150 | 41.00 '
                              '| 30.50 | 41.25 | 31.2 dB (rpn_cls) |')
    assert rows[3].startswith('| det | coco/bbox_mAP | DO-Conv all, folded | 0.3100 | +0.0150 | '
                              '+0.0350 | 39.00 | 28.50 | 39.50 | 29.5 dB (rpn_cls) |')
    assert rows[4].startswith('| det | coco/bbox_mAP | DO-Conv - stock, paired | +0.0200')
