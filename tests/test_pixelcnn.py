"""Tests of the Gated PixelCNN prior: shapes, input validation, causality, gradients and the two samplers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from monai_vqbrain.networks.pixelcnn import GatedPixelCNN

K = 12  # codebook size of the small test nets
HW = (8, 8)
CONDITIONINGS = {
    "none": {},
    "class": {"num_classes": 3},
    "map": {"cond_channels": 2},
    "class+map": {"num_classes": 3, "cond_channels": 2},
}


pytestmark = pytest.mark.usefixtures("one_thread")


def small_net(seed: int = 0, dtype: torch.dtype = torch.float64, **kwargs) -> GatedPixelCNN:
    """A net deep enough to see every earlier position of an 8x8 grid (4 gated layers, kernel 5)."""
    torch.manual_seed(seed)
    args = {"num_embeddings": K, "channels": 16, "num_layers": 3, "kernel_size": 5}
    args.update(kwargs)
    return GatedPixelCNN(**args).to(dtype).eval()


def cond_inputs(net: GatedPixelCNN, batch: int, spatial=HW, seed: int = 1, dtype=torch.float64):
    """Random class labels / conditioning map matching what ``net`` expects (None where it has none)."""
    g = torch.Generator().manual_seed(seed)
    labels = None if net.num_classes is None else torch.randint(0, net.num_classes, (batch,), generator=g)
    cmap = None
    if net.cond_channels is not None:
        cmap = torch.randn(batch, net.cond_channels, *spatial, generator=g, dtype=dtype)
    return labels, cmap


def random_codes(batch: int, spatial=HW, seed: int = 2) -> torch.Tensor:
    return torch.randint(0, K, (batch, *spatial), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("cond", list(CONDITIONINGS))
def test_output_shape(cond):
    net = small_net(**CONDITIONINGS[cond])
    labels, cmap = cond_inputs(net, 3, spatial=(6, 9))
    out = net(random_codes(3, (6, 9)), class_labels=labels, cond_map=cmap)
    assert out.shape == (3, K, 6, 9)
    assert out.dtype == torch.float64


def test_out_channels_and_int_codes():
    net = small_net(out_channels=5, dtype=torch.float32)
    out = net(random_codes(2).to(torch.int32))
    assert out.shape == (2, 5, *HW)
    with pytest.raises(ValueError, match="out_channels == num_embeddings"):
        net.sample(1, HW)


def test_default_config():
    net = GatedPixelCNN()
    assert len(net.layers) == 16 and net.out_channels == 512 and net.head[-1].out_channels == 512


# --------------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"spatial_dims": 3}, "spatial_dims=2"),
        ({"spatial_dims": 1}, "spatial_dims=2"),
        ({"kernel_size": 4}, "odd"),
        ({"kernel_size": 1}, "odd"),
        ({"num_embeddings": 0}, "num_embeddings"),
        ({"channels": 0}, "channels"),
        ({"num_layers": -1}, "num_layers"),
        ({"out_channels": 0}, "out_channels"),
        ({"num_classes": 0}, "num_classes"),
        ({"cond_channels": 0}, "cond_channels"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_bad_constructor_args(kwargs, match):
    args = {"num_embeddings": K, "channels": 8, "num_layers": 1}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        GatedPixelCNN(**args)


def test_bad_codes():
    net = small_net()
    codes = random_codes(2)
    with pytest.raises(ValueError, match="integer"):
        net(codes.double())
    with pytest.raises(ValueError, match="integer"):
        net(codes > 3)
    with pytest.raises(ValueError, match=r"\(B, H, W\).*squeeze"):
        net(codes[:, None])
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        net(codes[0])
    with pytest.raises(ValueError, match=rf"\[0, {K}\).*\[-1, "):
        net(torch.where(codes == codes[0, 0, 0], -1, codes))
    bad = codes.clone()
    bad[1, 2, 3] = K
    with pytest.raises(ValueError, match=rf"\[0, {K}\).*, {K}\]"):
        net(bad)
    with pytest.raises(ValueError, match="torch.Tensor"):
        net(codes.tolist())


def test_bad_conditioning():
    codes = random_codes(2)
    plain = small_net()
    with pytest.raises(ValueError, match="without num_classes"):
        plain(codes, class_labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="without cond_channels"):
        plain(codes, cond_map=torch.zeros(2, 2, *HW, dtype=torch.float64))

    net = small_net(num_classes=3, cond_channels=2)
    labels, cmap = cond_inputs(net, 2)
    with pytest.raises(ValueError, match="give class_labels"):
        net(codes, cond_map=cmap)
    with pytest.raises(ValueError, match="give cond_map"):
        net(codes, class_labels=labels)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        net(codes, class_labels=labels[:1], cond_map=cmap)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        net(codes, class_labels=torch.tensor([0, 3]), cond_map=cmap)
    with pytest.raises(ValueError, match="integer"):
        net(codes, class_labels=labels.double(), cond_map=cmap)
    with pytest.raises(ValueError, match=r"shape \(2, 2, 8, 8\)"):
        net(codes, class_labels=labels, cond_map=cmap[..., :-1])
    with pytest.raises(ValueError, match="floating point"):
        net(codes, class_labels=labels, cond_map=cmap.long())


def test_bad_sample_args():
    net = small_net(num_classes=3)
    with pytest.raises(ValueError, match="num_samples"):
        net.sample(0, HW, class_labels=0)
    with pytest.raises(ValueError, match="spatial_size"):
        net.sample(1, (8,), class_labels=0)
    with pytest.raises(ValueError, match="spatial_size"):
        net.sample(1, (8, 0), class_labels=0)
    with pytest.raises(ValueError, match="spatial_size"):
        net.sample(1, 8, class_labels=0)
    with pytest.raises(ValueError, match="spatial_size"):
        net.sample(1, (8, 2.5), class_labels=0)
    with pytest.raises(ValueError, match="temperature"):
        net.sample(1, HW, temperature=-0.5, class_labels=0)
    with pytest.raises(ValueError, match="batch_size"):
        net.sample(1, HW, batch_size=0, class_labels=0)
    with pytest.raises(ValueError, match="give class_labels"):
        net.sample(1, HW)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        net.sample(2, HW, class_labels=[0, 1, 2])
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        net.sample(2, HW, class_labels=[0, 5])


# ---------------------------------------------------------------------------------------------------- causality
def _raster_positions(spatial=HW):
    return [(r, c) for r in range(spatial[0]) for c in range(spatial[1])]


@pytest.mark.parametrize("cond", ["none", "class+map"])
@pytest.mark.parametrize("kernel_size", [3, 5])
def test_causality_future_does_not_leak(cond, kernel_size):
    """Changing the code at p and everything after it leaves the logits at p and before unchanged."""
    net = small_net(kernel_size=kernel_size, **CONDITIONINGS[cond])
    codes = random_codes(1)
    positions = _raster_positions()
    batch = torch.cat([codes] * len(positions))
    order = torch.arange(HW[0] * HW[1]).view(HW)
    for i, _ in enumerate(positions):
        later = order >= i
        batch[i][later] = (codes[0][later] + 1 + i) % K
    labels, cmap = cond_inputs(net, 1)
    ref = net(codes, labels, cmap)
    labels = None if labels is None else labels.expand(len(positions))
    cmap = None if cmap is None else cmap.expand(len(positions), -1, -1, -1)
    out = net(batch, labels, cmap)
    for i, (r, c) in enumerate(positions):
        earlier_or_here = (order <= i).expand(K, -1, -1)
        torch.testing.assert_close(
            out[i][earlier_or_here], ref[0][earlier_or_here], rtol=0, atol=1e-12, msg=f"leak into position {(r, c)}"
        )


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_causality_past_is_seen(kernel_size):
    """Every single earlier position, including the blind spot of a masked PixelCNN, changes the logits at p."""
    # enough layers to cover an 8x8 grid with either kernel
    net = small_net(kernel_size=kernel_size, num_layers=3 if kernel_size == 5 else 7)
    codes = random_codes(1)
    ref = net(codes)[0]
    for r, c in [(4, 3), (7, 7), (3, 0), (5, 6)]:
        p = r * HW[1] + c
        earlier = _raster_positions()[:p]
        batch = codes.repeat(len(earlier), 1, 1)
        for i, (qr, qc) in enumerate(earlier):
            batch[i, qr, qc] = (codes[0, qr, qc] + 1) % K
        diff = (net(batch)[:, :, r, c] - ref[:, r, c]).abs().amax(dim=1)
        unseen = [q for q, d in zip(earlier, diff.tolist(), strict=True) if d < 1e-9]
        assert not unseen, f"logits at {(r, c)} do not depend on {unseen}"
        # the classic blind spot of a single masked k x k stack: above-right of the position
        for q in [(r - 1, c + 1), (r - 1, c + 2), (r - 2, c + 2)]:
            if 0 <= q[0] and q[1] < HW[1]:
                assert diff[earlier.index(q)] > 1e-9, f"blind spot: {q} does not influence {(r, c)}"


def _dependency_masks(net: GatedPixelCNN, spatial, positions) -> torch.Tensor:
    """(len(positions), H, W) bool: the code positions the logits at each position depend on.

    Found from the gradients w.r.t. the code embeddings, one batch element per position, in one backward pass.
    """
    store = {}

    def hook(module, inputs, output):
        output.retain_grad()
        store["emb"] = output

    codes = torch.randint(0, net.num_embeddings, (1, *spatial), generator=torch.Generator().manual_seed(0))
    handle = net.embedding.register_forward_hook(hook)
    try:
        out = net(codes.repeat(len(positions), 1, 1))
    finally:
        handle.remove()
    sum(out[i, :, r, c].sum() for i, (r, c) in enumerate(positions)).backward()
    return store["emb"].grad.abs().sum(-1) > 0


@pytest.mark.parametrize("num_layers, kernel_size", [(2, 5), (3, 3)])
def test_receptive_field_matches_docstring(num_layers, kernel_size):
    """n = num_layers + 1 layers, p = k // 2: n*p + 1 rows above within c +- n*p, and n*p + 1 codes to the left."""
    net = small_net(num_layers=num_layers, kernel_size=kernel_size)
    n, p = num_layers + 1, kernel_size // 2
    spatial, (r, c) = (24, 24), (14, 12)
    expected = torch.zeros(spatial, dtype=torch.bool)
    expected[r - n * p - 1 : r, c - n * p : c + n * p + 1] = True
    expected[r, c - n * p - 1 : c] = True
    assert torch.equal(_dependency_masks(net, spatial, [(r, c)])[0], expected)


