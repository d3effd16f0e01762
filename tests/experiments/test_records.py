"""experiments/records.py: the parts of a record that are not a run's logs (the study's and
compare's tests cover writing and reading records): wall time over attempts, the machine, the
commit."""
import re
import subprocess

from experiments import records


def test_wall_time_sums_the_attempts_logs(tmp_path):
    for stamp, first, last in (('20261206_100000', '10:00:00', '10:02:30'),
                               ('20261206_110000', '11:00:05', '11:01:05')):
        (tmp_path / stamp).mkdir()
        (tmp_path / stamp / f'{stamp}.log').write_text(
            f'2026/12/06 {first} - mmengine - INFO - start\n  a continued line\n'
            f'2026/12/06 {last} - mmengine - INFO - Epoch(train) [1][4/4] loss: 1.0\n')
    assert records.wall_time(str(tmp_path)) == (210.0, 2)
    assert records.wall_time(str(tmp_path / 'none')) == (0.0, 0)


def test_machine_names_the_cpu_and_its_vector_units():
    m = records.machine()
    assert set(m) == {'cpu', 'isa', 'cpus', 'id'} and m == records.machine()
    assert all(f.startswith(records.ISA_PREFIXES) for f in m['isa'])
    assert re.fullmatch('[0-9a-f]{12}', m['id']) and m['cpus'] >= 1
    text = records.describe(dict(cpu='X', isa=['avx', 'avx2', 'avx512f'], cpus=4, id='ab'))
    assert text == 'X (avx512f, 4 CPUs, id ab)'
    assert 'no AVX' in records.describe(dict(cpu='Y', isa=[], cpus=1, id='cd'))


def test_commit_and_whether_the_training_code_differs(tmp_path):
    def git(*args):
        subprocess.run(['git', '-C', str(tmp_path), *args], check=True, capture_output=True)

    assert records.commit(str(tmp_path)) == dict(commit=None, dirty=None)  # not a checkout
    git('init', '-q')
    (tmp_path / 'tools').mkdir()
    (tmp_path / 'tools' / 'train.py').write_text('a\n')
    (tmp_path / 'README.md').write_text('a\n')
    git('add', '.')
    git('-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qm', 'x')
    head = subprocess.run(['git', '-C', str(tmp_path), 'rev-parse', '--short=7', 'HEAD'],
                          capture_output=True, text=True).stdout.strip()
    assert records.commit(str(tmp_path)) == dict(commit=head, dirty=False)
    (tmp_path / 'README.md').write_text('b\n')  # not code that trains
    assert records.commit(str(tmp_path))['dirty'] is False
    (tmp_path / 'tools' / 'train.py').write_text('b\n')
    assert records.commit(str(tmp_path)) == dict(commit=head, dirty=True)
