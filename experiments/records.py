"""A finished run's record: what a report needs of it, in a small JSON file that outlives the run's
folder (``RECORDS/<config name>/seed<k>.json``; the study's are committed in
``experiments/records/``, so that a study continues in a later session on another machine).

A record holds the run's fingerprint (:mod:`.fingerprint`), its last checkpoint's size and
content hash, its last validation record (every metric) and its curves (training loss per logged
iteration, validation metrics per validation step), the machine that trained it (CPU model, its
vector instruction sets, CPU count, an id of the machine), the training wall time summed over its
attempts, the checkout's commit, and, added by :mod:`.noise`, its metric on the large validation
split, whole and per subset. A run's folder is local to the machine that trains it, so the machine
that writes the record from the folder is the machine that trained it.
"""
import datetime
import glob
import hashlib
import json
import os
import os.path as osp
import platform
import subprocess
from typing import Dict, Iterable, List, Optional, Tuple

from doconv_mm.atomic import write as write_file

from .fingerprint import file_id

# the instruction-set flags of /proc/cpuinfo that decide which kernels oneDNN and ATen can pick
ISA_PREFIXES = ('sse', 'ssse', 'avx', 'fma', 'f16c', 'amx')
# the code that trains a run, for the record's ``dirty`` flag
TRAINING_CODE = ('doconv_mm', 'configs', 'tools', 'experiments/compare.py',
                 'experiments/study.py', 'experiments/kernels.py', 'experiments/fingerprint.py')


def record_path(records: str, config_name: str, seed: int) -> str:
    return osp.join(records, config_name, f'seed{seed}.json')


def read(path: str) -> Optional[dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def write(path: str, record: dict) -> None:
    """Write a record whole (:func:`doconv_mm.atomic.write`), keys sorted, one value per line."""
    write_file(path, json.dumps(record, indent=1, sort_keys=True) + '\n')


def machine() -> dict:
    """This machine: CPU model, vector instruction sets, CPU count, and a short hash of its
    ``/etc/machine-id`` (or of its host name where there is none) that tells two machines of
    one model apart."""
    model, flags = platform.machine(), []
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                key, _, value = line.partition(':')
                if key.strip() == 'model name':
                    model = value.strip()
                elif key.strip() == 'flags':
                    flags = sorted(f for f in value.split() if f.startswith(ISA_PREFIXES))
                    break
    except OSError:
        pass
    try:
        with open('/etc/machine-id') as f:
            ident = f.read().strip()
    except OSError:
        ident = platform.node()
    return dict(cpu=model, isa=flags, cpus=os.cpu_count(),
                id=hashlib.sha256(ident.encode()).hexdigest()[:12])


def describe(m: dict) -> str:
    """A machine in a few words: model, widest vector unit, CPUs, id."""
    widest = next((f for f in ('avx512f', 'avx2', 'avx') if f in m['isa']), 'no AVX')
    return f"{m['cpu']} ({widest}, {m['cpus']} CPUs, id {m['id']})"


def _stamp(line: str) -> Optional[datetime.datetime]:
    try:
        return datetime.datetime.strptime(line[:19], '%Y/%m/%d %H:%M:%S')
    except ValueError:
        return None


def wall_time(work_dir: str) -> Tuple[float, int]:
    """The run's training wall time in seconds, summed over its attempts (each attempt's log, from
    its first time stamp to its last), and the number of attempts."""
    total, logs = 0.0, sorted(glob.glob(osp.join(work_dir, '2*', '2*.log')))
    for log in logs:
        with open(log) as f:
            stamps = [s for s in map(_stamp, f) if s is not None]
        if stamps:
            total += (stamps[-1] - stamps[0]).total_seconds()
    return total, len(logs)


def commit(root: str) -> dict:
    """The checkout's commit, and whether the code that trains a run differs from it."""
    def git(*args):
        return subprocess.run(['git', '-C', root, *args], capture_output=True, text=True)

    head = git('rev-parse', '--short=7', 'HEAD')
    if head.returncode:
        return dict(commit=None, dirty=None)
    dirty = git('diff', '--quiet', 'HEAD', '--', *TRAINING_CODE).returncode != 0
    return dict(commit=head.stdout.strip(), dirty=dirty)


def from_run(root: str, work_dir: str, config_name: str, seed: int, fingerprint: dict,
             logs: dict, checkpoint: str) -> dict:
    """The record of the finished run in ``work_dir``: ``logs`` as
    :func:`.compare.read_logs` reads them, ``checkpoint`` its last."""
    wall, attempts = wall_time(work_dir)
    final = logs['val'][max(logs['val'])]
    return dict(
        config=config_name, seed=seed, fingerprint=fingerprint,
        checkpoint=dict(name=osp.basename(checkpoint), **file_id(checkpoint)),
        final={k: v for k, v in final.items() if k != 'step'}, final_step=final['step'],
        curves=dict(loss=sorted([i, r['loss']] for i, r in logs['train'].items()),
                    val=sorted([s, {k: v for k, v in r.items() if k != 'step'}]
                               for s, r in logs['val'].items())),
        machine=machine(), wall_s=round(wall), attempts=attempts,
        written=datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ'),
        **commit(root))


def machines(recs: Iterable[dict]) -> List[dict]:
    """The distinct machines of ``recs``, each with its runs' count, in order of first
    appearance."""
    out: Dict[str, dict] = {}
    for r in recs:
        out.setdefault(r['machine']['id'], dict(r['machine'], runs=0))['runs'] += 1
    return list(out.values())