def test_default_config_sees_whole_32x32_past():
    """The default depth and kernel (16 layers, k = 5) see every earlier code of a 32x32 map."""
    net = GatedPixelCNN(num_embeddings=16, channels=8)  # default depth and kernel; narrow and small to be quick
    order = torch.arange(32 * 32).view(32, 32)
    positions = [(31, 31), (31, 0), (16, 0), (0, 31)]
    for (r, c), mask in zip(positions, _dependency_masks(net, (32, 32), positions), strict=True):
        assert torch.equal(mask, order < r * 32 + c), (r, c)


# --------------------------------------------------------------------------------------------------- gradients
def test_gradient_reaches_every_parameter():
    net = small_net(dtype=torch.float32, num_classes=3, cond_channels=2, dropout=0.1).train()
    codes = random_codes(4)
    labels, cmap = cond_inputs(net, 4, dtype=torch.float32)
    loss = F.cross_entropy(net(codes, labels, cmap), codes)
    loss.backward()
    dead = [name for name, prm in net.named_parameters() if prm.grad is None or not prm.grad.abs().sum() > 0]
    assert not dead, f"no gradient reaches {dead}"


def test_autocast_bf16_training_step():
    net = small_net(dtype=torch.float32, num_classes=3, cond_channels=2).train()
    codes = random_codes(2)
    labels, cmap = cond_inputs(net, 2, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = net(codes, labels, cmap)
        loss = F.cross_entropy(logits.float(), codes)
    assert logits.dtype == torch.bfloat16
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(prm.grad).all() for prm in net.parameters())


