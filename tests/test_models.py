"""Encoders, context transformers and heads: sizes, shapes, unit norms and what depends on what."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dataloading.features import FeatureSettings
from trainer.config import ModelConfig
from trainer.losses import pretext_loss
from trainer.models import AudioEncoder, AVSAModel, AVSAOutput, VideoEncoder
from trainer.models.video import r2plus1d_mid_channels

CHANNEL_COUNT = {"logmel": 4, "logmel_iv": 7, "cardioids": 6, "stereo": 3, "mono": 1}  # the paper's


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def inputs(
    clips: int = 2, views: int = 3, channels: int = 4, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Small video [B,K,3,T=4,32,32], audio [B,K,C,F=32,T=24] and directions [B,K,2] (radians)."""
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(clips, views, 3, 4, 32, 32, generator=g)
    audio = torch.randn(clips, views, channels, 32, 24, generator=g)
    directions = (torch.rand(clips, views, 2, generator=g) - 0.5) * torch.tensor([2 * torch.pi, torch.pi / 3])
    return video, audio, directions


def tiny(direction_encoding: bool = False, channels: int = 4) -> AVSAModel:
    torch.manual_seed(0)
    return AVSAModel(ModelConfig(preset="tiny", direction_encoding=direction_encoding), channels).eval()


def all_embeddings(out: AVSAOutput) -> dict[str, torch.Tensor]:
    return {
        f"{level}.{name}": getattr(getattr(out, level), name)
        for level in ("viewpoints", "clips")
        for name in ("video", "audio", "video_pred", "audio_pred")
    }


def test_video_trunk_is_r2plus1d_18() -> None:
    # torchvision's R(2+1)D mid widths for the stage shapes of R(2+1)D-18.
    pairs = [(64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 512), (512, 512)]
    assert [r2plus1d_mid_channels(i, o) for i, o in pairs] == [144, 230, 288, 460, 576, 921, 1152]
    # torchvision r2plus1d_18 has 31,505,325 parameters: minus its 400-way classifier (512·400 + 400)
    # and its factorised stem (3·45·1·7·7 + 2·45 + 45·64·3 + 2·64), plus the paper's 3D stem
    # (3·64·3·7·7 + 2·64), leaves the trunk used here.
    expected = (
        31_505_325
        - (512 * 400 + 400)
        - (3 * 45 * 49 + 2 * 45 + 45 * 64 * 3 + 2 * 64)
        + (3 * 64 * 3 * 49 + 2 * 64)
    )
    assert n_params(VideoEncoder()) == expected == 31_313_004


@pytest.mark.parametrize("feature", sorted(CHANNEL_COUNT))
def test_audio_trunk_has_nine_convs_and_takes_the_feature_channels(feature: str) -> None:
    c = CHANNEL_COUNT[feature]
    assert FeatureSettings(feature=feature).channels == c  # the extractor yields what the encoder takes
    encoder = AudioEncoder(c)
    convs = [m for m in encoder.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)]
    assert len(convs) == 9 and convs[0].in_channels == c and convs[0].kernel_size == (7, 7)

    def block(c_in: int, c_out: int) -> int:  # two 3×3 convs + 2 BNs, plus a 1×1 + BN when the shape changes
        shortcut = c_in * c_out + 2 * c_out if c_in != c_out else 0
        return 9 * c_in * c_out + 9 * c_out * c_out + 4 * c_out + shortcut

    stem = c * 64 * 49 + 2 * 64
    assert n_params(encoder) == stem + block(64, 64) + block(64, 128) + block(128, 256) + block(256, 512)

    small = AudioEncoder(c, widths=(8, 16, 32, 64)).eval()
    assert small(torch.randn(2, c, 32, 24)).shape == (2, 64)


def test_paper_preset_on_one_clip() -> None:
    torch.manual_seed(0)
    model = AVSAModel(ModelConfig(preset="paper"), audio_channels=7).eval()
    video, audio, directions = inputs(clips=1, views=2, channels=7)
    with torch.no_grad():
        out = model(video, audio, directions)
    for name, e in all_embeddings(out).items():
        assert e.shape == ((1, 2, 128) if name.startswith("viewpoints") else (1, 128)), name
        torch.testing.assert_close(e.norm(dim=-1), torch.ones(e.shape[:-1]), msg=name)


@pytest.mark.parametrize("direction_encoding", [False, True])
def test_tiny_preset_shapes_and_unit_norms(direction_encoding: bool) -> None:
    model = tiny(direction_encoding, channels=3)
    assert n_params(model) < 1_000_000  # the paper preset has ~49M
    with torch.no_grad():
        out = model(*inputs(clips=2, views=3, channels=3))
    for name, e in all_embeddings(out).items():
        assert e.shape == ((2, 3, 128) if name.startswith("viewpoints") else (2, 128)), name
        torch.testing.assert_close(e.norm(dim=-1), torch.ones(e.shape[:-1]), msg=name)


