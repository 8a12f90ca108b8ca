"""torchvision's side of the data benchmark (bench/data_bench.ts): PIL's
decode of the same photograph and MEC's two views as the paper's code builds
them (transforms.Compose of RandomResizedCrop, ColorJitter, RandomGrayscale,
GaussianBlur, Solarize, RandomHorizontalFlip, ToTensor, Normalize), on one
core, for the per-core ratio `deno task bench --only=data` is read against.
Nothing in the toolkit runs Python; this is the yardstick.

    python3 bench/torchvision_views.py [--json] [--seconds 3]

torch runs on one thread; CPU time of this process is measured, so a busy
machine slows the figures less than it slows wall time (both are printed).
"""

import argparse
import io
import json
import os
import random
import time

import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision import transforms

PHOTO = os.path.join(
    os.path.dirname(__file__), "..", "tests", "fixtures", "photo",
    "coffee-500x375.jpg")


class GaussianBlur:
    """MEC's (and BYOL's) blur: PIL's GaussianBlur, sigma drawn per image."""

    def __init__(self, p, sigma=(0.1, 2.0)):
        self.p, self.sigma = p, sigma

    def __call__(self, img):
        if random.random() < self.p:
            s = random.uniform(*self.sigma)
            return img.filter(ImageFilter.GaussianBlur(radius=s))
        return img


class Solarize:
    def __init__(self, p):
        self.p = p

    def __call__(self, img):
        return ImageOps.solarize(img) if random.random() < self.p else img


def mec_view(blur, solarize):
    return transforms.Compose([
        transforms.RandomResizedCrop(224, scale=(0.2, 1.0)),
        transforms.RandomApply(
            [transforms.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
        transforms.RandomGrayscale(p=0.2),
        GaussianBlur(p=blur),
        Solarize(p=solarize),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406],
                             std=[0.229, 0.224, 0.225]),
    ])


def rate(name, work, seconds):
    """Images per second of CPU time (and of wall time) over `seconds`."""
    work()
    n = 0
    c0, t0 = time.process_time(), time.perf_counter()
    while time.process_time() - c0 < seconds:
        work()
        n += 1
    cpu = time.process_time() - c0
    wall = time.perf_counter() - t0
    return {"name": name, "value": n / cpu, "wall": n / wall,
            "unit": "images/s"}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    random.seed(0)
    torch.manual_seed(0)
    data = open(PHOTO, "rb").read()
    view1, view2 = mec_view(1.0, 0.0), mec_view(0.1, 0.2)

    def decode():
        return Image.open(io.BytesIO(data)).convert("RGB")

    image = decode()
    results = [
        rate("PIL decode JPEG 500x375", decode, args.seconds),
        rate("torchvision MEC two views 224 px",
             lambda: (view1(image), view2(image)), args.seconds),
        rate("PIL decode 500x375 + torchvision two views 224 px",
             lambda: (lambda im: (view1(im), view2(im)))(decode()),
             args.seconds),
    ]
    for r in results:
        if args.json:
            print(json.dumps(r))
        else:
            print(f"{r['name']:<56} {r['value']:8.1f} images/s per core "
                  f"({1000 / r['value']:.2f} ms; wall {r['wall']:.1f}/s)")


if __name__ == "__main__":
    main()
