"""PyTorch's side of the CPU MEC step, for the ratio `bench/compare_cpu.ts`
prints: the same model, loss, SGD and EMA as bench/gpu_reference.py, on the
CPU with oneDNN (Debian's python3-torch), at the thread count given.

    /usr/bin/python3 bench/cpu_reference.py --batch 16 --size 224 --threads 2
    /usr/bin/python3 bench/cpu_reference.py --demo --batch 256 --size 28

`--demo` is the demo's network instead of ResNet-50: a ResNet-18 of base
width 16 with the small-image stem (3x3 stride-1 conv, no max-pool), MEC's
projector to 512 and a predictor through 128, as the official code builds
them for that encoder.

One case per process, so that the peak resident memory is that case's
alone. Prints one JSON line: name, pairsPerSecond, seconds (wall, best
step), cpuSeconds (process CPU time of that step, all threads), and
peakResidentBytes.
"""

import argparse
import json
import resource
import time

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from gpu_reference import MecModel, mec_loss


class SmallResNet18(nn.Module):
    """torchvision's ResNet-18 at base width `width`, with the small stem."""

    def __init__(self, width):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        layers, inplanes = [], width
        for stage in range(4):
            planes = width * 2**stage
            stride = 1 if stage == 0 else 2
            down = None
            if stride != 1 or inplanes != planes:
                down = nn.Sequential(
                    nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                    nn.BatchNorm2d(planes),
                )
            layers.append(nn.Sequential(
                BasicBlock(inplanes, planes, stride, down), BasicBlock(planes, planes)
            ))
            inplanes = planes
        self.layers = nn.Sequential(*layers)
        self.features = inplanes
        self.fc = nn.Identity()

    def forward(self, x):
        x = self.layers(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def demo_model():
    """The demo's MEC model, built as MecModel builds ResNet-50's."""
    encoder = SmallResNet18(16)
    return MecModel(dim=512, pred_dim=128, encoder=encoder, features=encoder.features)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--demo", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batch = args.batch
    model = (demo_model() if args.demo else MecModel()).train()
    dim = 512 if args.demo else 2048
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-5)
    x1 = torch.randn(batch, 3, args.size, args.size)
    x2 = torch.randn(batch, 3, args.size, args.size)
    lamda_inv = batch * 64 / dim
    student = list(model.encoder.parameters())
    teacher = list(model.teacher.parameters())

    def step():
        z1 = model.predictor(model.encoder(x1))
        z2 = model.predictor(model.encoder(x2))
        with torch.no_grad():
            p1 = model.teacher(x1)
            p2 = model.teacher(x2)
        mec = (mec_loss(p1, z2, lamda_inv) + mec_loss(p2, z1, lamda_inv)) * 0.5 / batch
        loss = -mec * lamda_inv
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            torch._foreach_mul_(teacher, 0.996)
            torch._foreach_add_(teacher, student, alpha=0.004)
        loss.item()

    step()  # warm-up: oneDNN builds its kernels, the allocator fills
    best = None
    for _ in range(args.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        t, c = time.perf_counter() - t0, time.process_time() - c0
        if best is None or t < best[0]:
            best = (t, c)
    print(json.dumps({
        "name": f"torch mec step {'demo resnet18' if args.demo else 'resnet50'} {args.size}px batch {batch}",
        "pairsPerSecond": batch / best[0],
        "seconds": best[0],
        "cpuSeconds": best[1],
        "peakResidentBytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "threads": args.threads,
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
