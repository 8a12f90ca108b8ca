"""PyTorch's side of the CPU MEC step, for the ratio `bench/compare_cpu.ts`
prints: the same model, loss, SGD and EMA as bench/gpu_reference.py, on the
CPU with oneDNN (Debian's python3-torch), at the thread count given.

    /usr/bin/python3 bench/cpu_reference.py --batch 16 --size 224 --threads 2

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

from gpu_reference import MecModel, mec_loss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batch = args.batch
    model = MecModel().train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-5)
    x1 = torch.randn(batch, 3, args.size, args.size)
    x2 = torch.randn(batch, 3, args.size, args.size)
    lamda_inv = batch * 64 / 2048
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
        "name": f"torch mec step resnet50 {args.size}px batch {batch}",
        "pairsPerSecond": batch / best[0],
        "seconds": best[0],
        "cpuSeconds": best[1],
        "peakResidentBytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "threads": args.threads,
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