# ---------------------------------------------------------------------------------------------------- sampling
def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_sample_shape_dtype_and_mode_restored():
    net = small_net(dropout=0.2).train()
    out = net.sample(3, (5, 7), generator=_gen(0), progress=True)
    assert out.shape == (3, 5, 7) and out.dtype == torch.long
    assert 0 <= int(out.min()) and int(out.max()) < K
    assert net.training  # sampling runs in eval mode and restores the previous mode


@pytest.mark.parametrize("fast", [True, False])
def test_sample_deterministic_per_seed(fast):
    net = small_net()
    a = net.sample(4, HW, generator=_gen(7), fast=fast)
    b = net.sample(4, HW, generator=_gen(7), fast=fast)
    c = net.sample(4, HW, generator=_gen(8), fast=fast)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])  # the samples of one call differ from each other too
    torch.manual_seed(3)
    d = net.sample(2, HW, fast=fast)
    torch.manual_seed(3)
    assert torch.equal(d, net.sample(2, HW, fast=fast))  # without a generator, torch's global seed decides


def test_samples_do_not_depend_on_batch_size():
    net = small_net()
    full = net.sample(5, HW, generator=_gen(1))
    assert torch.equal(full, net.sample(5, HW, generator=_gen(1), batch_size=2))
    assert torch.equal(full, net.sample(5, HW, generator=_gen(1), batch_size=1))


