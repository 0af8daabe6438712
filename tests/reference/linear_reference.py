"""Golden values for tasks/linear: iBOT's multi-head linear sweep in PyTorch on a tiny fixed problem.

Transcribes the training loop of bytedance/ibot `evaluation/eval_linear_multi.py` (one `nn.Linear` per
head with weight N(0, 0.01) and bias 0, `nn.CrossEntropyLoss()`, `torch.optim.SGD(momentum=0.9,
weight_decay=wd)` or `utils.LARS` (copied below), lr scaled by batch/256, `CosineAnnealingLR(T_max=epochs,
eta_min=0)` stepped after each epoch, top-1/top-5 with `output.topk(5)`), on features given directly
instead of a frozen backbone. The batch order of each epoch and the initial weights are exported so the
Rust test replays exactly the same optimisation; weight decay is set far above the official 1e-6 so that
its handling (bias included for SGD, excluded for LARS) shows in the weights.

Usage: /opt/refvenv/bin/python tests/reference/linear_reference.py
Writes tasks/linear/tests/fixtures/linear_golden.json.
"""

import json
import os

import numpy as np
import torch
from torch import nn

torch.set_num_threads(1)
torch.manual_seed(0)
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "tasks", "linear", "tests", "fixtures", "linear_golden.json")


class LARS(torch.optim.Optimizer):
    """bytedance/ibot utils.LARS (itself from facebookresearch/barlowtwins), unchanged."""

    def __init__(self, params, lr=0, weight_decay=0, momentum=0.9, eta=0.001,
                 weight_decay_filter=None, lars_adaptation_filter=None):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                        eta=eta, weight_decay_filter=weight_decay_filter,
                        lars_adaptation_filter=lars_adaptation_filter)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self):
        for g in self.param_groups:
            for p in g['params']:
                dp = p.grad
                if dp is None:
                    continue
                if p.ndim != 1:
                    dp = dp.add(p, alpha=g['weight_decay'])
                if p.ndim != 1:
                    param_norm = torch.norm(p)
                    update_norm = torch.norm(dp)
                    one = torch.ones_like(param_norm)
                    q = torch.where(param_norm > 0.,
                                    torch.where(update_norm > 0,
                                                (g['eta'] * param_norm / update_norm), one), one)
                    dp = dp.mul(q)
                param_state = self.state[p]
                if 'mu' not in param_state:
                    param_state['mu'] = torch.zeros_like(p)
                mu = param_state['mu']
                mu.mul_(g['momentum']).add_(dp)
                p.add_(mu, alpha=-g['lr'])


def make_features(rng, n, centers, noise):
    labels = rng.integers(0, centers.shape[0], size=n)
    x = centers[labels] + noise * rng.standard_normal((n, centers.shape[1]))
    return x.astype(np.float32), labels.astype(np.int64)


def main():
    rng = np.random.default_rng(1234)
    dim, classes, n_train, n_val = 8, 6, 60, 40
    centers = rng.standard_normal((classes, dim))
    train_x, train_y = make_features(rng, n_train, centers, 1.2)
    val_x, val_y = make_features(rng, n_val, centers, 1.2)
    batch, epochs = 16, 4
    lrs = [0.01, 0.3, 3.0]
    wds = [0.0, 0.05]
    optims = ["sgd", "lars"]
    permutes = [(lr, wd, o) for lr in lrs for wd in wds for o in optims]
    orders = [rng.permutation(n_train).tolist() for _ in range(epochs)]

    heads, optimizers, schedulers, init = [], [], [], []
    for lr, wd, o in permutes:
        lin = nn.Linear(dim, classes)
        lin.weight.data.normal_(mean=0.0, std=0.01)
        lin.bias.data.zero_()
        init.append({"weight": lin.weight.detach().numpy().astype(float).tolist(),
                     "bias": lin.bias.detach().numpy().astype(float).tolist()})
        opt_cls = torch.optim.SGD if o == "sgd" else LARS
        opt = opt_cls(lin.parameters(), lr * batch / 256.0, momentum=0.9, weight_decay=wd)
        heads.append(lin)
        optimizers.append(opt)
        schedulers.append(torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs, eta_min=0))

    tx, ty = torch.from_numpy(train_x), torch.from_numpy(train_y)
    vx, vy = torch.from_numpy(val_x), torch.from_numpy(val_y)
    history = []
    for epoch in range(epochs):
        losses = [[] for _ in heads]
        order = orders[epoch]
        for start in range(0, n_train, batch):
            idx = torch.tensor(order[start:start + batch])
            inp, target = tx[idx], ty[idx]
            for h, (lin, opt) in enumerate(zip(heads, optimizers)):
                loss = nn.CrossEntropyLoss()(lin(inp), target)
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses[h].append(loss.item())
        for s in schedulers:
            s.step()
        top1, top5 = [], []
        with torch.no_grad():
            for lin in heads:
                _, pred = lin(vx).topk(5, 1, True, True)
                correct = pred.t().eq(vy.reshape(1, -1).expand_as(pred.t()))
                top1.append(int(correct[:1].sum()))
                top5.append(int(correct[:5].sum()))
        history.append({"epoch": epoch + 1, "val_top1": top1, "val_top5": top5,
                        "train_loss": [float(np.mean(l)) for l in losses]})

    golden = {
        "note": "generated by tests/reference/linear_reference.py (PyTorch %s)" % torch.__version__,
        "dim": dim, "classes": classes, "batch_size": batch, "epochs": epochs,
        "heads": [{"lr": lr, "weight_decay": wd, "optimizer": o} for lr, wd, o in permutes],
        "train_x": train_x.astype(float).tolist(), "train_y": train_y.tolist(),
        "val_x": val_x.astype(float).tolist(), "val_y": val_y.tolist(),
        "orders": orders,
        "init": init,
        "final": [{"weight": lin.weight.detach().numpy().astype(float).tolist(),
                   "bias": lin.bias.detach().numpy().astype(float).tolist()} for lin in heads],
        "history": history,
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(golden, f)
    print("wrote", os.path.normpath(OUT))


if __name__ == "__main__":
    main()
