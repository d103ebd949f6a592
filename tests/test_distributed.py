"""Two CPU processes (gloo) against one: the gathered contrastive loss gives the full-batch gradient."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

import visembed
from visembed.distributed import best_device, gather_with_grad, init_distributed, reduce_number
from visembed.losses import ContrastiveLoss


KINDS = ("clip", "siglip")


class PairEncoder(nn.Module):
    """A stand-in dual encoder small enough for a unit test: one linear map per modality."""

    def __init__(self, kind: str):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.image = nn.Parameter(torch.randn(8, 5, generator=g))
        self.text = nn.Parameter(torch.randn(6, 5, generator=g))
        self.logit_scale = nn.Parameter(torch.tensor(2.0))
        self.logit_bias = nn.Parameter(torch.tensor(-3.0)) if kind == "siglip" else None

    def forward(self, x, y, bank=None):
        out = [F.normalize(x @ self.image, dim=-1), F.normalize(y @ self.text, dim=-1), self.logit_scale.exp(),
               self.logit_bias]
        return out if bank is None else out + [F.normalize(bank @ self.text, dim=-1)]


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(10, 8, generator=g), torch.randn(10, 6, generator=g)


def _bank():
    """A caption bank of 7 text-tower outputs, and each sample's row in it (-1: not in the bank)."""
    g = torch.Generator().manual_seed(2)
    return torch.randn(7, 6, generator=g), torch.tensor([0, 3, -1, 6, 1, 1, 2, -1, 5, 4])


def _loss(kind, model, x, y, with_bank, rank=0, world=1, sl=slice(None)):
    if not with_bank:
        return ContrastiveLoss(kind, rank=rank, world_size=world)(*model(x[sl], y[sl]))["contrastive_loss"]
    bank, labels = _bank()
    loss_fn = ContrastiveLoss(kind, rank=rank, world_size=world, bank_weight=0.7)
    return loss_fn(*model(x[sl], y[sl], bank=bank), bank_labels=labels[sl])["contrastive_loss"]


def _grads(model):
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def _worker(rank: int, world: int, store: str, queue) -> None:
    torch.set_num_threads(1)  # two processes on two cores
    # a file store, not tcp://: rank 0 would host a TCP store whose server thread outlives the group
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        # gather: rank order, unequal sizes (rank 0 has 2 rows, rank 1 has 3), gradient to the local rows
        local = torch.full((2 + rank, 3), float(rank), requires_grad=True)
        gathered = gather_with_grad(local)
        gathered.sum().backward()

        # a DDP step on this rank's slice of an uneven batch (4 + 6 samples)
        x, y = _data()
        sl = slice(0, 4) if rank == 0 else slice(4, 10)
        steps = {}
        for kind in KINDS:
            for with_bank in (False, True):
                model = nn.parallel.DistributedDataParallel(PairEncoder(kind))
                loss = _loss(kind, model, x, y, with_bank, rank, world, sl)
                loss.backward()
                # numpy, not tensors: tensors travel through shared memory that dies with this process
                steps[kind, with_bank] = (loss.item(), {k: v.numpy() for k, v in _grads(model.module).items()})
        numbers = (reduce_number(rank + 1, "sum"), reduce_number(rank + 1, "min"))
        queue.put((rank, gathered.detach().numpy(), local.grad.numpy(), steps, numbers))
        # both ranks done before either tears down: a rank destroying its gloo group while the other
        # still reads from it aborted once ("terminate called without an active exception")
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # The results are in the queue; leave without interpreter teardown. Twice in CI (f370063, stop 27) a rank
    # aborted after its work was done: "terminate called without an active exception", a C++ thread of
    # torch's distributed runtime destroyed while joinable at exit. That is torch's exit, not our code.
    queue.close()
    queue.join_thread()
    os._exit(0)


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    """Per rank: (gathered, gradient of the local rows, {kind: (loss, parameter gradients)}, reduced numbers)."""
    queue = mp.get_context("spawn").Queue()
    store = tmp_path_factory.mktemp("gloo") / "store"
    mp.spawn(_worker, args=(2, str(store), queue), nprocs=2, join=True)
    results = {}
    for _ in range(2):
        rank, gathered, local_grad, steps, numbers = queue.get(timeout=60)
        steps = {key: (loss, {k: torch.from_numpy(v) for k, v in grads.items()}) for key, (loss, grads) in steps.items()}
        results[rank] = (torch.from_numpy(gathered), torch.from_numpy(local_grad), steps, numbers)
    return results


def test_gather_keeps_rank_order_and_sums_gradients_back(two_process_results):
    results = two_process_results
    expected = torch.cat([torch.zeros(2, 3), torch.ones(3, 3)])
    for rank in (0, 1):
        gathered, local_grad = results[rank][0], results[rank][1]
        assert torch.equal(gathered, expected)
        # both ranks' sum() depends on this rank's rows: each row receives 1 from each of 2 ranks
        assert torch.equal(local_grad, torch.full((2 + rank, 3), 2.0))
        assert results[rank][3] == (3, 1)  # reduce_number: sum and min of 1 and 2


@pytest.mark.parametrize("with_bank", [False, True], ids=["batch", "caption-bank"])
@pytest.mark.parametrize("kind", KINDS)
def test_two_processes_match_one_process_full_batch(two_process_results, kind, with_bank):
    x, y = _data()
    model = PairEncoder(kind)
    loss = _loss(kind, model, x, y, with_bank)
    loss.backward()
    for rank in (0, 1):
        rank_loss, grads = two_process_results[rank][2][kind, with_bank]
        assert rank_loss == pytest.approx(loss.item(), abs=1e-6)  # every rank sees the global loss
        for name, grad in _grads(model).items():
            torch.testing.assert_close(grads[name], grad, atol=1e-6, rtol=1e-5, msg=f"{name} on rank {rank}")


def test_single_process_helpers_without_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_distributed() == (0, 1, 0, best_device())
    x = torch.ones(3, 2)
    assert gather_with_grad(x) is x


@pytest.mark.slow
def test_torchrun_two_processes_train_like_one_with_the_whole_batch(tmp_path):
    """`visembed train` under torchrun, 2 ranks x 64 samples, against 1 process x 128: same weights."""
    repo = Path(visembed.__file__).resolve().parents[1]
    # one thread per process (torchrun's default for its workers): 3 processes share 2 cores
    env = {**os.environ, "PYTHONPATH": str(repo), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    # no augmentation: each rank draws its own, so random crops would differ from one process's
    args = ["train", "--data", "builtin:shapes?n=300", "--preset", "tiny", "--steps", "2", "--batch-size", "128",
            "--checkpoint-every", "100", "--no-progress", "--set", "data.augment.enabled=false"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    runs = {
        "one": subprocess.Popen([sys.executable, "-m", "visembed.cli", *args, "--out", str(tmp_path / "one")],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=repo),
        "two": subprocess.Popen([*torchrun, "-m", "visembed.cli", *args, "--out", str(tmp_path / "two")],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=repo),
    }
    for name, proc in runs.items():
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{name}:\n{out}"
    one = load_file(str(tmp_path / "one" / "model.safetensors"))
    two = load_file(str(tmp_path / "two" / "model.safetensors"))
    assert one.keys() == two.keys()
    for name in one:  # (a run without the gather differs by ~5e-4)
        torch.testing.assert_close(two[name], one[name], atol=1e-5, rtol=1e-4, msg=name)
    final = json.loads((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()[-1])
    assert final["world_size"] == 2
