"""What doconv_mm offers when optional packages are missing, each case in a fresh interpreter where
the packages are made unimportable (``sys.modules[name] = None``): torch alone, mmseg without mmdet,
and the OpenMMLab stack without ``pkg_resources`` (setuptools >= 81)."""
import os.path as osp
import subprocess
import sys
import textwrap

import pytest

from experiments.toy_data import write_cityscapes, write_coco
from tool_helpers import ROOT

OPENMMLAB = 'mmengine,mmcv,mmdet,mmseg'
DET_CFG = osp.join(ROOT, 'configs/faster_rcnn/faster-rcnn_r50_fpn_doconv-head_1x_coco.py')
SEG_CFG = osp.join(ROOT, 'configs/deeplabv3/deeplabv3_r50-d8_doconv-all_4xb2-80k_cityscapes-'
                   '512x1024.py')
# runs a script (``-c CODE``, or a file and its arguments) where the named modules are unimportable
BLOCKED = ("import sys, runpy; blocked = sys.argv[1]; sys.argv = sys.argv[2:]; "
           "sys.modules.update((m, None) for m in blocked.split(',')); "
           "exec(sys.argv[1]) if sys.argv[0] == '-c' else "
           "runpy.run_path(sys.argv[0], run_name='__main__')")


def run_blocked(blocked, args, cwd=ROOT, expect=0):
    proc = subprocess.run([sys.executable, '-c', BLOCKED, blocked, *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == expect, out[-4000:]
    return out


def check(blocked, code):
    """Run ``code`` (asserts) with ``blocked`` unimportable; returns its output."""
    return run_blocked(blocked, ['-c', textwrap.dedent(code)])


def test_torch_only_offers_the_layer_and_fold():
    out = check(OPENMMLAB, """
        import sys, torch
        import doconv_mm
        from doconv_mm import DOConv2d, count_do_convs, do_conv_kernel, fold_model
        assert 'doconv_mm.mm' not in sys.modules
        assert not [m for m in sys.modules if m.split('.')[0] in
                    ('mmengine', 'mmcv', 'mmdet', 'mmseg') and sys.modules[m] is not None]
        net = torch.nn.Sequential(DOConv2d(3, 4, 3, padding=1))
        x = torch.randn(1, 3, 8, 8)
        y = net(x)
        y.sum().backward()
        assert count_do_convs(net) == 1
        with torch.no_grad():
            assert torch.allclose(fold_model(net.eval())(x), y, atol=1e-5)
        try:
            import doconv_mm.mm
        except ImportError as e:
            print(e)
        else:
            raise AssertionError('doconv_mm.mm imported without mmengine')
        """)
    assert 'doconv_mm.mm (the OpenMMLab integration) needs mmengine, which is not' in out
    assert ('install it with pip install "mmengine>=0.7.1,<1.0.0" (or, in a doconv_mm checkout, '
            'pip install ".[mm]")') in out, out


def test_experiments_standard_library_and_numpy_modules_import_without_openmmlab():
    """The seed comparison's statistics (standard library) and the toy datasets (numpy, OpenCV,
    Pillow) live apart from the OpenMMLab integration, so neither needs mmengine."""
    check(OPENMMLAB, """
        import sys
        from experiments.paired_stats import paired
        from experiments.toy_data import WRITERS
        assert paired([1.0, 2.0], [0.0, 0.5])['mean'] == 1.25 and set(WRITERS) >= {'coco'}
        assert not [m for m in sys.modules if m.split('.')[0] in
                    ('mmengine', 'mmcv', 'mmdet', 'mmseg') and sys.modules[m] is not None]
        assert not [m for m in sys.modules if m.startswith('doconv_mm.mm')]
        """)


def test_mmseg_without_mmdet_registers_doconv_and_builds_segmentors():
    out = check('mmdet', f"""
        import sys
        import doconv_mm
        from mmengine.registry import MODELS
        from doconv_mm import DOConv2d, count_do_convs
        from doconv_mm.mm.release import build_model
        from doconv_mm.mm.runtime import read_config
        from doconv_mm.requirements import MissingPackageError
        assert MODELS.get('DOConv') is DOConv2d
        assert 'doconv_mm.mm.det' not in sys.modules
        assert count_do_convs(build_model(read_config({SEG_CFG!r}))) == 24
        for attempt in (lambda: read_config({DET_CFG!r}), lambda: __import__('doconv_mm.mm.det')):
            try:
                attempt()
            except MissingPackageError as e:
                print(e)
            else:
                raise AssertionError('no error without mmdet')
        """)
    assert out.count('pip install "mmdet>=3.0.0,<3.4.0" (or, in a doconv_mm checkout, pip '
                     'install ".[det]")') == 2, out
    assert 'faster-rcnn_r50_fpn_doconv-head_1x_coco.py (a mmdet config) needs mmdet' in out


def test_segmentation_config_without_mmseg_names_mmseg():
    out = check('mmseg', f"""
        from doconv_mm.mm.runtime import read_config
        from doconv_mm.requirements import MissingPackageError
        try:
            read_config({SEG_CFG!r})
        except MissingPackageError as e:
            print(e)
        else:
            raise AssertionError('no error without mmseg')
        """)
    assert '(a mmseg config) needs mmseg, which is not installed' in out, out
    assert 'pip install "mmsegmentation>=1.0.0,<1.3.0" (or, in a doconv_mm checkout, pip ' \
        'install ".[seg]")' in out, out


def test_quant_check_engine_without_onnxruntime_names_the_extra(tmp_path):
    out = tmp_path / 'report.md'
    err = run_blocked('onnxruntime', [osp.join(ROOT, 'tools/quant_check.py'), DET_CFG, DET_CFG,
                                      '--engine', 'onnxruntime', '--out', str(out)], expect=1)
    assert err.strip() == ('quant_check.py: error: --engine onnxruntime needs onnxruntime, which '
                           'is not installed; install it with pip install "onnxruntime" (or, in '
                           'a doconv_mm checkout, pip install ".[onnx]")'), err
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp('missing_packages')
    write_cityscapes(str(root / 'data' / 'toy_cityscapes'), n_train=4, n_val=2, seed=2)
    write_coco(str(root / 'data' / 'toy_coco'), n_train=4, n_val=2, size=(96, 96), seed=1)
    return root


def train(blocked, config, workspace, options, expect=0):
    return run_blocked(blocked, [osp.join(ROOT, 'tools/train.py'), osp.join(ROOT, config),
                                 '--work-dir', str(workspace / 'work'), '--cfg-options', *options],
                       cwd=workspace, expect=expect)


SEG_ITERS = ['train_cfg.max_iters=2', 'train_cfg.val_interval=2',
             'default_hooks.checkpoint.interval=2', 'train_dataloader.batch_size=2']


def test_tools_train_a_segmentor_without_mmdet_and_name_mmdet_for_a_detector(workspace):
    out = train('mmdet', 'configs/demo/deeplabv3_r18-d8_doconv-all_toy-cityscapes.py',
                workspace, SEG_ITERS)
    assert 'Iter(val) [2/2]' in out and 'mIoU' in out, out[-3000:]
    out = train('mmdet', 'configs/demo/faster-rcnn_r18_fpn_doconv-all_toy-coco.py', workspace,
                ['train_cfg.max_epochs=1'], expect=1)
    assert 'train.py: error:' in out and 'pip install ".[det]"' in out, out[-3000:]
    assert 'Traceback' not in out


def test_configs_load_and_train_without_pkg_resources(workspace):
    """mmengine resolves 'mmdet::'/'mmseg::' bases through pkg_resources, which setuptools 81
    removed; with doconv_mm imported first, the project's configs and tools work without it."""
    out = check('pkg_resources', f"""
        import sys
        import doconv_mm
        from doconv_mm.mm.runtime import read_config
        for path in ({DET_CFG!r}, {SEG_CFG!r}):
            assert read_config(path).model.type in ('FasterRCNN', 'EncoderDecoder')
        assert sys.modules['pkg_resources'] is None
        """)
    out = train('pkg_resources', 'configs/demo/faster-rcnn_r18_fpn_doconv-all_toy-coco.py',
                workspace, ['train_cfg.max_epochs=1', 'train_cfg.val_interval=1',
                            'train_dataloader.batch_size=2'])
    assert 'Epoch(val) [1]' in out and 'bbox_mAP' in out, out[-3000:]
