"""The package metadata holds ranges, not pins, and the environment `make setup` builds is the one
those ranges accept: installing doconv_mm with every extra into it would change nothing else. The
wheel is the library: built and installed apart from the checkout, every module in it imports,
and none refers to the checkout's own folders."""
import glob
import json
import os
import os.path as osp
import re
import shutil
import site
import subprocess
import sys
import zipfile
from configparser import ConfigParser

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
STACK = ('torch', 'numpy', 'mmengine', 'mmcv', 'mmdet', 'mmsegmentation', 'setuptools')
# the environment tools/setup_env.sh builds leaves this stamp in the venv
in_setup_env = pytest.mark.skipif(not osp.isfile(osp.join(sys.prefix, '.doconv_mm-setup')),
                                  reason="checks the environment 'make setup' builds")


def requirements():
    cfg = ConfigParser()
    cfg.read(osp.join(ROOT, 'setup.cfg'))
    lines = cfg['options']['install_requires'].split('\n')
    lines += [x for extra in cfg['options.extras_require'].values() for x in extra.split('\n')]
    return [x.strip() for x in lines if x.strip() and not x.strip().startswith('doconv_mm[')]


def test_metadata_has_ranges_not_pins():
    reqs = requirements()
    names = {re.split(r'[<>=!~\[ ;]', r, 1)[0].lower() for r in reqs}
    assert set(STACK) <= names, sorted(names)
    assert not [r for r in reqs if '==' in r], reqs
    cfg = ConfigParser()
    cfg.read(osp.join(ROOT, 'setup.cfg'))
    assert cfg['options']['install_requires'].split() == ['torch>=1.13']  # the core needs torch


def test_missing_package_errors_name_the_requirements_of_setup_cfg():
    """The install commands that errors print (doconv_mm.requirements.OPTIONAL) are setup.cfg's:
    each package's requirement as its extra states it."""
    from doconv_mm.requirements import OPTIONAL
    cfg = ConfigParser()
    cfg.read(osp.join(ROOT, 'setup.cfg'))
    extras = {name: [x.strip() for x in value.split('\n') if x.strip()]
              for name, value in cfg['options.extras_require'].items()}
    for package, (_, extra, spec) in OPTIONAL.items():
        assert spec in extras[extra], (package, spec, extras[extra])


def pip(*args):
    proc = subprocess.run([sys.executable, '-m', 'pip', '--disable-pip-version-check', *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@in_setup_env
def test_installing_every_extra_changes_nothing_but_doconv_mm():
    report = json.loads(pip('install', '--dry-run', '--no-build-isolation', '--quiet',
                            '--report', '-', '.[all,tests]'))
    names = [item['metadata']['name'] for item in report['install']]
    assert names == ['doconv_mm'], names


@in_setup_env
def test_pip_check_is_clean():
    assert 'No broken requirements found' in pip('check')


def test_the_package_holds_no_compiled_source():
    """The layer is PyTorch operators only: no C++ source to build, none shipped."""
    cfg = ConfigParser()
    cfg.read(osp.join(ROOT, 'setup.cfg'))
    assert 'options.package_data' not in cfg
    sources = [p for ext in ('cpp', 'cu', 'c', 'h') for p in glob.glob(
        osp.join(ROOT, 'doconv_mm', '**', f'*.{ext}'), recursive=True)]
    assert not sources, sources


# what only a checkout has: the installed package must not name it (paths into tools/ or
# configs/, the checkout's other folders, a root computed from a module's own location)
CHECKOUT_ONLY = re.compile(r"""tools/|configs/|['"](tools|configs|experiments|benchmarks)['"]"""
                           r'|\b(experiments|benchmarks)\.|dirname\((osp|os\.path)\.dirname')
# imports every module of the installed package with only the scratch target and the
# environment's site-packages (no checkout, no .pth files) on sys.path
IMPORT_ALL = """
import importlib, pkgutil, sys
sys.path[:0] = sys.argv[1:]
import doconv_mm
assert doconv_mm.__file__.startswith(sys.argv[1]), doconv_mm.__file__
names = ['doconv_mm'] + [m.name for m in pkgutil.walk_packages(doconv_mm.__path__, 'doconv_mm.')]
for name in names:
    importlib.import_module(name)
    assert sys.modules[name].__file__.startswith(sys.argv[1]), sys.modules[name].__file__
print(' '.join(names))
"""


def test_the_wheel_installs_and_imports_apart_from_the_checkout(tmp_path):
    # build from a copy, so that the build leaves nothing in the checkout
    src = tmp_path / 'src'
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        '.git', '.venv*', '.cache', 'work_dirs', 'data', 'build', 'dist', '*.egg-info',
        '__pycache__', '.pytest_cache'))
    pip('wheel', '--no-deps', '--no-build-isolation', '--quiet', '--wheel-dir',
        str(tmp_path / 'wheel'), str(src))
    (wheel, ) = glob.glob(str(tmp_path / 'wheel' / 'doconv_mm-*.whl'))
    with zipfile.ZipFile(wheel) as z:
        top = {n.split('/')[0] for n in z.namelist()}
        assert not [n for n in z.namelist() if n.endswith(('.cpp', '.cu', '.c', '.h'))]
    assert {t for t in top if not t.endswith('.dist-info')} == {'doconv_mm'}, top
    target = tmp_path / 'target'
    pip('install', '--no-deps', '--no-index', '--quiet', '--target', str(target), wheel)

    sources = sorted(glob.glob(str(target / 'doconv_mm' / '**' / '*.py'), recursive=True))
    refs = [f'{osp.relpath(path, target)}:{k}: {line.strip()}' for path in sources
            for k, line in enumerate(open(path), 1)
            if CHECKOUT_ONLY.search(line) or ROOT in line]
    assert not refs, '\n'.join(refs)

    # -S: no site-packages and no .pth files (the editable install's would add the checkout);
    # -I: no current folder, no PYTHONPATH
    proc = subprocess.run([sys.executable, '-S', '-I', '-c', IMPORT_ALL, str(target),
                           *site.getsitepackages()], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    modules = set(proc.stdout.split())
    installed = {osp.relpath(p, target)[:-len('.py')].replace(os.sep, '.')
                 .replace('.__init__', '') for p in sources}
    assert modules == installed, modules ^ installed
    assert {'doconv_mm.core', 'doconv_mm.mm.registry', 'doconv_mm.mm.release',
            'doconv_mm.mm.runtime', 'doconv_mm.mm.det'} <= modules
