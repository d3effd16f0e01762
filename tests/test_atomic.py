"""doconv_mm.atomic: files written whole or not at all, alone or as a set, read back from disk."""
import os
import stat

import pytest

from doconv_mm import atomic


def listing(folder):
    return sorted(os.listdir(folder))


def test_text_bytes_and_a_save_function(tmp_path):
    a, b, c = tmp_path / 'a.md', tmp_path / 'sub' / 'b.bin', tmp_path / 'c.png'
    suffixes = []

    def save(tmp):
        suffixes.append(os.path.splitext(tmp)[1])  # tools that pick a format by name see it
        with open(tmp, 'w') as f:
            f.write('saved')

    written = atomic.write_files({str(a): 'é text\n', str(b): b'\x00\x01', str(c): save})
    assert written == [str(a), str(b), str(c)]
    assert a.read_bytes() == 'é text\n'.encode('utf-8')
    assert b.read_bytes() == b'\x00\x01' and c.read_text() == 'saved'
    assert suffixes == ['.png']
    assert listing(tmp_path) == ['a.md', 'c.png', 'sub'] and listing(tmp_path / 'sub') == ['b.bin']


def test_mode_is_what_open_gives(tmp_path):
    plain = tmp_path / 'plain.txt'
    plain.write_text('x')
    atomic.write(str(tmp_path / 'atomic.txt'), 'x')
    mode = stat.S_IMODE(os.stat(tmp_path / 'atomic.txt').st_mode)
    assert mode == stat.S_IMODE(os.stat(plain).st_mode)


def test_a_failed_save_writes_nothing_of_the_set(tmp_path):
    old = tmp_path / 'report.md'
    old.write_text('old report')

    def fails(tmp):
        with open(tmp, 'w') as f:
            f.write('half')
        raise OSError('disk full')

    with pytest.raises(OSError, match='disk full'):
        atomic.write_files({str(old): 'new report', str(tmp_path / 'report.json'): '{}',
                            str(tmp_path / 'report.png'): fails})
    assert old.read_text() == 'old report'  # the earlier files of the set were not renamed
    assert listing(tmp_path) == ['report.md']  # and no temporary file is left


def test_target_renames_or_refuses(tmp_path):
    def by_size(path, tmp):
        return path.replace('NAME', str(os.path.getsize(tmp)))

    assert atomic.write_files({str(tmp_path / 'NAME.bin'): b'12345'}, by_size) == [
        str(tmp_path / '5.bin')]
    assert listing(tmp_path) == ['5.bin']

    def refuse(path, tmp):
        raise ValueError(f'output {path!r} exists')

    with pytest.raises(ValueError, match='exists'):
        atomic.write_files({str(tmp_path / 'x.md'): 'x', str(tmp_path / 'y.md'): 'y'}, refuse)
    assert listing(tmp_path) == ['5.bin']


def test_other_content_is_refused(tmp_path):
    with pytest.raises(TypeError, match='content must be str, bytes or a function save'):
        atomic.write(str(tmp_path / 'x.json'), {'a': 1})
    assert listing(tmp_path) == []
