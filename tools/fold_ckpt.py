"""Fold a trained DO-Conv checkpoint into a plain-conv release that stock mmdet/mmseg load.

    python tools/fold_ckpt.py CONFIG CHECKPOINT OUT.pth [--force] [--no-verify] [--device cpu]
                              [--publish]
    python tools/fold_ckpt.py --no-config CHECKPOINT OUT.pth      # fold by key, no model built

Writes OUT.pth (``meta`` and the folded ``state_dict`` only) and OUT.py, the deploy config (plain
convs, stock modules, no custom_imports). By default the DO-Conv and folded models are run on the
same input first; a relative difference above 1e-4 writes nothing. Files are written to a temporary
name and renamed into place, never over the input.
"""
import argparse
import hashlib
import os
import os.path as osp
import sys
import tempfile
import time

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

TOLERANCE = 1e-4


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('paths', nargs='+', metavar='CONFIG CHECKPOINT OUT.pth')
    parser.add_argument('--no-config', action='store_true',
                        help='fold by state-dict key (CHECKPOINT OUT.pth); no verification')
    parser.add_argument('--force', action='store_true', help='overwrite existing outputs')
    parser.add_argument('--no-verify', action='store_true', help='skip the output comparison')
    parser.add_argument('--device', default='cpu', help='device for the verification run')
    parser.add_argument('--publish', action='store_true',
                        help="add the first 8 hex digits of the file's sha256 to its name")
    args = parser.parse_args(argv)
    expected = 2 if args.no_config else 3
    if len(args.paths) != expected:
        usage = 'CHECKPOINT OUT.pth' if args.no_config else 'CONFIG CHECKPOINT OUT.pth'
        parser.error(f'expected {usage}, got {len(args.paths)} paths: {" ".join(args.paths)}')
    args.config = None if args.no_config else args.paths[0]
    args.checkpoint, args.out = args.paths[-2:]
    return args


def fail(message: str, code: int = 1):
    print(f'fold_ckpt: error: {message}', file=sys.stderr)
    raise SystemExit(code)


def check_paths(args) -> str:
    """Validate the paths before any work; returns the deploy config's path (or None)."""
    if args.config is not None and not osp.isfile(args.config):
        fail(f'CONFIG {args.config!r} not found')
    if not osp.isfile(args.checkpoint):
        fail(f'CHECKPOINT {args.checkpoint!r} not found')
    if not os.access(args.checkpoint, os.R_OK):
        fail(f'CHECKPOINT {args.checkpoint!r} is not readable')
    if not args.out.endswith('.pth'):
        fail(f'OUT.pth {args.out!r} must end with .pth (the deploy config is written beside it '
             f'as .py)')
    deploy = None if args.config is None else args.out[:-len('.pth')] + '.py'
    inputs = {osp.realpath(p) for p in (args.config, args.checkpoint) if p}
    for out in filter(None, (args.out, deploy)):
        if osp.realpath(out) in inputs:
            fail(f'output {out!r} is one of the inputs; choose another OUT.pth')
        if osp.exists(out) and not args.force:
            fail(f'output {out!r} exists; pass --force to overwrite it')
    return deploy


def load_checkpoint(path: str) -> dict:
    """The checkpoint the user named (trusted: mmengine checkpoints need the full unpickler)."""
    try:
        checkpoint = torch.load(path, map_location='cpu', weights_only=False)
    except Exception as e:  # truncated, corrupt, not a torch file
        fail(f'cannot read CHECKPOINT {path!r} ({type(e).__name__}: {e}); is it a complete '
             f'checkpoint file?')
    state_dict = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state_dict, dict) or not all(
            isinstance(v, torch.Tensor) for v in state_dict.values()):
        fail(f'CHECKPOINT {path!r} holds no state dict (expected a dict of tensors, or an '
             f'mmengine checkpoint with "state_dict")')
    return checkpoint


def stage(path: str, save) -> str:
    """Call ``save(tmp)`` on a temporary file beside ``path`` (same suffix); returns ``tmp``."""
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.tmp-', suffix=osp.splitext(path)[1], dir=folder)
    os.close(fd)
    try:
        save(tmp)
    except BaseException:
        os.remove(tmp)
        raise
    return tmp


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def main(argv=None):
    args = parse_args(argv)
    deploy_path = check_paths(args)
    start = time.perf_counter()
    checkpoint = load_checkpoint(args.checkpoint)
    state_dict = checkpoint.get('state_dict', checkpoint)
    meta = dict(checkpoint.get('meta') or {}) if 'state_dict' in checkpoint else {}

    from doconv_mm.release import CheckpointMismatch, fold_checkpoint, fold_state_dict_by_key
    if args.config is None:
        folded = fold_state_dict_by_key(state_dict)
        layers = sum(k.endswith('.D') for k in state_dict)
        print(f'folded {layers} DO-Conv layers by key (no config: not verified)')
        deploy_cfg = None
    else:
        from mmengine.config import Config

        from doconv_mm.deploy import deploy_config
        cfg = Config.fromfile(args.config)
        try:
            folded, report = fold_checkpoint(cfg, state_dict, verify=not args.no_verify,
                                             device=args.device)
        except CheckpointMismatch as e:
            fail(f'CHECKPOINT {args.checkpoint!r} vs CONFIG {args.config!r}: {e}')
        layers = report.layers
        if layers == 0:
            print('no DO-Conv layer in this model: the release is an identical copy')
        print(f'folded {layers} DO-Conv layers; parameters {report.params_before:,} -> '
              f'{report.params_after:,}')
        if not args.no_verify:
            print(f'verified: max relative difference DO-Conv vs folded = {report.rel_diff:.2e}'
                  f' (tolerance {TOLERANCE:g})')
            if not report.rel_diff <= TOLERANCE:
                fail(f'folded outputs differ by {report.rel_diff:.2e} > {TOLERANCE:g}; '
                     f'nothing written')
        deploy_cfg = deploy_config(cfg)
    meta['doconv_folded'] = dict(layers=layers, source=osp.basename(args.checkpoint))
    # both files are written under temporary names first, then renamed: all or nothing
    staged = {}
    try:
        release = dict(meta=meta, state_dict=folded)
        staged[args.out] = stage(args.out, lambda t: torch.save(release, t))
        digest = sha256(staged[args.out])
        if args.publish:
            published = args.out[:-len('.pth')] + f'-{digest[:8]}.pth'
            if osp.exists(published) and not args.force:
                fail(f'output {published!r} exists; pass --force to overwrite it')
            staged[published] = staged.pop(args.out)
        if deploy_cfg is not None:
            staged[deploy_path] = stage(deploy_path, deploy_cfg.dump)
        for final, tmp in staged.items():
            os.replace(tmp, final)
    finally:
        for tmp in staged.values():
            if osp.exists(tmp):
                os.remove(tmp)
    for final in staged:
        print(f'wrote {final}' + (f' sha256 {digest}' if final.endswith('.pth') else
                                  ' (deploy config: stock mmdet/mmseg, no doconv_mm needed)'))
    print(f'done in {time.perf_counter() - start:.1f} s')


if __name__ == '__main__':
    main()