@pytest.mark.parametrize("cond", ["none", "class+map"])
def test_temperature_zero_is_greedy(cond):
    net = small_net(**CONDITIONINGS[cond])
    labels, cmap = cond_inputs(net, 3)
    a = net.sample(3, HW, temperature=0, generator=_gen(0), class_labels=labels, cond_map=cmap)
    b = net.sample(3, HW, temperature=0, generator=_gen(1), class_labels=labels, cond_map=cmap)
    assert torch.equal(a, b)  # no randomness
    # each greedy code is the argmax of its own logits given the codes before it
    assert torch.equal(net(a, labels, cmap).argmax(dim=1), a)


def test_low_temperature_gives_likelier_samples():
    net = small_net()
    codes = {t: net.sample(8, HW, temperature=t, generator=_gen(0)) for t in (0.2, 1.0, 5.0)}
    nll = {t: F.cross_entropy(net(x), x).item() for t, x in codes.items()}
    assert nll[0.2] < nll[1.0] < nll[5.0], nll

    def entropy(x):
        probs = torch.bincount(x.flatten(), minlength=K).double() / x.numel()
        return -(probs[probs > 0] * probs[probs > 0].log()).sum().item()

    assert entropy(codes[0.2]) < entropy(codes[5.0])


def test_class_labels_as_int_and_sequence():
    net = small_net(num_classes=3)
    a = net.sample(2, HW, generator=_gen(0), class_labels=1)
    assert torch.equal(a, net.sample(2, HW, generator=_gen(0), class_labels=[1, 1]))
    assert torch.equal(a, net.sample(2, HW, generator=_gen(0), class_labels=torch.tensor([1, 1])))
    assert torch.equal(a, net.sample(2, HW, generator=_gen(0), class_labels=torch.tensor(1)))
    assert torch.equal(a, net.sample(np.int64(2), (np.int64(8), 8), generator=_gen(0), class_labels=np.int64(1)))


