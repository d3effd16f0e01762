"""The paper's protocol at toy scale: pretrain a plain backbone, fine-tune stock vs DO-Conv head
vs DO-Conv all from it over seeds (default: the sized study's, 12 for det and 6 for seg), compare
paired by seed (experiments/study.py does the work).

    python tools/study.py [--tasks det seg] [--seeds S ...] [--workspace DIR] [--records DIR]
                          [--cfg-options k=v ...] [--retrain] [--recorded] [--noise [IMAGES]]
                          [--int8 [--calib N] [--engines E ...]] [--quick]

Results: WORKSPACE/work_dirs/study/{det,seg}/compare.{md,json,png}, from the runs' records
(experiments/records/{det,seg}/<config>/seed<k>.json, committed: experiments/records.py): a
recorded run is not trained again, so the study reports from its records alone, and a study
stopped anywhere continues from them in a later session, on this machine or another (the three
configs of a seed train on one machine: where one of them trains, those another machine recorded
train again beside it). --cfg-options change every fine-tuning run (e.g. a longer schedule:
train_cfg.max_epochs=12 for det, train_cfg.max_iters=300 param_scheduler.0.end=300 for seg);
a fine-tuning run trained with other options, an edited config, another pretrained backbone,
other package versions or other training code (this checkout's files a training loads, by
content) stops it with an error naming the run and what differs: --retrain trains such runs again.
Also printed: the training speed, each DO-Conv config's loss per third of the schedule and metric
per validation against stock, paired by seed (experiments/speed.py;
WORKSPACE/work_dirs/study/{det,seg}/speed.{md,json,png}), and README's table.
--noise: every run evaluated on IMAGES (default 512) new validation images of the same
generator, and the paired differences split into a seed effect, an image effect shared by the
seeds and their interaction, with the seeds and images a target interval needs and their
intervals (experiments/noise.py; WORKSPACE/work_dirs/study/{det,seg}/noise.{md,json}).
--int8: tools/quant_check.py on each seed's DO-Conv-all model beside its stock model, the drops
paired by seed (experiments/quant_study.py), once per engine (default both: the simulation,
WORKSPACE/work_dirs/study/int8.md, and onnxruntime, int8.onnxruntime.md).
A seed's runs are evaluated (--noise, --int8) as soon as the seed is trained, so that a study
stopped anywhere keeps every finished seed complete in its records; --recorded reports those
seeds alone (with the same --noise and --int8), training nothing: a study in progress.
Both are recorded with the runs, tied to their checkpoints' hashes: a run whose evaluations are
recorded is not needed on disk; one whose are not is trained again where its checkpoint is gone.
--quick: a smoke run of every step (with --noise 64 --int8, the evaluations too): seeds 0 and 1
(unless --seeds), the pretraining and fine-tuning on short schedules (experiments/study.py's
QUICK, before --cfg-options), in the workspace work_dirs/study_quick with its records there
(unless --workspace, --records), never the checkout's; its numbers say nothing about DO-Conv.
"""
import argparse
import os
import os.path as osp
import subprocess
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)
from doconv_mm.atomic import write  # noqa: E402
from doconv_mm.requirements import one_line_errors  # noqa: E402
from experiments import speed  # noqa: E402
from experiments.compare import markdown  # noqa: E402
from experiments.study import (QUICK, SEEDS, TASKS, recorded_seeds, run_task,  # noqa: E402
                               speed_summary, summary)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--tasks', nargs='+', choices=list(TASKS), default=list(TASKS))
    parser.add_argument('--seeds', type=int, nargs='+', default=None,
                        help='default: the sized study\'s, per task (' + '; '.join(
                            f'{t}: {s[0]}-{s[-1]}' for t, s in SEEDS.items()) + ')')
    parser.add_argument('--workspace', default=None,
                        help='where data/ and work_dirs/ go (default: the checkout; --quick: '
                        'its work_dirs/study_quick)')
    parser.add_argument('--records', default=None,
                        help='where each finished run is recorded (default: the checkout\'s '
                        'experiments/records; --quick: WORKSPACE/work_dirs/study/records; give '
                        'another folder for other --cfg-options)')
    parser.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE',
                        help='override settings of every fine-tuning run')
    parser.add_argument('--recorded', action='store_true',
                        help='report the seeds whose runs (and evaluations) are all recorded, '
                        'training nothing: a study in progress')
    parser.add_argument('--retrain', action='store_true',
                        help='train again the fine-tuning runs that another config, seed, '
                        'loaded checkpoint or package version trained')
    parser.add_argument('--noise', type=int, nargs='?', const=512, default=None,
                        metavar='IMAGES', help='then split the differences into seed, '
                        'image and interaction noise on IMAGES new validation images '
                        '(default 512)')
    parser.add_argument('--quick', action='store_true',
                        help='a smoke run of every step on short schedules, seeds 0 and 1, '
                        'in a workspace of its own; its numbers say nothing about DO-Conv')
    parser.add_argument('--int8', action='store_true',
                        help='then check int8 of DO-Conv all vs stock, per seed')
    parser.add_argument('--calib', type=int, default=32,
                        help='--int8: calibration images (default 32)')
    parser.add_argument('--engines', nargs='+', choices=('torch', 'onnxruntime'),
                        default=['torch', 'onnxruntime'],
                        help='--int8: the quant_check engines to run (default both)')
    args = parser.parse_args(argv)
    if args.seeds is not None and len(set(args.seeds)) < 2:
        parser.error(f'--seeds: need two or more distinct seeds for a paired test, '
                     f'got {args.seeds}')
    if args.noise is not None and args.noise < 64:
        parser.error(f'--noise: need 64 or more images (four subsets of the detection study\'s '
                     f'16), got {args.noise}')
    bad = [kv for kv in args.cfg_options if '=' not in kv]
    if bad:
        parser.error(f'--cfg-options takes KEY=VALUE, got {bad}')
    from mmengine.utils import ProgressBar
    from experiments import noise, quant_study
    start, reports = time.perf_counter(), {}
    workspace = osp.abspath(args.workspace or (osp.join(ROOT, 'work_dirs', 'study_quick')
                                               if args.quick else ROOT))
    records = osp.abspath(args.records or (
        osp.join(workspace, 'work_dirs', 'study', 'records') if args.quick
        else osp.join(ROOT, 'experiments', 'records')))
    os.makedirs(workspace, exist_ok=True)
    seeds = {task: args.seeds or ([0, 1] if args.quick else SEEDS[task]) for task in args.tasks}
    pretrain_options = {task: QUICK[task][0] if args.quick else [] for task in args.tasks}
    cfg_options = {task: (QUICK[task][1] if args.quick else []) + args.cfg_options
                   for task in args.tasks}

    def need_checkpoint(task):
        """The recorded runs to have on this machine: those that --noise or --int8 has not
        evaluated yet."""
        needs = [noise.needs_checkpoint(args.noise)] if args.noise is not None else []
        if args.int8:
            needs.append(quant_study.needs_checkpoint(osp.join(records, task), task, args.calib,
                                                      args.engines))
        return lambda *run: any(need(*run) for need in needs)

    def log(msg):  # below a progress bar
        print('\n' + msg)

    def after_seed(task):
        """Evaluate a seed's runs as soon as they are trained, so that every seed a study
        finishes is complete in its records."""
        def evaluate(seed):
            if args.noise is not None:
                for config in TASKS[task]['configs']:
                    noise.evaluate_run(ROOT, workspace, task, config, seed, args.noise,
                                       log=log, records_dir=records)
            for engine in args.engines if args.int8 else ():
                quant_study.check_seed(ROOT, workspace, task, seed, args.calib, engine,
                                       log=log, records_dir=records)
        return evaluate

    for task in args.tasks if args.recorded else ():
        seeds[task] = recorded_seeds(records, task, seeds[task], need_checkpoint(task))
        if len(seeds[task]) < 2:
            parser.error(f'--recorded: {task} has {len(seeds[task])} seeds recorded in full in '
                         f'{records}, a paired test needs two or more')
        print(f'{task}: the recorded seeds {seeds[task]}')
    for task in args.tasks:
        bar = ProgressBar(len(TASKS[task]['configs']) * len(seeds[task]))
        with one_line_errors(osp.basename(__file__), ValueError, RuntimeError,
                             subprocess.CalledProcessError):
            reports[task] = run_task(ROOT, workspace, task, seeds[task], cfg_options[task],
                                     log=log, progress=bar.update,
                                     retrain=args.retrain, records_dir=records,
                                     need_checkpoint=need_checkpoint(task),
                                     after_seed=after_seed(task),
                                     pretrain_options=pretrain_options[task])
        print()
    speeds = {}
    for task, report in reports.items():
        print(f'\n## {task}\n\n{markdown(report)}\n\nwrote ' + ', '.join(report['paths']))
        speeds[task] = speed.compare_speed(report)
        paths = speed.write(speeds[task], osp.join(workspace, 'work_dirs', 'study', task,
                                                   'speed'))
        print(f'\n## {task}, training speed\n\n{speed.markdown(speeds[task])}\n\nwrote '
              + ', '.join(paths))
    results = []
    if args.noise is not None:
        with one_line_errors(osp.basename(__file__), subprocess.CalledProcessError,
                             RuntimeError):
            results = [noise.run_task(ROOT, workspace, task, seeds[task], args.noise,
                                      log=lambda msg: print(msg), records_dir=records)
                       for task in args.tasks]
        paths = [path for r in results for path in noise.write(
            [r], osp.join(workspace, 'work_dirs', 'study', r['task'], 'noise'))]
        print(f'\n## noise\n\n{noise.markdown(results)}\n\nwrote ' + ', '.join(paths))
    print(f'\n## summary (README)\n\n{summary(reports, results)}')
    print(f'\n## training speed (README)\n\n{speed_summary(speeds)}')
    if args.int8:
        for engine in args.engines:
            with one_line_errors(osp.basename(__file__), subprocess.CalledProcessError,
                                 RuntimeError):
                summaries = [quant_study.run_task(ROOT, workspace, task, seeds[task], args.calib,
                                                  engine, records_dir=records)
                             for task in args.tasks]
            table = quant_study.markdown(summaries)
            name = 'int8.md' if engine == 'torch' else f'int8.{engine}.md'
            path = osp.join(workspace, 'work_dirs', 'study', name)
            write(path, table + '\n')
            print(f'\n## int8, {engine}\n\n{table}\n\nwrote {path}')
    print(f'\n({(time.perf_counter() - start) / 60:.1f} min)')
    return reports


if __name__ == '__main__':
    main()
