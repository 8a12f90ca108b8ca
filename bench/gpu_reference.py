"""PyTorch's side of bench/gpu.ts: the same three GPU measurements, for the
ratio `deno task gpu-check` prints. Nothing in the toolkit runs Python; this
is the yardstick, as llm.c keeps its PyTorch reference beside the C code.

    python3 bench/gpu_reference.py --case mec-128 [--tf32]

Exact float32 unless --tf32 (TF32 off for matmul and cuDNN, as the toolkit's
default); cudnn.benchmark on, as the toolkit measures its algorithms too.
One case per process, so that the peak memory is that case's alone. Prints
one JSON line: name, imagesPerSecond, peakBytes.
"""

import argparse
import copy
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

WARM_UPS = 3
STEPS = 10


def timed(name, images, step):
    for _ in range(WARM_UPS):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(STEPS):
        step()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return {
        "name": name,
        "imagesPerSecond": images * STEPS / seconds,
        "peakBytes": torch.cuda.max_memory_allocated(),
    }


def resnet50_step(batch):
    net = torchvision.models.resnet50().cuda().train()
    x = torch.randn(batch, 3, 224, 224, device="cuda")
    labels = torch.arange(batch, device="cuda") % 1000

    def step():
        net.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), labels).backward()

    return timed(f"resnet50 224px batch {batch} forward+backward", batch, step)


class MecModel(nn.Module):
    """The official code's model: ResNet-50 (or `encoder`, whose `fc` takes
    `features` inputs) with MEC's projector, a predictor, and an EMA teacher
    of encoder and projector."""

    def __init__(self, dim=2048, pred_dim=512, encoder=None, features=2048):
        super().__init__()
        enc = encoder or torchvision.models.resnet50(zero_init_residual=True)
        f = features
        enc.fc = nn.Sequential(
            nn.Linear(f, f, bias=False), nn.BatchNorm1d(f), nn.ReLU(inplace=True),
            nn.Linear(f, f, bias=False), nn.BatchNorm1d(f), nn.ReLU(inplace=True),
            nn.Linear(f, dim), nn.BatchNorm1d(dim, affine=False),
        )
        enc.fc[6].bias.requires_grad = False
        self.encoder = enc
        self.teacher = copy.deepcopy(enc)
        for p in self.teacher.parameters():
            p.requires_grad = False
        self.predictor = nn.Sequential(
            nn.Linear(dim, pred_dim, bias=False), nn.BatchNorm1d(pred_dim), nn.ReLU(inplace=True),
            nn.Linear(pred_dim, dim),
        )


def mec_loss(p, z, lamda_inv, order=4):
    p = F.normalize(p, dim=1)
    z = F.normalize(z, dim=1)
    c = p @ z.T / lamda_inv
    power = c
    total = torch.trace(power)
    for k in range(2, order + 1):
        power = power @ c
        total = total + (-1) ** (k + 1) * torch.trace(power) / k
    return total


def mec_step(batch):
    model = MecModel().cuda().train()
    lr = 0.5 * batch / 256
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-5)
    x1 = torch.randn(batch, 3, 224, 224, device="cuda")
    x2 = torch.randn(batch, 3, 224, 224, device="cuda")
    dim = 2048
    lamda_inv = batch * 64 / dim
    student = [p for n, p in model.encoder.named_parameters()]
    teacher = [p for n, p in model.teacher.named_parameters()]

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
        loss.item()  # the one number the toolkit's step reads back

    return timed(f"mec step resnet50 224px batch {batch}", batch, step)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", required=True, choices=["resnet50-64", "mec-64", "mec-128"])
    ap.add_argument("--tf32", action="store_true")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    torch.backends.cudnn.benchmark = True
    run = {
        "resnet50-64": lambda: resnet50_step(64),
        "mec-64": lambda: mec_step(64),
        "mec-128": lambda: mec_step(128),
    }[args.case]
    result = run()
    result["device"] = torch.cuda.get_device_name()
    result["torch"] = torch.__version__
    print(json.dumps(result))


if __name__ == "__main__":
    main()
