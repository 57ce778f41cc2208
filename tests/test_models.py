"""Models: the output-blend mixture decoder against per-sample weight blending, VQ, shapes, export."""
import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainer.models import (EMAQuantizer, KLSchedule, MixtureDecoder, ModelSpec, MotionVAE, PoseDecoder,
                            PoseEncoder, kl_divergence, kl_per_dimension, next_frame_decoder,
                            reconstruction_loss)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def per_sample_weight_blend(decoder: MixtureDecoder, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """The reference formulation: blend W = sum_e c_e W_e for every sample, then a batched matmul."""
    coeff = decoder.coefficients(z, c)
    layers = decoder.expert_parameters()
    h = c
    for i, (w, b) in enumerate(layers):                       # w (E, in, out), b (E, out)
        x = torch.cat((z, h), dim=-1)
        w_blend = (coeff[:, :, None, None] * w[None]).sum(1)  # (B, in, out)
        b_blend = (coeff[:, :, None] * b[None]).sum(1)        # (B, out)
        h = torch.bmm(x.unsqueeze(1), w_blend).squeeze(1) + b_blend
        if i < len(layers) - 1:
            h = F.elu(h)
    return h


def randomise(module: torch.nn.Module, seed: int) -> None:
    """Non-tiny random parameters (std about 1/sqrt(fan-in), biases 0.3) so every term matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            fan_in = p.shape[0] if p.dim() == 3 else (p.shape[-1] if p.dim() == 2 else 1)
            p.copy_(torch.randn(p.shape, generator=gen) * (1.5 / fan_in ** 0.5 if p.dim() > 1 else 0.3))


@pytest.mark.parametrize("n_cond,n_future,experts", [(1, 1, 6), (2, 1, 6), (1, 3, 4), (4, 2, 3)])
def test_mixture_decoder_equals_per_sample_weight_blending(n_cond, n_future, experts):
    frame, latent = 23, 8
    spec = ModelSpec(frame_size=frame, latent=latent, hidden=48, n_cond=n_cond, n_future=n_future,
                     experts=experts, gate_hidden=16)
    decoder = MotionVAE(spec).decoder
    randomise(decoder, seed=n_cond * 10 + n_future)
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(37, latent, generator=gen)
    c = torch.randn(37, n_cond * frame, generator=gen)
    ours = decoder(z, c)
    reference = per_sample_weight_blend(decoder, z, c)
    assert ours.shape == (37, n_future * frame)
    assert reference.abs().max() > 1.0  # the weights are not tiny: outputs are of order one or more
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    # The gradients (what training sees) agree as well.
    g_ours = torch.autograd.grad(ours.pow(2).sum(), list(decoder.parameters()))
    g_ref = torch.autograd.grad(reference.pow(2).sum(), list(decoder.parameters()))
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_reference_expert_init_is_about_16x_smaller_than_linear():
    ref = MixtureDecoder(32, 267, 267, 256, init="reference")
    lin = MixtureDecoder(32, 267, 267, 256, init="linear")
    ratio = lin.weights[1].std() / ref.weights[1].std()
    assert 14 < ratio < 18
    assert torch.all(ref.biases[0] == 0.01)


@pytest.mark.parametrize("n_cond,n_future", [(1, 1), (3, 2)])
@pytest.mark.parametrize("decoder", ["mixture", "single"])
def test_shapes(decoder, n_cond, n_future):
    frame, latent, batch = 19, 6, 5
    model = MotionVAE(ModelSpec(frame_size=frame, latent=latent, hidden=32, n_cond=n_cond, n_future=n_future,
                                decoder=decoder))
    x, c = torch.randn(batch, n_future * frame), torch.randn(batch, n_cond * frame)
    out = model(x, c)
    assert out["prediction"].shape == (batch, n_future * frame)
    assert out["mu"].shape == out["logvar"].shape == (batch, latent)
    assert model.sample_prior(7).shape == (7, latent)
    assert next_frame_decoder(model)(torch.randn(4, latent), torch.randn(4, n_cond * frame)).shape == (4, frame)
    assert isinstance(model.decoder, MixtureDecoder if decoder == "mixture" else PoseDecoder)


def test_encoder_feeds_the_target_to_every_layer():
    enc = PoseEncoder(target_size=10, cond_size=20, latent=4, hidden=16)
    assert enc.fc1.in_features == 30 and enc.fc2.in_features == 26 and enc.head.in_features == 26
    assert enc(torch.randn(3, 10), torch.randn(3, 20)).shape == (3, 8)


def test_vq_model_shapes_and_prior():
    model = MotionVAE(ModelSpec(frame_size=11, latent=4, hidden=16, quantize=True, vq_codes=8))
    out = model(torch.randn(20, 11), torch.randn(20, 11))
    assert out["prediction"].shape == (20, 11) and out["codes"].shape == (20,)
    prior = model.sample_prior(5)
    assert all(any(torch.equal(row, code) for code in model.quantizer.codebook) for row in prior)


def test_vq_perplexity():
    q = EMAQuantizer(codes=8, dim=2)
    assert q.perplexity(torch.zeros(10, dtype=torch.long)).item() == pytest.approx(1.0)
    assert q.perplexity(torch.arange(8).repeat(3)).item() == pytest.approx(8.0, rel=1e-5)
    assert q.perplexity(torch.tensor([0, 0, 1, 1])).item() == pytest.approx(2.0, rel=1e-5)


def test_vq_codebook_starts_from_the_first_batch():
    torch.manual_seed(0)
    q = EMAQuantizer(codes=4, dim=3).train()
    z = torch.randn(16, 3)
    q(z)
    assert bool(q.initialised)
    # EMA keeps live codes near batch vectors; every code started as one of the batch's rows.
    q2 = EMAQuantizer(codes=4, dim=3)
    q2.initialise(z)
    assert all(any(torch.equal(code, row) for row in z) for code in q2.codebook)


def test_vq_ema_update_and_dead_code_reset():
    q = EMAQuantizer(codes=3, dim=2, decay=0.9, reset_threshold=1.0).train()
    with torch.no_grad():
        q.codebook.copy_(torch.tensor([[0.0, 0.0], [10.0, 10.0], [-50.0, 50.0]]))
        q.ema_sum.copy_(q.codebook * torch.tensor([[5.0], [5.0], [1.05]]))
        q.ema_count.copy_(torch.tensor([5.0, 5.0, 1.05]))
        q.initialised.fill_(True)
    z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [9.0, 11.0], [11.0, 9.0], [10.0, 10.0]])
    out = q(z)
    assert out["codes"].tolist() == [0, 0, 1, 1, 1]
    # EMA of counts and sums: 0.9 * old + 0.1 * batch.
    torch.testing.assert_close(q.ema_count[:2], torch.tensor([0.9 * 5 + 0.1 * 2, 0.9 * 5 + 0.1 * 3]))
    expected0 = (0.9 * torch.tensor([0.0, 0.0]) * 5 + 0.1 * torch.tensor([2.0, 0.0])) / (0.9 * 5 + 0.1 * 2)
    torch.testing.assert_close(q.codebook[0], expected0)
    # Code 2 went unused: its count 0.9 * 1.05 fell below 1, so it was moved onto a batch vector.
    assert any(torch.equal(q.codebook[2], row) for row in z)
    assert q.ema_count[2].item() == 1.0
    torch.testing.assert_close(q.ema_sum[2], q.codebook[2])


def test_vq_eval_mode_leaves_the_codebook_alone():
    q = EMAQuantizer(codes=4, dim=2)
    q.initialise(torch.randn(8, 2))
    before = q.codebook.clone()
    q.eval()(torch.randn(8, 2) * 100)
    assert torch.equal(before, q.codebook)


def test_vq_straight_through_gradient():
    q = EMAQuantizer(codes=4, dim=3).eval()
    q.initialise(torch.randn(8, 3))
    z = torch.randn(6, 3, requires_grad=True)
    out = q(z)
    assert torch.allclose(out["z_q"], q.codebook[out["codes"]])
    (grad,) = torch.autograd.grad((out["z_q"] * torch.arange(3.0)).sum(), z)
    torch.testing.assert_close(grad, torch.arange(3.0).expand(6, 3))  # identity through the quantiser
    (grad,) = torch.autograd.grad(q(z)["commit"], z)
    torch.testing.assert_close(grad, 2 * (z - q.codebook[out["codes"]]).detach() / z.numel())


def test_losses():
    pred, target = torch.zeros(4, 2, 3), torch.ones(4, 2, 3)
    target[:, 1] *= 2
    assert reconstruction_loss(pred, target, torch.tensor([0.5, 0.5])).item() == pytest.approx(2.5)
    assert reconstruction_loss(pred, target, torch.tensor([1.0, 0.0])).item() == pytest.approx(1.0)
    mu, logvar = torch.zeros(5, 4), torch.zeros(5, 4)
    assert kl_divergence(mu, logvar).item() == 0.0
    mu[:, 0] = 2.0
    assert kl_per_dimension(mu, logvar).tolist() == [2.0, 0.0, 0.0, 0.0]
    assert kl_divergence(mu, logvar).item() == pytest.approx(0.5)


def test_kl_capacity_schedule():
    sched = KLSchedule(mode="capacity", gamma=10.0, capacity_max=8.0, capacity_steps=100)
    assert [sched.capacity(s) for s in (0, 25, 100, 1000)] == [0.0, 2.0, 8.0, 8.0]
    kl_mean = torch.tensor(0.5)  # 0.5 nats per dimension x 4 dimensions = 2 nats per frame
    assert sched.loss(kl_mean, latent=4, step=0).item() == pytest.approx(20.0)
    assert sched.loss(kl_mean, latent=4, step=25).item() == pytest.approx(0.0)
    assert sched.loss(kl_mean, latent=4, step=100).item() == pytest.approx(60.0)
    beta = KLSchedule(mode="beta", beta=0.3)
    assert beta.capacity(50) == 0.0 and beta.loss(kl_mean, 4, 50).item() == pytest.approx(0.15)


def test_decoder_exports_to_onnx_with_a_dynamic_batch():
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = MotionVAE(ModelSpec(frame_size=17, latent=5, hidden=24, n_cond=2, n_future=2)).eval()
    randomise(model, seed=3)
    decoder = next_frame_decoder(model)
    buffer = io.BytesIO()
    torch.onnx.export(decoder, (torch.randn(2, 5), torch.randn(2, 34)), buffer, dynamo=False,
                      input_names=["z", "condition"], output_names=["frame"],
                      dynamic_axes={"z": {0: "batch"}, "condition": {0: "batch"}, "frame": {0: "batch"}})
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    for batch in (1, 9):
        z, c = torch.randn(batch, 5), torch.randn(batch, 34)
        (got,) = session.run(None, {"z": z.numpy(), "condition": c.numpy()})
        np.testing.assert_allclose(got, decoder(z, c).detach().numpy(), atol=1e-5, rtol=1e-4)