def test_viewpoint_order_does_not_matter() -> None:
    # Viewpoints are a set: permuting them (with their directions) permutes the per-viewpoint
    # embeddings and leaves the clip embeddings alone, with or without the direction encoding.
    model = tiny(direction_encoding=True)
    video, audio, directions = inputs()
    perm = torch.tensor([2, 0, 1])
    with torch.no_grad():
        out = all_embeddings(model(video, audio, directions))
        permuted = all_embeddings(model(video[:, perm], audio[:, perm], directions[:, perm]))
    for name, e in out.items():
        expected = e[:, perm] if name.startswith("viewpoints") else e
        torch.testing.assert_close(permuted[name], expected, rtol=1e-4, atol=1e-5, msg=name)


def test_context_reaches_across_viewpoints_only_in_predictions() -> None:
    model = tiny()
    video, audio, directions = inputs()
    other_audio = audio.clone()
    other_audio[:, 1] = torch.randn_like(audio[:, 1])  # change only viewpoint 1's sound
    with torch.no_grad():
        before = model(video, audio, directions).viewpoints
        after = model(video, other_audio, directions).viewpoints
    torch.testing.assert_close(after.audio[:, 0], before.audio[:, 0])  # a target sees its own viewpoint
    torch.testing.assert_close(after.video, before.video)
    torch.testing.assert_close(after.audio_pred, before.audio_pred)  # predicted from video only
    # The video predicted at viewpoint 0 comes from all viewpoints' audio.
    assert not torch.allclose(after.video_pred[:, 0], before.video_pred[:, 0], atol=1e-4)


@pytest.mark.parametrize("direction_encoding", [False, True])
def test_directions_reach_only_the_predictions_and_only_when_encoded(direction_encoding: bool) -> None:
    model = tiny(direction_encoding)
    video, audio, directions = inputs()
    with torch.no_grad():
        a = model(video, audio, directions).viewpoints
        b = model(video, audio, directions + 0.5).viewpoints
    torch.testing.assert_close(a.video, b.video)
    torch.testing.assert_close(a.audio, b.audio)
    assert torch.allclose(a.video_pred, b.video_pred) != direction_encoding
    assert torch.allclose(a.audio_pred, b.audio_pred) != direction_encoding


def test_channels_last_inputs_and_weights_give_the_same_features() -> None:
    torch.manual_seed(0)
    video_encoder, audio_encoder = (
        VideoEncoder((8, 16, 32, 64), (1, 1, 1, 1)).eval(),
        AudioEncoder(4, (8, 16, 32, 64)).eval(),
    )
    video, audio, _ = inputs(clips=1, views=2)
    video, audio = video.flatten(0, 1), audio.flatten(0, 1)
    with torch.no_grad():
        expected = video_encoder(video), audio_encoder(audio)
        video_encoder.to(memory_format=torch.channels_last_3d)
        audio_encoder.to(memory_format=torch.channels_last)
        got = (
            video_encoder(video.to(memory_format=torch.channels_last_3d)),
            audio_encoder(audio.to(memory_format=torch.channels_last)),
        )
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("stage,form", [("avc", "trunks"), ("avc", "context"), ("avsa", "trunks")])
@pytest.mark.parametrize("head", ["linear", "bn_linear", "mlp"])
def test_every_parameter_takes_part_in_either_stage(stage: str, form: str, head: str) -> None:
    # Data-parallel engines need every parameter in every step's graph. AVC on the trunks trains the
    # trunks and target heads only: the context side gets zero gradients, not none.
    torch.manual_seed(0)
    model = AVSAModel(ModelConfig(preset="tiny", direction_encoding=True, head=head), 4).train()  # type: ignore[arg-type]
    loss, _ = pretext_loss(model(*inputs()), stage, 0.07, form)  # type: ignore[arg-type]
    loss.backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None]
    resting = ("video_to_audio", "audio_to_video", "video_pred_head", "audio_pred_head")
    learning = [
        n
        for n, p in model.named_parameters()
        if not (stage == "avc" and form == "trunks" and n.startswith(resting))
    ]
    grads = dict(model.named_parameters())
    assert all(grads[n].grad.abs().sum() > 0 for n in learning)  # type: ignore[union-attr]
    if stage == "avc" and form == "trunks":
        assert all(not p.grad.abs().sum() for n, p in model.named_parameters() if n.startswith(resting))  # type: ignore[union-attr]


@pytest.mark.parametrize("head,most", [("bn_linear", 0.1), ("mlp", 0.5)])
def test_centring_heads_spread_the_embeddings_at_init(head: str, most: float) -> None:
    # ReLU + max pool give every trunk feature a shared positive part; a plain Linear keeps it (the
    # embeddings of unrelated inputs point almost the same way), a centring head removes it.
    def mean_cosine(kind: str) -> float:
        torch.manual_seed(0)
        model = AVSAModel(ModelConfig(preset="tiny", head=kind), 4).train()  # type: ignore[arg-type]
        e = model(*inputs(clips=8, views=4)).viewpoints.audio.flatten(0, 1)
        cos = e @ e.T
        return ((cos.sum() - cos.diagonal().sum()) / (len(e) * (len(e) - 1))).item()

    # The MLP's ReLU before its last Linear brings back part of the shared component.
    assert mean_cosine("linear") > 0.8
    assert abs(mean_cosine(head)) < most
