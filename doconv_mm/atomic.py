"""Files written whole or not at all: each is saved under a temporary name in its own folder and
renamed into place (``os.replace``, atomic within a file system), so a reader finds the old file or
the new one, never a part; a set of files is renamed only once every one of them is saved.
Standard library only: the project's writers (reports, checkpoints, graphs, releases) share it."""
import os
import os.path as osp
import tempfile
from typing import Callable, Dict, List, Optional, Union

# a file's contents: text (written as UTF-8), bytes, or a function that saves them to the path given
Content = Union[str, bytes, Callable[[str], None]]


def stage(path: str, save: Callable[[str], None]) -> str:
    """Call ``save(tmp)`` on a new temporary file beside ``path`` with ``path``'s suffix (which
    tools that pick a format by name read) and return ``tmp``; on an error ``tmp`` is removed."""
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.tmp-', suffix=osp.splitext(path)[1], dir=folder)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 -> what open() would have given
        save(tmp)
    except BaseException:
        os.remove(tmp)
        raise
    return tmp


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_files(files: Dict[str, Content],
                target: Optional[Callable[[str, str], str]] = None) -> List[str]:
    """Write each ``{path: content}``: every file is saved under its temporary name first (text as
    UTF-8, bytes as they are, a function as ``save(tmp)``), then every one is renamed into place; if
    a save (or ``target``) raises, nothing is written and no temporary file is left.

    ``target(path, tmp)``, called once per staged file before any rename, returns the path to
    write it to (a release names its file by its hash) or raises to write nothing. Returns the
    paths written, in order."""
    staged = {}
    try:
        for path, content in files.items():
            tmp = stage(path, _saver(content))
            staged[tmp] = path
            staged[tmp] = target(path, tmp) if target is not None else path
        for tmp, path in staged.items():
            os.replace(tmp, path)
    finally:
        for tmp in staged:
            if osp.exists(tmp):
                os.remove(tmp)
    return list(staged.values())


def write(path: str, content: Content) -> None:
    """One file, written whole or not at all (see :func:`write_files`)."""
    write_files({path: content})


def _saver(content: Content) -> Callable[[str], None]:
    if callable(content):
        return content
    if not isinstance(content, (str, bytes)):
        raise TypeError(f'content must be str, bytes or a function save(path), got '
                        f'{type(content).__name__}')
    data = content.encode('utf-8') if isinstance(content, str) else content

    def save(tmp: str) -> None:
        with open(tmp, 'wb') as f:
            f.write(data)
    return save
