"""Losses and targets over a process group, with 2 gloo processes: KoLeo's neighbours among the rows of the
group's ranks (DINOv3's grouped KoLeo) and Sinkhorn-Knopp balanced within a group equal the one-process
computation on the rows of all ranks; without a group they stay per device."""

import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dinokit.ssl import koleo_loss, sinkhorn_knopp


def _rows(seed: int) -> torch.Tensor:
    return torch.randn(5, 8, generator=torch.Generator().manual_seed(seed))


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    group = dist.new_group([0, 1])
    x = _rows(rank).requires_grad_(True)
    grouped = koleo_loss(x, group=group)
    grouped.backward()
    result = {
        "grouped": grouped.detach(),
        "grad": x.grad.clone(),
        "local": koleo_loss(_rows(rank)),
        "sinkhorn": sinkhorn_knopp(_rows(10 + rank), 0.1, group=group),
    }
    torch.save(result, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


def test_grouped_koleo_and_sinkhorn_equal_one_process_on_all_rows(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    both = torch.cat([_rows(0), _rows(1)]).requires_grad_(True)  # [10, 8]
    whole = koleo_loss(both)
    whole.backward()
    # each rank's value is the mean over its own rows; equal row counts: their mean is the one-process value
    torch.testing.assert_close((ranks[0]["grouped"] + ranks[1]["grouped"]) / 2, whole.detach())
    assert not torch.allclose(ranks[0]["grouped"], ranks[0]["local"])  # the group changed the neighbours
    torch.testing.assert_close(ranks[0]["local"], koleo_loss(_rows(0)))
    # gradients reach the neighbours on the other rank (summed there by the differentiable all-gather); the sum
    # over ranks of the per-rank means is twice the mean over all rows
    torch.testing.assert_close(torch.cat([ranks[0]["grad"], ranks[1]["grad"]]), 2 * both.grad)
    expected = sinkhorn_knopp(torch.cat([_rows(10), _rows(11)]), 0.1)
    torch.testing.assert_close(torch.cat([ranks[0]["sinkhorn"], ranks[1]["sinkhorn"]]), expected)
