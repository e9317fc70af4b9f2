import pytest
import torch

from dinokit.errors import UserError
from dinokit.models import create_backbone
from dinokit.tools.lora import (
    add_lora,
    load_adapter,
    merge_lora,
    parameter_counts,
    remove_lora,
    save_adapter,
    unmerge_lora,
)
from tests.tools.helpers import trained_like


def fresh(preset="dinov3_test"):
    torch.manual_seed(0)
    return trained_like(create_backbone(preset).eval())


def randomise_b(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)


@pytest.mark.parametrize("preset", ["dinov3_test", "dinov2_test"])
def test_zero_initialised_b_leaves_outputs_unchanged(preset):
    model = fresh(preset)
    x = torch.randn(2, 3, 4 * model.patch_size, 4 * model.patch_size)
    before = model.forward_features(x)
    add_lora(model, rank=4, targets="qkv")
    after = model.forward_features(x)
    assert torch.equal(after.patches, before.patches) and torch.equal(after.cls, before.cls)
    randomise_b(model)
    assert not torch.allclose(model.forward_features(x).patches, before.patches, atol=1e-4)


def test_trainable_counts_and_gradients():
    model = add_lora(fresh(), rank=4, targets="qv")
    D = model.embed_dim
    trainable, total = parameter_counts(model)
    assert trainable == len(model.blocks) * 2 * 4 * (D + D)  # q and v: A [r, D] + B [D, r]
    assert total > trainable
    randomise_b(model)
    model.forward_features(torch.randn(1, 3, 32, 32)).patches.sum().backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == ("lora_" in name), name


def test_merge_unmerge_and_qv_leave_k_untouched():
    model = add_lora(fresh(), rank=4, targets="qv")
    randomise_b(model)
    x = torch.randn(2, 3, 48, 48)
    with_lora = model.forward_features(x).patches
    w0 = model.blocks[0].attn.qkv.base.weight.clone()
    merge_lora(model)
    torch.testing.assert_close(model.forward_features(x).patches, with_lora, rtol=0, atol=1e-5)
    w1 = model.blocks[0].attn.qkv.base.weight
    D = model.embed_dim
    assert torch.equal(w1[D : 2 * D], w0[D : 2 * D]) and not torch.equal(w1[:D], w0[:D])  # k slice untouched
    unmerge_lora(model)
    torch.testing.assert_close(model.blocks[0].attn.qkv.base.weight, w0, rtol=0, atol=1e-6)
    plain = remove_lora(model)
    assert type(plain.blocks[0].attn.qkv).__name__ == "MaskedKeyBiasLinear"  # the key-bias mask is kept
    torch.testing.assert_close(plain.forward_features(x).patches, with_lora, rtol=0, atol=1e-5)


def test_adapter_save_load_roundtrip(tmp_path):
    model = add_lora(fresh(), rank=2, targets="qkv", blocks=[1])
    randomise_b(model)
    x = torch.randn(1, 3, 32, 32)
    want = model.forward_features(x).patches
    save_adapter(model, tmp_path / "a.safetensors")
    other = load_adapter(fresh(), tmp_path / "a.safetensors")
    torch.testing.assert_close(other.forward_features(x).patches, want)
    assert parameter_counts(other)[0] == 3 * 2 * 2 * model.embed_dim
    with pytest.raises(UserError, match="adapter"):
        load_adapter(fresh(), tmp_path / "missing.safetensors")
    (tmp_path / "notes.safetensors").write_text("not tensors")  # safetensors raises its own error type for it
    with pytest.raises(UserError, match="not a dinokit LoRA adapter"):
        load_adapter(fresh(), tmp_path / "notes.safetensors")
