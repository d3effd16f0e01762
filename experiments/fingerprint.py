"""What produced a result, so that no result is reported for something else.

A training run's fingerprint: its config as resolved after ``--cfg-options``, its seed, the
checkpoint files that config loads (e.g. the study's pretrained backbone), by content, and the
versions of the packages that train it (torch, mmengine, mmcv, mmdet or mmseg, doconv_mm), the
content of this checkout's files that train it and make its data (:func:`training_code`), and the
settings that pin its CPU kernels (:data:`.kernels.KERNEL_ENV`).
:class:`.compare.Comparison` writes it into the run's folder before the run starts and reads or
resumes the run only while the command's fingerprint is the same.

A derived output (the noise study's predictions, an int8 report) records the checkpoints it was
computed from, by size and content hash, in ``<output>.sources.json``; it is computed again when
they change (a run resumed to a longer schedule, or trained again).
"""
import functools
import hashlib
import json
import os
import os.path as osp
import subprocess
import sys
from importlib import metadata
from typing import Dict, List, Optional, Sequence

from doconv_mm.atomic import write

from .kernels import KERNEL_ENV

FILE = 'fingerprint.json'
PACKAGES = ('torch', 'mmengine', 'mmcv')  # and the toolkit of the config's scope
TOOLKITS = ('mmdet', 'mmseg')
ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
# the tools a run's processes start from: the trainer, and the maker of the toy data it reads
ENTRY_POINTS = ('tools/train.py', 'tools/make_toy_data.py')
_LOADED = """import importlib.util, json, sys
for path in sys.argv[1:]:
    spec = importlib.util.spec_from_file_location('entry', path)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
import doconv_mm  # what custom_imports loads
files = {getattr(m, '__file__', None) or '' for m in list(sys.modules.values())}
print(json.dumps([sys.prefix, sorted(files)]))
"""


def resolved_config(config: str, cfg_options: Sequence[str] = ()) -> dict:
    """``config`` with its bases merged and ``cfg_options`` (``key=value``, as tools/train.py
    parses them) applied, as plain JSON data."""
    from mmengine.config import Config, DictAction
    cfg = Config.fromfile(config)
    cfg.merge_from_dict({key: DictAction._parse_iterable(value)
                         for key, value in (kv.split('=', 1) for kv in cfg_options)})
    return json.loads(json.dumps(cfg.to_dict(), default=str))


