import onnx
import pytest
import torch

from dinokit.cli import main
from dinokit.models.layers import interpolate_pos_embed
from dinokit.tools.export import export_onnx, resize_pos_embed, verify_onnx
from tests.tools.helpers import trained_like


@pytest.mark.parametrize("rule", ["legacy", "antialias"])
def test_graph_friendly_pos_embed_resize_matches_the_model(rule):
    torch.manual_seed(0)
    table = torch.randn(1, 1 + 37 * 37, 16)
    for grid in [(37, 37), (16, 16), (8, 10), (37, 20), (40, 52), (1, 3)]:
        want = interpolate_pos_embed(table, grid, rule)
        torch.testing.assert_close(resize_pos_embed(table, grid, rule), want, rtol=0, atol=5e-5)
    assert torch.equal(resize_pos_embed(table, (37, 37), rule), table)  # native grid: the table as is


@pytest.mark.parametrize("preset", ["dinov2_test", "dinov3_test"])  # dinov2_test_reg4: the CLI test below
def test_onnx_parity_at_two_resolutions(preset, tmp_path):
    from dinokit.models import create_backbone

    torch.manual_seed(0)
    model = trained_like(create_backbone(preset).eval())
    p = model.patch_size
    report = export_onnx(model, tmp_path / "m.onnx", verify_sizes=[(8 * p, 8 * p), (6 * p, 11 * p)], quantize=True)
    errors = [e for size in report["max_abs_diff"].values() for e in size.values()]
    assert len(errors) == 6 and max(errors) <= 1e-4
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    assert [i.name for i in graph.input] == ["images"]
    assert [o.name for o in graph.output] == ["cls", "registers", "patches"]
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and dims[1] == 3 and isinstance(dims[2], str) and isinstance(dims[3], str)
    assert onnx.load(str(tmp_path / "m.onnx")).opset_import[0].version >= 17
    int8 = report["int8"]
    assert min(int8["cosine"].values()) >= 0.99
    ops = {n.op_type for n in onnx.load(int8["path"]).graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeLinear" in ops  # really quantised
    if preset == "dinov2_test":  # the 37×37 native grid takes the untouched table inside the same graph
        errs = verify_onnx(model, tmp_path / "m.onnx", [(37 * p, 37 * p)], batch=1)
        assert max(errs[f"{37 * p}x{37 * p}"].values()) <= 1e-4


def test_export_cli_from_a_released_file_with_registers(tmp_path, capsys):
    from dinokit.models import create_backbone, save_backbone

    model = trained_like(create_backbone("dinov2_test_reg4").eval())
    save_backbone(model, tmp_path / "w.pth", format="official")
    rc = main(["export", "onnx", "--backbone", str(tmp_path / "w.pth"), "--output", str(tmp_path / "m.onnx"), "--int8"])
    out = capsys.readouterr().out
    assert rc == 0 and "max abs diff" in out and (tmp_path / "m.int8.onnx").exists()
    p = model.patch_size
    errs = verify_onnx(model, tmp_path / "m.onnx", [(8 * p, 8 * p), (6 * p, 11 * p)])  # antialiased resize rule
    assert max(e for size in errs.values() for e in size.values()) <= 1e-4
    rc = main(["export", "onnx", "--backbone", str(tmp_path / "missing.pth"), "--output", str(tmp_path / "x.onnx")])
    assert rc == 2
