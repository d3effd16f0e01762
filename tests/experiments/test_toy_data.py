"""The toy datasets are read by the real mmdet/mmseg dataset classes with the right contents."""
import json

import numpy as np
import pytest

from experiments.toy_data import (CITYSCAPES_REGIONS, CITYSCAPES_SHAPES, COCO_CLASSES, VOC_SHAPES,
                                  write_cityscapes, write_coco, write_voc)

SEG_PIPELINE = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations')]


def test_coco_reads_with_mmdet(tmp_path):
    from mmdet.datasets import CocoDataset
    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=True)
    write_coco(str(tmp_path), n_train=6, n_val=3, size=(96, 128), seed=3)
    with open(tmp_path / 'annotations' / 'instances_train2017.json') as f:
        ann = json.load(f)
    assert [c['name'] for c in ann['categories']] == [c[1] for c in COCO_CLASSES]
    classes = tuple(c[1] for c in COCO_CLASSES)
    for split, n in (('train', 6), ('val', 3)):
        ds = CocoDataset(data_root=str(tmp_path),
                         ann_file=f'annotations/instances_{split}2017.json',
                         data_prefix=dict(img=f'{split}2017/'), metainfo=dict(classes=classes),
                         pipeline=[dict(type='LoadImageFromFile'),
                                   dict(type='LoadAnnotations', with_bbox=True, with_mask=True)])
        assert len(ds) == n
        total = 0
        for i in range(n):
            item = ds[i]
            assert item['img'].shape == (96, 128, 3)
            boxes, labels = item['gt_bboxes'].numpy(), item['gt_bboxes_labels']
            assert len(boxes) == len(labels) == len(item['gt_masks']) >= 1
            assert set(labels) <= {0, 1, 2}
            assert (boxes[:, 2:] > boxes[:, :2]).all() and boxes.min() >= 0
            assert boxes[:, 2].max() <= 128 and boxes[:, 3].max() <= 96
            total += len(labels)
        with open(tmp_path / 'annotations' / f'instances_{split}2017.json') as f:
            assert total == len(json.load(f)['annotations'])


@pytest.mark.parametrize('fmt', ['cityscapes', 'voc'])
def test_segmentation_reads_with_mmseg(tmp_path, fmt):
    from mmseg.datasets import CityscapesDataset, PascalVOCDataset
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=True)
    if fmt == 'cityscapes':
        write_cityscapes(str(tmp_path), n_train=4, n_val=2, size=(64, 128), seed=1)
        allowed = {r[0] for r in CITYSCAPES_REGIONS} | {s[0] for s in CITYSCAPES_SHAPES}
        make = lambda split: CityscapesDataset(  # noqa: E731
            data_root=str(tmp_path), pipeline=SEG_PIPELINE,
            data_prefix=dict(img_path=f'leftImg8bit/{split}', seg_map_path=f'gtFine/{split}'))
        shape = (64, 128)
    else:
        write_voc(str(tmp_path), n_train=4, n_val=2, size=(80, 80), seed=1)
        allowed = {0} | {s[0] for s in VOC_SHAPES}
        make = lambda split: PascalVOCDataset(  # noqa: E731
            data_root=str(tmp_path), pipeline=SEG_PIPELINE,
            ann_file=f'ImageSets/Segmentation/{split}.txt',
            data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClass'))
        shape = (80, 80)
    for split, n in (('train', 4), ('val', 2)):
        ds = make(split)
        assert len(ds) == n
        seen = set()
        for i in range(n):
            item = ds[i]
            assert item['img'].shape[:2] == item['gt_seg_map'].shape == shape
            labels = set(np.unique(item['gt_seg_map']).tolist())
            assert labels <= allowed and len(labels) >= 2
            seen |= labels
        assert len(seen) >= 3


def test_deterministic_from_seed(tmp_path):
    for name, seed in (('a', 0), ('b', 0), ('c', 1)):
        write_coco(str(tmp_path / name), n_train=2, n_val=1, seed=seed)
    read = lambda name: (tmp_path / name / 'annotations' / 'instances_train2017.json').read_text()  # noqa
    assert read('a') == read('b') != read('c')
