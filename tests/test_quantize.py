"""Stage 2 on a small real student: BN folding, Q/DQ types per target, ONNX faithful to torch."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from pipeline.config import QuantizeConfig
from stages.distill.networks import build_student
from stages.quantize.onnx_tidy import tidy_qdq
from stages.quantize.qat import calibrate, count_batchnorm, export_onnx, fold_batchnorm, qdq_summary, quantize
from targets.check import check_model, fuse_report

SPEC = {"family": "conv", "shape": [1, 8, 8], "num_classes": 10, "widths": [8, 16, 32]}


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    teacher = build_student({**SPEC, "widths": [16, 32, 64]}).eval()
    student = build_student(SPEC)
    # Give the BatchNorms non-trivial statistics so folding is really tested.
    student.train()
    with torch.no_grad():
        for _ in range(5):
            student(torch.randn(64, 1, 8, 8) * 2 + 0.5)
    return teacher, student.eval()


def test_fold_batchnorm_keeps_outputs(models):
    _, student = models
    folded = fold_batchnorm(student)
    assert count_batchnorm(student) == 3 and count_batchnorm(folded) == 0
    x = torch.randn(16, 1, 8, 8)
    torch.testing.assert_close(folded(x), student(x), atol=1e-5, rtol=1e-4)


def test_fold_wraps_bare_sequential():
    seq = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3)).eval()
    folded = fold_batchnorm(seq)
    assert not isinstance(folded, nn.Sequential) and count_batchnorm(folded) == 0
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(folded(x), seq(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("scheme, target", [("tensorrt", "jetson"), ("onnxruntime", "mobile")])
def test_int8_onnx_agrees_with_quantized_torch(models, tmp_path, scheme, target):
    teacher, student = models
    torch.manual_seed(1)
    calib = [torch.randn(32, 1, 8, 8) for _ in range(4)]
    cfg = QuantizeConfig(qat_steps=5, qat_batch=32)
    res = quantize(student, teacher, calib, lambda: torch.randn(32, 1, 8, 8), cfg, scheme, "noise", torch.randn(1, 1, 8, 8))
    path = export_onnx(res.model, tmp_path / "q.onnx", torch.randn(1, 1, 8, 8))
    before = ort.InferenceSession(str(path)).run(None, {"input": np.ones((2, 1, 8, 8), np.float32)})[0]
    tidy_qdq(path)
    after = ort.InferenceSession(str(path)).run(None, {"input": np.ones((2, 1, 8, 8), np.float32)})[0]
    np.testing.assert_array_equal(before, after)  # the weight folding is exact

    x = torch.randn(512, 1, 8, 8)
    onnx_pred = ort.InferenceSession(str(path)).run(None, {"input": x.numpy()})[0].argmax(1)
    with torch.no_grad():
        torch_pred = res.model(x).argmax(1).numpy()
    assert (onnx_pred == torch_pred).mean() >= 0.99

    summary = qdq_summary(path)
    assert summary["dequantize_linear"] >= 8
    types = summary["zero_point_types"]
    if scheme == "tensorrt":
        assert set(types) == {"int8"}
        assert check_model(path, "jetson") == []
    else:
        assert "uint8" in types  # activations after ReLU: onnxruntime's U8S8 kernels
        assert [f for f in check_model(path, "jetson") if f.rule == "qdq-uint8"]
        report = fuse_report(path)
        # Every convolution runs as QLinearConv; the classifier Gemm, whose float logits are not
        # re-quantized, may stay in float.
        assert report["integer_kernels"].get("QLinearConv") == 3, report
        assert not set(report["float_kernels"]) & {"Conv", "FusedConv"}, report


def test_qat_reduces_kd_loss(models):
    teacher, student = models
    torch.manual_seed(2)
    calib = [torch.randn(32, 1, 8, 8) for _ in range(2)]
    fixed = torch.randn(64, 1, 8, 8)
    res = quantize(student, teacher, calib, lambda: fixed, QuantizeConfig(qat_steps=40, qat_lr=1e-3), "onnxruntime",
                   "noise", torch.randn(1, 1, 8, 8))
    assert np.mean(res.qat_losses[-5:]) < np.mean(res.qat_losses[:5])


def test_qat_moves_the_quantizer_ranges_and_leaves_the_weights(models):
    teacher, student = models
    calib = [torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    fixed = torch.randn(64, 1, 8, 8)

    def run(steps):
        return quantize(student, teacher, calib, lambda: fixed, QuantizeConfig(qat_steps=steps, qat_lr=1e-2),
                        "tensorrt", "noise", torch.randn(1, 1, 8, 8)).model.state_dict()

    before, after = run(0), run(30)
    biases = [k for k in before if k.endswith("bias")]
    weights = [k for k in before if k.endswith("weight")]
    assert biases and weights
    # The biases are not quantized, so they show the float parameters: fine-tuning left them as they were.
    assert all(torch.equal(before[k], after[k]) for k in biases)
    # The weights are stored fake-quantized: moved ranges show in them.
    assert any(not torch.equal(before[k], after[k]) for k in weights)


@pytest.mark.parametrize("balanced", [True, False])
def test_calibration_samples_follow_the_runs_vae_settings(balanced):
    from pipeline.config import RunConfig
    from stages.quantize.stage import synthetic_sources
    from stages.distill.networks import VAE

    cfg = RunConfig()
    cfg.distill.vae_balanced = balanced
    shape = (1, 8, 8)
    vae = VAE(shape, 4, width=16).eval()
    teacher = build_student({"family": "conv", "shape": list(shape), "num_classes": 10, "widths": [4, 8]}).eval()
    sources = synthetic_sources(cfg, teacher, nn.Identity(), vae, shape, torch.device("cpu"))
    torch.manual_seed(0)
    got = sources["vae"](16)
    torch.manual_seed(0)
    with torch.no_grad():
        plain = vae.decoder(torch.randn(16, 4))  # a draw from the prior with no class-balancing step
    assert torch.allclose(got, plain) is (not balanced)


def test_fine_tuning_batches_mix_vae_and_generator_samples_and_fall_back_to_the_generator():
    from pipeline.config import RunConfig
    from stages.distill.networks import VAE
    from stages.quantize.stage import synthetic_sources

    cfg = RunConfig()
    shape = (1, 8, 8)
    teacher = build_student({"family": "conv", "shape": list(shape), "num_classes": 10, "widths": [4, 8]}).eval()

    def generator(z):  # every generator sample is the constant 7, which no VAE decoder here outputs
        return torch.full((len(z), *shape), 7.0)

    def from_generator(batch):
        return (batch == 7.0).flatten(1).all(1)

    sources = synthetic_sources(cfg, teacher, generator, VAE(shape, 4, width=16).eval(), shape, torch.device("cpu"))
    batch = sources["mixed"](17)
    assert batch.shape == (17, *shape)
    assert from_generator(batch).sum() == 9  # half VAE (rounded down), half generator
    sources = synthetic_sources(cfg, teacher, generator, None, shape, torch.device("cpu"))
    assert from_generator(sources["mixed"](16)).all()


def _input_scale(path) -> float:
    graph = onnx.load(str(path)).graph
    first = next(n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "input")
    return float(next(numpy_helper.to_array(i) for i in graph.initializer if i.name == first.input[1]))


def test_the_input_quantizer_holds_the_pixel_range_the_calibration_samples_miss(tmp_path):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(288, 10)).eval()
    calib = [torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(i)).clamp(-1, 1) for i in range(2)]
    # Real inputs reach 3.0 where every calibration sample stops at 1.0 (MNIST's ink against generator samples).
    real = (torch.rand(256, 1, 8, 8, generator=torch.Generator().manual_seed(9)) * 3.5 - 0.5).clamp(-0.5, 3.0)
    with torch.no_grad():
        expected = model(real).numpy()

    def quantized(input_range):
        # QAT at a high rate on the clipped samples alone: a widened input range must survive it.
        res = quantize(model, model, calib, lambda: calib[0], QuantizeConfig(qat_steps=20, qat_lr=1e-2), "tensorrt",
                       "noise", torch.randn(1, 1, 8, 8), input_range=input_range)
        path = export_onnx(res.model, tmp_path / f"{input_range is not None}.onnx", torch.randn(1, 1, 8, 8))
        out = ort.InferenceSession(str(path)).run(None, {"input": real.numpy()})[0]
        return np.abs(out - expected).mean(), _input_scale(path) * 127

    clipped_error, clipped_top = quantized(None)
    error, top = quantized((-0.5, 3.0))
    assert clipped_top < 1.5 and top >= 2.95
    assert error < 0.5 * clipped_error


@pytest.mark.parametrize("scheme", ["tensorrt", "onnxruntime"])
def test_the_input_grid_is_the_contracts_with_the_black_pixel_on_a_level(tmp_path, scheme):
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(1, 8, 5, padding=2), nn.ReLU(), nn.Flatten(), nn.Linear(512, 10)).eval()
    # Synthetic samples overshoot the contract's range on both sides (a generator's, unbounded)
    calib = [torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(i)) * 2.5 for i in range(2)]
    low, high = -0.1307 / 0.3081, (1 - 0.1307) / 0.3081  # MNIST's normalisation
    # Real images: mostly black background, some ink
    ink = torch.rand(256, 1, 8, 8, generator=torch.Generator().manual_seed(9)) < 0.2
    real = torch.where(ink, torch.full((256, 1, 8, 8), high), torch.full((256, 1, 8, 8), low))
    with torch.no_grad():
        expected = model(real).numpy()

    def quantized(input_range):
        res = quantize(model, model, calib, lambda: calib[0], QuantizeConfig(qat_steps=0), scheme, "noise",
                       torch.randn(1, 1, 8, 8), input_range=input_range)
        path = export_onnx(res.model, tmp_path / f"{input_range is not None}.onnx", torch.randn(1, 1, 8, 8))
        out = ort.InferenceSession(str(path)).run(None, {"input": real.numpy()})[0]
        return np.abs(out - expected).mean(), _input_scale(path)

    calibrated_error, calibrated_step = quantized(None)
    error, step = quantized((low, high))
    assert calibrated_step * 127 > 5  # what the samples alone would give
    assert high <= step * 127 < 1.01 * high  # nothing in the contract clipped, hardly a level wasted
    assert abs(low / step - round(low / step)) < 1e-4  # the black pixel read exactly
    assert error < 0.8 * calibrated_error


def test_calibration_leaves_the_float_biases_as_they_are(models):
    _, student = models
    folded = fold_batchnorm(student)
    calib = [torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(i)) * 2 + 0.5 for i in range(2)]
    biases = {k: v for k, v in folded.named_parameters() if k.endswith("bias")}

    def shifted(bias_correction):
        qmodel = calibrate(folded, calib, QuantizeConfig(), "onnxruntime", bias_correction=bias_correction)
        after = {k: v for k, v in qmodel.named_parameters() if k.endswith("bias")}
        assert after.keys() == biases.keys()
        return [k for k in biases if not torch.equal(after[k], biases[k])]

    assert shifted(False) == []
    assert shifted(True)  # NNCF's own default moves them: what stage 2 leaves out


class PerSampleNorms(nn.Module):
    """Convolutions normalised by GroupNorm, one of them depthwise, and a head normalised by LayerNorm, as many
    current models are."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.SiLU(),
                                      nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.GroupNorm(2, 8), nn.SiLU(),
                                      nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.GroupNorm(4, 16), nn.ReLU(),
                                      nn.Flatten())
        self.head = nn.Sequential(nn.Linear(256, 32), nn.LayerNorm(32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        return self.head(self.features(x))


@pytest.mark.parametrize("scheme, target", [("tensorrt", "jetson"), ("onnxruntime", "mobile")])
def test_a_model_with_groupnorm_layernorm_and_a_depthwise_conv_runs_in_int8_with_its_norms_in_float(tmp_path, scheme, target):
    torch.manual_seed(5)
    model = PerSampleNorms().eval()
    with torch.no_grad():  # scale vectors away from their all-ones start, so a lost one would show
        for m in model.modules():
            if isinstance(m, (nn.GroupNorm, nn.LayerNorm)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    calib = [torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    res = quantize(model, model, calib, lambda: calib[0], QuantizeConfig(qat_steps=5, qat_batch=32), scheme, "noise",
                   torch.randn(1, 1, 8, 8))
    path = export_onnx(res.model, tmp_path / "q.onnx", torch.randn(1, 1, 8, 8))
    tidy_qdq(path)
    graph = onnx.load(str(path)).graph
    # Every convolution and linear layer reads INT8 weights; the norms' scale vectors stay float
    weighted = [n for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    produced_by = {o: n for n in graph.node for o in n.output}
    assert len(weighted) == 5
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    consts.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node if n.op_type == "Constant"})
    activation_scales = [consts[n.input[1]] for n in graph.node if n.op_type == "QuantizeLinear"]
    assert activation_scales and all(s.size == 1 for s in activation_scales)  # per tensor, the depthwise input too
    assert all(produced_by.get(n.input[1]) is not None and produced_by[n.input[1]].op_type == "DequantizeLinear"
               for n in weighted)
    x = torch.randn(512, 1, 8, 8, generator=torch.Generator().manual_seed(7))
    int8 = ort.InferenceSession(str(path)).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        fp32 = model(x).numpy()
    assert (int8.argmax(1) == fp32.argmax(1)).mean() >= 0.9
    findings = check_model(path, target)
    if scheme == "tensorrt":
        assert findings == []
    else:  # every convolution fuses into an integer kernel; only the normalisations themselves run in float
        assert {(f.rule, f.op_type) for f in findings} == {("runs-in-float", "InstanceNormalization"),
                                                           ("runs-in-float", "LayerNormalization")}, findings


class ChannelsFirstLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map, as ConvNeXt-style models subclass it."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def test_a_norm_subclass_with_its_own_axes_is_left_whole_and_kept_in_float():
    torch.manual_seed(6)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), ChannelsFirstLayerNorm(8), nn.ReLU(), nn.Flatten(),
                          nn.Linear(512, 10)).eval()
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 1.5)
    folded = fold_batchnorm(model)
    assert any(isinstance(m, ChannelsFirstLayerNorm) and m.weight is not None for m in folded.modules())
    x = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(folded(x), model(x))
    qmodel = calibrate(folded, [x[:32], x[32:]], QuantizeConfig(), "onnxruntime")
    with torch.no_grad():
        assert (qmodel(x).argmax(1) == model(x).argmax(1)).float().mean() >= 0.9


class TinyTransformer(nn.Module):
    """Patches through a transformer encoder layer, whose forward reads its norms' eps itself."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(1, 16, 4, stride=4)
        self.encoder = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.encoder(self.patch(x).flatten(2).transpose(1, 2)).mean(1))


def test_a_transformer_encoder_layer_runs_in_int8(tmp_path):
    torch.manual_seed(9)
    model = TinyTransformer().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
    folded = fold_batchnorm(model)
    x = torch.randn(256, 1, 8, 8, generator=torch.Generator().manual_seed(10))
    assert folded.encoder.norm1.eps == model.encoder.norm1.eps  # the split norms answer for the originals
    torch.testing.assert_close(folded(x), model(x))
    res = quantize(model, model, [x[:128], x[128:]], lambda: x[:64], QuantizeConfig(qat_steps=3, qat_batch=64),
                   "onnxruntime", "noise", x[:1])
    path = export_onnx(res.model, tmp_path / "q.onnx", x[:1])
    int8 = ort.InferenceSession(str(path)).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        assert (int8.argmax(1) == model(x).numpy().argmax(1)).mean() >= 0.9