@pytest.mark.parametrize("cond", ["class", "map"])
def test_conditioning_changes_logits(cond):
    net = small_net(**CONDITIONINGS[cond])
    codes = random_codes(2)
    (labels, cmap), (labels2, cmap2) = cond_inputs(net, 2, seed=1), cond_inputs(net, 2, seed=2)
    if labels is not None:
        labels2 = (labels + 1) % 3
    assert not torch.allclose(net(codes, labels, cmap), net(codes, labels2, cmap2))


# ------------------------------------------------------------------------------------------------ fast == naive
@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.0])
@pytest.mark.parametrize("cond", list(CONDITIONINGS))
def test_fast_matches_naive(cond, temperature):
    net = small_net(**CONDITIONINGS[cond])
    labels, cmap = cond_inputs(net, 5, spatial=(6, 7))
    kwargs = {"temperature": temperature, "class_labels": labels, "cond_map": cmap}
    fast = net.sample(5, (6, 7), generator=_gen(11), fast=True, batch_size=3, **kwargs)
    naive = net.sample(5, (6, 7), generator=_gen(11), fast=False, batch_size=3, **kwargs)
    assert torch.equal(fast, naive)


@pytest.mark.parametrize("num_layers, kernel_size", [(0, 3), (2, 3), (1, 7)])
def test_fast_matches_naive_other_shapes(num_layers, kernel_size):
    net = small_net(num_layers=num_layers, kernel_size=kernel_size, num_classes=2)
    for spatial in [(1, 1), (1, 5), (5, 1), (4, 9)]:
        fast = net.sample(3, spatial, generator=_gen(5), class_labels=[0, 1, 0], fast=True)
        naive = net.sample(3, spatial, generator=_gen(5), class_labels=[0, 1, 0], fast=False)
        assert torch.equal(fast, naive), spatial


def test_fast_matches_naive_float32():
    """In float32 the two paths differ by rounding only, which changes a sample only at a near-tie."""
    net = small_net(dtype=torch.float32, num_classes=3, cond_channels=2)
    labels, cmap = cond_inputs(net, 4, dtype=torch.float32)
    fast = net.sample(4, HW, generator=_gen(3), class_labels=labels, cond_map=cmap, fast=True)
    naive = net.sample(4, HW, generator=_gen(3), class_labels=labels, cond_map=cmap, fast=False)
    assert torch.equal(fast, naive)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_sampling_matches_cpu():
    net = small_net(num_classes=3, cond_channels=2)
    labels, cmap = cond_inputs(net, 3)
    cpu = net.sample(3, HW, generator=_gen(4), class_labels=labels, cond_map=cmap)
    gpu_net = net.cuda()
    fast = gpu_net.sample(3, HW, generator=_gen(4), class_labels=labels, cond_map=cmap.cuda())
    naive = gpu_net.sample(3, HW, generator=_gen(4), class_labels=labels, cond_map=cmap, fast=False)
    assert fast.is_cuda
    assert torch.equal(fast, naive)
    assert torch.equal(fast.cpu(), cpu)  # the noise is drawn on the CPU, so the device does not matter


def test_top_p_draws_only_within_the_nucleus():
    net = small_net()
    full = net.sample(6, HW, generator=_gen(0))
    assert torch.equal(full, net.sample(6, HW, generator=_gen(0), top_p=1.0))  # 1 is plain sampling
    nucleus = net.sample(6, HW, generator=_gen(0), top_p=0.5)
    # every code drawn lies in its position's nucleus: the more likely codes before it hold less than top_p
    probs = net(nucleus).softmax(dim=1)
    own = probs.gather(1, nucleus[:, None])
    mass_before = (probs * (probs > own)).sum(dim=1, keepdim=True)
    assert (mass_before < 0.5 + 1e-5).all()
    assert not torch.equal(full, nucleus)
    assert F.cross_entropy(net(nucleus), nucleus).item() < F.cross_entropy(net(full), full).item()
    # the fast and the naive sampler cut the same nucleus
    assert torch.equal(nucleus, net.sample(6, HW, generator=_gen(0), top_p=0.5, fast=False))
    with pytest.raises(ValueError, match="top_p"):
        net.sample(1, HW, top_p=0.0)
