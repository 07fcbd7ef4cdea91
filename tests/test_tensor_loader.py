"""The tensor loader: the per-item DataLoader's batches (same (seed, epoch) shuffle, same DDP shares, same mid-epoch
resume), served as index slices of the stored tensors."""

from __future__ import annotations

import pytest
import torch
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper

from genlab.checks import ConfigError
from genlab.data import SyntheticDataModule
from genlab.data.base import EpochShuffleSampler, TensorLoader, epoch_order, rank_share


def datamodule(loader: str, n: int = 90, batch_size: int = 16) -> SyntheticDataModule:
    dm = SyntheticDataModule(num_samples=n, image_size=8, batch_size=batch_size, loader=loader)
    dm.setup()
    return dm


def batches(loader, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.sampler.set_epoch(epoch)
    return list(loader)


@pytest.mark.parametrize("split", ["train", "val"])
def test_the_tensor_loader_serves_the_per_item_loaders_batches(split: str) -> None:
    torch.manual_seed(7)  # the loaders' seed is the run's
    tensor, items = datamodule("tensor"), datamodule("items")
    make = "train_dataloader" if split == "train" else "val_dataloader"
    a, b = getattr(tensor, make)(), getattr(items, make)()
    assert isinstance(a, TensorLoader) and not isinstance(b, TensorLoader)
    assert len(a) == len(b)
    for epoch in (0, 1) if split == "train" else (0,):
        ours = batches(a, epoch) if split == "train" else list(a)
        theirs = batches(b, epoch) if split == "train" else list(b)
        assert len(ours) == len(theirs) == len(a)
        for (x, y), (x_ref, y_ref) in zip(ours, theirs, strict=True):
            assert x.dtype == torch.float32 and torch.equal(x, x_ref) and torch.equal(y, y_ref)
    if split == "train":
        assert not torch.equal(batches(a, 0)[0][1], batches(a, 1)[0][1])  # another epoch, another order


def test_each_rank_gets_lightnings_distributed_share_and_the_shares_cover_the_epoch() -> None:
    n, world, seed, epoch = 90, 4, 3, 2
    order = epoch_order(n, seed, epoch)
    shares = [rank_share(order, rank, world) for rank in range(world)]
    sampler = EpochShuffleSampler(n, seed)
    sampler.set_epoch(epoch)
    for rank, share in enumerate(shares):
        wrapped = DistributedSamplerWrapper(sampler, num_replicas=world, rank=rank, shuffle=False)
        assert share.tolist() == list(wrapped)
    assert set(torch.cat(shares).tolist()) == set(range(n)) and sum(len(s) for s in shares) == 92  # padded by 2
    dataset = datamodule("tensor").train_set
    loaders = [TensorLoader(dataset, 5, True, seed=seed, rank=r, world=world) for r in range(world)]
    seen = torch.cat([y for loader in loaders for _, y in batches(loader, epoch)])
    per_rank = len(shares[0]) // 5  # whole batches of 5 from each rank's 23
    assert len(seen) == world * per_rank * 5 and all(len(loader) == per_rank for loader in loaders)


def test_a_loader_resumed_mid_epoch_serves_the_batches_not_yet_trained_on() -> None:
    dataset = datamodule("tensor").train_set
    whole = batches(TensorLoader(dataset, 8, True, seed=1), 3)
    resumed = TensorLoader(dataset, 8, True, seed=1)
    resumed.batches_done = lambda: 4
    state = resumed.state_dict()
    resumed.sampler.set_epoch(3)
    resumed.load_state_dict(state | {"epoch": 3})
    rest = list(resumed)
    assert len(rest) == len(whole) - 4
    assert all(torch.equal(x, w) for (x, _), (w, _) in zip(rest, whole[4:], strict=True))
    assert len(list(resumed)) == len(whole)  # the skip is for that one epoch only


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"loader": "tensors"}, r"loader must be one of \['tensor', 'items'\], got 'tensors'"),
        ({"num_workers": 2}, r"num_workers=2 needs loader=items"),
    ],
)
def test_bad_loader_settings_name_the_value(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SyntheticDataModule(num_samples=40, **kwargs)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_the_split_moves_there_once_and_batches_are_made_there() -> None:
    dm = datamodule("tensor")
    placed = dm.placed(dm.train_set, torch.device("cuda"))
    assert placed.images.is_cuda and dm.placed(dm.train_set, torch.device("cuda")) is placed
    x, y = next(iter(TensorLoader(placed, 16, True, device="cuda")))
    assert x.is_cuda and y.is_cuda and x.dtype == torch.float32