def file_id(path: str) -> dict:
    """A file's size and SHA-256 of its content."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return dict(size=os.path.getsize(path), sha256=digest.hexdigest())


def _loaded_checkpoints(cfg, cwd: str, known: Dict[str, dict]) -> Dict[str, dict]:
    """The ``.pth`` files the config names that exist (relative paths from ``cwd``) or that
    ``known`` holds."""
    found = {}
    if isinstance(cfg, dict):
        for value in cfg.values():
            found.update(_loaded_checkpoints(value, cwd, known))
    elif isinstance(cfg, list):
        for value in cfg:
            found.update(_loaded_checkpoints(value, cwd, known))
    elif isinstance(cfg, str) and cfg.endswith('.pth'):
        if osp.isfile(osp.join(cwd, cfg)):
            found[cfg] = file_id(osp.join(cwd, cfg))
        elif cfg in known:
            found[cfg] = dict(known[cfg])
    return found


def versions(scope: Optional[str] = None) -> Dict[str, Optional[str]]:
    """The installed versions of the packages that train a run: torch, mmengine, mmcv, the
    toolkit ``scope`` names (both mmdet and mmseg where it names neither), and this checkout's
    doconv_mm."""
    out = {}
    for name in PACKAGES + ((scope,) if scope in TOOLKITS else TOOLKITS):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    from doconv_mm.version import __version__
    out['doconv_mm'] = __version__
    return out


@functools.lru_cache(maxsize=None)
def _loaded_files(root: str) -> tuple:
    """The files under ``root`` that a fresh process loads with :data:`ENTRY_POINTS` and
    ``doconv_mm`` (their ``main`` does not run), relative to ``root``; not the installed
    packages (a virtual environment inside the checkout)."""
    proc = subprocess.Popen([sys.executable, '-c', _LOADED,
                             *(osp.join(root, e) for e in ENTRY_POINTS)],
                            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f'listing the training code of {root} failed: '
                           f'{err.strip().splitlines()[-1:]}')
    prefix, loaded = json.loads(out.splitlines()[-1])
    files = [osp.relpath(f, root) for f in loaded if osp.isabs(f)
             and f.startswith(osp.join(root, '')) and not f.startswith(osp.join(prefix, ''))]
    return tuple(sorted(set(files) | set(ENTRY_POINTS)))


def training_code(root: str = ROOT) -> Dict[str, str]:
    """The checkout's code that trains a run and makes its toy data: per file a process started
    from :data:`ENTRY_POINTS` loads from ``root`` (doconv_mm's modules among them; not those
    training never imports, such as the ONNX engine), the SHA-256 of its content (first 16 hex
    digits). The list of files is found once per process, the content hashed at every call."""
    root = osp.abspath(root)
    out = {}
    for rel in _loaded_files(root):
        with open(osp.join(root, rel), 'rb') as f:
            out[rel] = hashlib.sha256(f.read()).hexdigest()[:16]
    return out


def run_fingerprint(cfg: dict, seed: int, cwd: Optional[str] = None,
                    known: Optional[Dict[str, dict]] = None) -> dict:
    """The fingerprint of a run of the resolved config ``cfg`` with ``seed``, trained in
    :func:`.kernels.kernel_env` (module doc); relative paths in the config are read from ``cwd``
    (default: this process's), where the run trains. ``known``: the :func:`file_id` of
    checkpoints the config names that are not on this machine (by the name the config gives;
    a file that is here is hashed)."""
    return dict(config=cfg, seed=seed,
                checkpoints=_loaded_checkpoints(cfg, cwd or os.getcwd(), known or {}),
                versions=versions(cfg.get('default_scope')), code=training_code(),
                kernels=dict(KERNEL_ENV))


def _flat(value, prefix: str = '') -> Dict[str, object]:
    if isinstance(value, dict) and value:
        out = {}
        for key, item in value.items():
            out.update(_flat(item, f'{prefix}.{key}' if prefix else str(key)))
        return out
    return {prefix: value}


def differences(recorded: dict, current: dict) -> List[str]:
    """``key: recorded -> current`` for every dotted key whose value differs (lists compared
    whole; ``<none>`` where a side lacks the key)."""
    old, new = _flat(recorded), _flat(current)

    def show(flat, key):
        text = json.dumps(flat[key]) if key in flat else '<none>'
        return text if len(text) <= 60 else text[:57] + '...'

    return [f'{key}: {show(old, key)} -> {show(new, key)}'
            for key in sorted(set(old) | set(new)) if old.get(key, ...) != new.get(key, ...)]


def read_fingerprint(work_dir: str) -> Optional[dict]:
    try:
        with open(osp.join(work_dir, FILE)) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def _write_json(path: str, data: dict) -> None:
    write(path, json.dumps(data, indent=1, sort_keys=True))


def write_fingerprint(work_dir: str, fingerprint: dict) -> None:
    os.makedirs(work_dir, exist_ok=True)
    _write_json(osp.join(work_dir, FILE), fingerprint)


def sources(**checkpoints: str) -> Dict[str, dict]:
    """Per role, the path and :func:`file_id` of a checkpoint a derived output is computed
    from."""
    return {role: dict(path=path, **file_id(path)) for role, path in checkpoints.items()}


def is_current(output: str, expected: Dict[str, dict]) -> bool:
    """Whether ``output`` exists and was computed from checkpoints of the same content as
    ``expected``'s (its sources file; the paths are kept for the reader, not compared)."""
    def content(recorded):
        return {role: (c['size'], c['sha256']) for role, c in recorded.items()}

    try:
        with open(output + '.sources.json') as f:
            return osp.exists(output) and content(json.load(f)) == content(expected)
    except FileNotFoundError:
        return False


def record_sources(output: str, recorded: Dict[str, dict]) -> None:
    """Write ``output``'s sources file (after ``output`` itself is written whole)."""
    _write_json(output + '.sources.json', recorded)
