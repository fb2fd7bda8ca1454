#!/usr/bin/env python3
"""The PyTorch and Opacus side of `harambee-sim bench train`.

The bench writes the rows Harambee trains on, already encoded by the federation's schema (one
CSV line per row: the inputs, then the 0/1 label), and a JSON file of hyper-parameters,
including Harambee's initial parameters. This script trains the same network from the same
start on the same rows:

- non-DP: PyTorch, Adam (eps 1e-5, burn's default), mean binary cross-entropy with logits,
  mini-batches of `batch_size` rows in a fresh random order every epoch (index slicing of
  in-memory tensors, no DataLoader: PyTorch's fastest ordinary path);
- DP-SGD: Opacus `PrivacyEngine.make_private` with the same noise multiplier, `max_grad_norm`
  (the clipping norm) and Poisson sampling at the same rate (a `DPDataLoader`, which takes
  `1 / sampling_rate` steps per epoch, as Harambee does), the same Adam. Opacus runs with its
  defaults: `secure_mode=False`, i.e. floating-point Gaussian noise from PyTorch's generator.

It times training only: the loops over the epochs, after the imports, the data loading, the
model construction and `make_private`. One untimed warm-up run, then `repeats` timed runs, each
from the same initial parameters; it reports the median (and every run). It prints one JSON
object on stdout; on failure, an object with an `error` field and a non-zero exit code.
"""

import argparse
import csv
import json
import statistics
import sys
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the bench's JSON hyper-parameters")
    args = parser.parse_args()
    with open(args.config) as f:
        cfg = json.load(f)
    try:
        import torch
        import opacus
    except Exception as e:  # ImportError, or a broken installation
        fail(f"cannot import torch and opacus with {sys.executable}: {e}")

    torch.set_num_threads(cfg["threads"])
    torch.set_num_interop_threads(1)
    torch.manual_seed(cfg["seed"])
    x, y = load_rows(cfg["data_csv"], cfg["n_inputs"], torch)

    plain = run_repeats(cfg, lambda: train_plain(cfg, x, y, torch))
    private = run_repeats(cfg, lambda: train_private(cfg, x, y, torch, opacus))
    json.dump(
        {
            "torch_version": torch.__version__,
            "opacus_version": opacus.__version__,
            "python": sys.version.split()[0],
            "threads": torch.get_num_threads(),
            "rows": len(y),
            "nondp": plain,
            "dp": private,
        },
        sys.stdout,
    )
    print()


def fail(message):
    json.dump({"error": message}, sys.stdout)
    print()
    sys.exit(2)


def load_rows(path, n_inputs, torch):
    xs, ys = [], []
    with open(path, newline="") as f:
        for record in csv.reader(f):
            if len(record) != n_inputs + 1:
                fail(f"{path}: a row has {len(record)} fields, expected {n_inputs + 1}")
            values = [float(v) for v in record]
            xs.append(values[:n_inputs])
            ys.append(values[n_inputs])
    if not ys:
        fail(f"{path}: no rows")
    return torch.tensor(xs, dtype=torch.float32), torch.tensor(ys, dtype=torch.float32)


def build_model(cfg, torch):
    """The MLP with Harambee's initial parameters: per linear layer, the weight [n_in, n_out]
    row-major (PyTorch stores [n_out, n_in]), then the bias [n_out]."""
    nn = torch.nn
    widths = [cfg["n_inputs"]] + cfg["hidden"] + [1]
    params = cfg["init_params"]
    layers, offset = [], 0
    for idx, (n_in, n_out) in enumerate(zip(widths, widths[1:])):
        linear = nn.Linear(n_in, n_out)
        with torch.no_grad():
            weight = torch.tensor(params[offset : offset + n_in * n_out]).reshape(n_in, n_out)
            offset += n_in * n_out
            linear.weight.copy_(weight.t())
            linear.bias.copy_(torch.tensor(params[offset : offset + n_out]))
            offset += n_out
        layers.append(linear)
        if idx < len(widths) - 2:
            layers.append(nn.ReLU())
    if offset != len(params):
        fail(f"{len(params)} initial parameters for an architecture of {offset}")
    return nn.Sequential(*layers)


def adam(cfg, model, torch):
    return torch.optim.Adam(model.parameters(), lr=cfg["learning_rate"], eps=1e-5)


def train_plain(cfg, x, y, torch):
    """Returns (wall seconds, CPU seconds, rows trained on, training loss afterwards)."""
    model = build_model(cfg, torch)
    optimizer = adam(cfg, model, torch)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    n_rows, batch = len(y), cfg["batch_size"]
    started, cpu_started = time.perf_counter(), time.process_time()
    for _ in range(cfg["epochs"]):
        order = torch.randperm(n_rows)
        for start in range(0, n_rows, batch):
            idx = order[start : start + batch]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[idx]).squeeze(1), y[idx])
            loss.backward()
            optimizer.step()
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return elapsed, cpu, cfg["epochs"] * n_rows, final_loss(model, x, y, torch)


def train_private(cfg, x, y, torch, opacus):
    """Returns (wall seconds, CPU seconds, rows sampled, training loss afterwards)."""
    from opacus import PrivacyEngine
    from opacus.data_loader import DPDataLoader

    model = build_model(cfg, torch)
    optimizer = adam(cfg, model, torch)
    loader = DPDataLoader(
        torch.utils.data.TensorDataset(x, y), sample_rate=cfg["sampling_rate"]
    )
    engine = PrivacyEngine(accountant="rdp")
    # The loader already samples Poisson batches: make_private keeps it as it is.
    model, optimizer, loader = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=cfg["noise_multiplier"],
        max_grad_norm=cfg["clip_norm"],
        poisson_sampling=False,
    )
    if abs(1 / len(loader) - cfg["sampling_rate"]) > 1e-9:
        fail(f"opacus samples at {1 / len(loader)}, not {cfg['sampling_rate']}")
    loss_fn = torch.nn.BCEWithLogitsLoss()
    n_sampled = 0
    started, cpu_started = time.perf_counter(), time.process_time()
    for _ in range(cfg["epochs"]):
        for xb, yb in loader:
            n_sampled += len(yb)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb).squeeze(1), yb)
            loss.backward()
            optimizer.step()
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return elapsed, cpu, n_sampled, final_loss(model, x, y, torch)


def final_loss(model, x, y, torch):
    with torch.no_grad():
        return float(torch.nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(1), y))


def run_repeats(cfg, train):
    train()  # warm-up, untimed
    runs = [train() for _ in range(cfg["repeats"])]
    seconds = [run[0] for run in runs]
    rates = [run[2] / run[0] for run in runs]
    return {
        "samples_per_s": statistics.median(rates),
        "run_seconds": seconds,
        "run_samples": [run[2] for run in runs],
        "cores_used": sum(run[1] for run in runs) / sum(seconds),
        "final_loss": statistics.median(run[3] for run in runs),
    }


if __name__ == "__main__":
    main()
