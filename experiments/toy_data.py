"""Small synthetic datasets in the real on-disk formats (COCO, Cityscapes, PASCAL VOC).

Each scene is a textured background with a few filled shapes; the shape's kind fixes its class and
colour, so a small model learns them in minutes. Everything is deterministic from ``seed``. The
real mmdet/mmseg dataset classes and pipelines read the files.
"""
import json
import os
import os.path as osp
from typing import Dict, List, Tuple

import cv2
import numpy as np
from PIL import Image

# (COCO category id, name, shape, BGR colour): real COCO names and ids
COCO_CLASSES = ((37, 'sports ball', 'circle', (40, 40, 220)),
                (62, 'tv', 'rectangle', (40, 200, 40)),
                (38, 'kite', 'triangle', (220, 90, 30)))
# Cityscapes train ids: background regions, then the shapes' classes
CITYSCAPES_REGIONS = ((10, (180, 130, 70)), (2, (70, 70, 70)), (0, (128, 64, 128)))  # sky/bldg/road
CITYSCAPES_SHAPES = ((13, 'rectangle', (142, 0, 0)), (11, 'circle', (60, 20, 220)),
                     (6, 'triangle', (30, 170, 250)))  # car, person, traffic light
# PASCAL VOC class indices (0 background)
VOC_SHAPES = ((7, 'rectangle', (128, 128, 128)), (15, 'circle', (0, 128, 192)),
              (5, 'triangle', (0, 0, 128)))  # car, person, bottle


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A textured background: a colour gradient with blurred noise."""
    base = rng.uniform(60, 190, size=3)
    ramp = np.linspace(-30, 30, w)[None, :, None] * rng.uniform(-1, 1, size=3)
    noise = cv2.GaussianBlur(rng.normal(0, 25, (h, w, 3)), (0, 0), 1.5)
    return np.clip(base + ramp + noise, 0, 255).astype(np.uint8)


def _shape_polygon(rng: np.random.Generator, kind: str, h: int, w: int) -> np.ndarray:
    """A shape's outline as an (N, 2) float polygon in pixel coordinates."""
    size = rng.uniform(0.12, 0.3) * min(h, w)
    cx, cy = rng.uniform(size, w - size), rng.uniform(size, h - size)
    if kind == 'circle':
        t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        return np.stack([cx + size * np.cos(t), cy + size * np.sin(t)], 1)
    if kind == 'rectangle':
        a, b = size, size * rng.uniform(0.5, 0.9)
        return np.array([[cx - a, cy - b], [cx + a, cy - b], [cx + a, cy + b], [cx - a, cy + b]])
    return np.array([[cx, cy - size], [cx + size, cy + size * 0.8], [cx - size, cy + size * 0.8]])


def _draw_shapes(rng, img, label, shapes, max_objects):
    """Draw 1..max_objects shapes on ``img`` (and ``label``); returns [(class index, polygon)]."""
    h, w = img.shape[:2]
    objects = []
    for _ in range(rng.integers(1, max_objects + 1)):
        index = int(rng.integers(len(shapes)))
        _, kind, colour = shapes[index][-3:]
        poly = _shape_polygon(rng, kind, h, w)
        pts = np.round(poly).astype(np.int32)
        shade = np.clip(np.array(colour) + rng.normal(0, 12, 3), 0, 255)
        cv2.fillPoly(img, [pts], shade.tolist())
        if label is not None:
            cv2.fillPoly(label, [pts], int(shapes[index][0]))
        objects.append((index, poly))
    return objects


def _splits(n_train: int, n_val: int) -> List[Tuple[str, int]]:
    return [('train', n_train), ('val', n_val)]


def write_coco(root: str, n_train: int = 64, n_val: int = 16, size: Tuple[int, int] = (160, 160),
               seed: int = 0) -> Dict[str, int]:
    """COCO detection: ``{train,val}2017/*.jpg`` and ``annotations/instances_{split}2017.json``.

    Objects that a later shape hides are kept (as COCO keeps occluded objects); each box is its
    polygon's extent. Returns the number of images per split.
    """
    rng = np.random.default_rng(seed)
    h, w = size
    os.makedirs(osp.join(root, 'annotations'), exist_ok=True)
    categories = [dict(id=cid, name=name, supercategory='shape')
                  for cid, name, _, _ in COCO_CLASSES]
    for split, n in _splits(n_train, n_val):
        folder = f'{split}2017'
        os.makedirs(osp.join(root, folder), exist_ok=True)
        images, annotations = [], []
        for i in range(n):
            img = _background(rng, h, w)
            image_id = i + 1
            file_name = f'{image_id:012d}.jpg'
            for index, poly in _draw_shapes(rng, img, None, COCO_CLASSES, 4):
                x0, y0 = np.clip(poly.min(0), 0, [w, h])
                x1, y1 = np.clip(poly.max(0), 0, [w, h])
                annotations.append(dict(
                    id=len(annotations) + 1, image_id=image_id,
                    category_id=COCO_CLASSES[index][0], iscrowd=0,
                    bbox=[float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                    area=float(cv2.contourArea(poly.astype(np.float32))),
                    segmentation=[[round(float(v), 2) for v in poly.flatten()]]))
            cv2.imwrite(osp.join(root, folder, file_name), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
            images.append(dict(id=image_id, file_name=file_name, height=h, width=w))
        with open(osp.join(root, 'annotations', f'instances_{folder}.json'), 'w') as f:
            json.dump(dict(images=images, annotations=annotations, categories=categories), f)
    return dict(train=n_train, val=n_val)


def _segmentation_scene(rng, h, w, shapes):
    """A scene for segmentation: sky, buildings and road bands for Cityscapes, or VOC background."""
    img = _background(rng, h, w)
    label = np.zeros((h, w), np.uint8)
    if shapes is CITYSCAPES_SHAPES:
        edges = sorted(rng.uniform(0.2, 0.8, size=2))
        bounds = [0, int(edges[0] * h), int(edges[1] * h), h]
        for (train_id, colour), y0, y1 in zip(CITYSCAPES_REGIONS, bounds[:-1], bounds[1:]):
            img[y0:y1] = (0.6 * img[y0:y1] + 0.4 * np.array(colour)).astype(np.uint8)
            label[y0:y1] = train_id
    _draw_shapes(rng, img, label, shapes, 3)
    return img, label


def write_cityscapes(root: str, n_train: int = 32, n_val: int = 8,
                     size: Tuple[int, int] = (128, 256), seed: int = 0) -> Dict[str, int]:
    """Cityscapes: ``leftImg8bit/{split}/toycity/*_leftImg8bit.png`` and
    ``gtFine/{split}/toycity/*_gtFine_labelTrainIds.png`` (train ids 0..18)."""
    rng = np.random.default_rng(seed)
    for split, n in _splits(n_train, n_val):
        img_dir = osp.join(root, 'leftImg8bit', split, 'toycity')
        ann_dir = osp.join(root, 'gtFine', split, 'toycity')
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(ann_dir, exist_ok=True)
        for i in range(n):
            img, label = _segmentation_scene(rng, *size, CITYSCAPES_SHAPES)
            stem = f'toycity_{i:06d}_000019'
            cv2.imwrite(osp.join(img_dir, stem + '_leftImg8bit.png'), img)
            cv2.imwrite(osp.join(ann_dir, stem + '_gtFine_labelTrainIds.png'), label)
    return dict(train=n_train, val=n_val)


def _voc_palette() -> List[int]:
    """PASCAL VOC's colour map, as its SegmentationClass PNGs carry it."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def write_voc(root: str, n_train: int = 32, n_val: int = 8, size: Tuple[int, int] = (160, 160),
              seed: int = 0) -> Dict[str, int]:
    """PASCAL VOC 2012: ``JPEGImages/*.jpg``, palette ``SegmentationClass/*.png`` and
    ``ImageSets/Segmentation/{train,val}.txt``."""
    rng = np.random.default_rng(seed)
    for sub in ('JPEGImages', 'SegmentationClass', 'ImageSets/Segmentation'):
        os.makedirs(osp.join(root, sub), exist_ok=True)
    palette = _voc_palette()
    for split, n in _splits(n_train, n_val):
        names = []
        for i in range(n):
            img, label = _segmentation_scene(rng, *size, VOC_SHAPES)
            name = f'2012_{split}_{i:06d}'
            cv2.imwrite(osp.join(root, 'JPEGImages', name + '.jpg'), img)
            png = Image.fromarray(label)
            png.putpalette(palette)  # an 'L' image with a palette becomes 'P', indices kept
            png.save(osp.join(root, 'SegmentationClass', name + '.png'))
            names.append(name)
        with open(osp.join(root, 'ImageSets', 'Segmentation', f'{split}.txt'), 'w') as f:
            f.write('\n'.join(names) + '\n')
    return dict(train=n_train, val=n_val)


WRITERS = dict(coco=write_coco, cityscapes=write_cityscapes, voc=write_voc)
