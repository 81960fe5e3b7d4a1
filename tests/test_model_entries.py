"""Per-model settings: names, `--compare NAME=SPEC=WEIGHTS`, `NAME:KEY=VALUE` arguments,
`[[models]]` tables, and fastMRI's own Unet and VarNet side by side with their own arguments."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from mri_audit.cli import cli
from mri_audit.errors import UsageError
from mri_audit.models.entries import ModelEntry, entries_from_config, model_entries, parse_compare

NET = """
import torch
class Net(torch.nn.Module):
    def __init__(self, k=3):
        super().__init__()
        self.c = torch.nn.Conv2d(1, 1, k, padding=k // 2)
    def forward(self, x):
        return x + self.c(x)
"""

TINY = ["--max-volumes", "1", "--max-slices", "1", "--candidates", "2", "--batch-size", "4"]
TINY += ["--no-progress"]
UNET_ARGS = ["in_chans=1", "out_chans=1", "chans=4", "num_pool_layers=2"]
VARNET_ARGS = ["num_cascades=1", "chans=4", "pools=2", "sens_chans=2", "sens_pools=2"]


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    root = tmp_path_factory.mktemp("entries")
    (root / "net.py").write_text(NET)
    torch.manual_seed(1)
    ns: dict = {}
    exec(NET, ns)  # noqa: S102 - test fixture
    torch.save(ns["Net"]().state_dict(), root / "w.pt")
    return root


@pytest.mark.parametrize(
    "value, entry",
    [
        ("a/net.py:Net", ModelEntry("a/net.py:Net")),
        ("a/net.py:Net=w.pt", ModelEntry("a/net.py:Net", None, "w.pt")),
        ("robust=a/net.py:Net", ModelEntry("a/net.py:Net", "robust")),
        ("robust=a/net.py:Net=w.pt", ModelEntry("a/net.py:Net", "robust", "w.pt")),
        ("fastmri.models:Unet=w.pt", ModelEntry("fastmri.models:Unet", None, "w.pt")),
        ("model.pt", ModelEntry("model.pt")),
        # Lightning names checkpoints with '=': everything after the spec is the weights path.
        ("a/net.py:Net=ckpt/epoch=9.ckpt", ModelEntry("a/net.py:Net", None, "ckpt/epoch=9.ckpt")),
        (
            "r=a/net.py:Net=epoch=9-step=1.ckpt",
            ModelEntry("a/net.py:Net", "r", "epoch=9-step=1.ckpt"),
        ),
    ],
)
def test_compare_forms(value, entry):
    assert parse_compare(value) == entry


@pytest.mark.parametrize("value", ["=a.py:N", "a.py:N=", "robust=", "robust=a.py:N="])
def test_bad_compare_forms(value):
    with pytest.raises(UsageError, match="--compare"):
        parse_compare(value)


def test_model_args_reach_the_model_they_name():
    entries = model_entries(
        {
            "model_spec": "a.py:A",
            "model_args": ("k=5", "b:k=7", "b:path=x:y"),
            "compare": ("b=b.py:B",),
        }
    )
    assert entries[0].args == {"k": 5} and entries[1].args == {"k": 7, "path": "x:y"}
    # The same spec twice (a model and its other weights): both get the arguments and input.
    same = model_entries(
        {"model_spec": "a.py:A", "model_args": ("k=5",), "input_domain": "kspace",
         "compare": ("a.py:A=w.pt",)}
    )  # fmt: skip
    assert same[1].args == {"k": 5} and same[1].input == "kspace"
    with pytest.raises(UsageError, match="no model named 'c'"):
        model_entries({"model_spec": "a.py:A", "model_args": ("c:k=1",), "compare": ()})
    with pytest.raises(UsageError, match="'a.py:A' names more than one model"):
        model_entries({"model_spec": "a.py:A", "model_args": ("a.py:A:k=1",),
                       "compare": ("a.py:A=w.pt",)})  # fmt: skip
    with pytest.raises(UsageError, match="two models are named 'x'"):
        model_entries({"model_spec": "a.py:A", "model_name": "x", "compare": ("x=b.py:B",)})


@pytest.mark.parametrize(
    "tables, phrase",
    [
        ([{"spec": "a.py:A", "colour": 1}], "unknown key 'colour'"),
        ([{"name": "a"}], 'needs spec = "path/to/file.py:Name"'),
        ([{"spec": "a.py:A", "args": 3}], "args must be a table"),
        ([{"spec": "a.py:A", "input": "fourier"}], "input must be 'image' or 'kspace'"),
        ([{"spec": "a.py:A", "name": "two words"}], "model name 'two words' must start"),
        ({"spec": "a.py:A"}, "'models' must be [[models]] tables"),
    ],
)
def test_bad_models_tables(tables, phrase):
    with pytest.raises(UsageError) as err:
        entries_from_config(tables, "audit.toml")
    assert phrase in str(err.value)


def test_named_models_in_results_and_report(net, tmp_path):
    out = tmp_path / "audit"
    args = ["run", "--model", f"{net}/net.py:Net", "--model-name", "plain",
            "--compare", f"trained={net}/net.py:Net={net}/w.pt", "--attacks", "fnaf-rs",
            "--out", str(out), *TINY]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert [m["name"] for m in results["models"]] == ["plain", "trained"]
    assert results["models"][1]["weights_sha256"] and not results["models"][0]["weights_sha256"]
    html = (out / "report.html").read_text()
    assert "plain" in html and "trained" in html


def test_fastmri_unet_beside_varnet_with_their_own_arguments(tmp_path):
    pytest.importorskip("fastmri")
    out = tmp_path / "audit"
    args = ["run", "--model", "fastmri.models:Unet", "--model-name", "unet"]
    args += [a for kv in UNET_ARGS for a in ("--model-arg", kv)]
    args += ["--compare", "varnet=fastmri.models:VarNet"]
    args += [a for kv in VARNET_ARGS for a in ("--model-arg", f"varnet:{kv}")]
    args += ["--attacks", "fnaf-rs,fnaf-pgd", "--attack-param", "fnaf-pgd.steps=2"]
    args += ["--out", str(out), *TINY]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    models = json.loads((out / "results.json").read_text())["models"]
    assert [(m["name"], m["domain"]) for m in models] == [("unet", "image"), ("varnet", "kspace")]
    assert models[1]["model_args"]["num_cascades"] == "1"
    assert models[0]["packages"].get("fastmri") == "0.3.0"


def test_models_tables_in_a_config_file(tmp_path):
    pytest.importorskip("fastmri")
    config = tmp_path / "audit.toml"
    config.write_text(
        'attacks = "fnaf-rs"\n'
        '[[models]]\nname = "unet"\nspec = "fastmri.models:Unet"\n'
        "args = {in_chans = 1, out_chans = 1, chans = 4, num_pool_layers = 2}\n"
        '[[models]]\nname = "varnet"\nspec = "fastmri.models:VarNet"\ninput = "kspace"\n'
        "args = {num_cascades = 1, chans = 4, pools = 2, sens_chans = 2, sens_pools = 2}\n"
    )
    out = tmp_path / "audit"
    result = CliRunner().invoke(cli, ["run", "--config", str(config), "--out", str(out), *TINY])
    assert result.exit_code == 0, result.output
    models = json.loads((out / "results.json").read_text())["models"]
    assert [m["name"] for m in models] == ["unet", "varnet"]
    both = CliRunner().invoke(
        cli, ["run", "--config", str(config), "--model", "x.py:N", "--out", str(tmp_path / "b")]
    )
    assert both.exit_code == 2 and "not both" in both.output
    flags = CliRunner().invoke(
        cli, ["run", "--config", str(config), "--weights", "w.pt", "--out", str(tmp_path / "b")]
    )
    assert flags.exit_code == 2 and "--weights set the --model's settings" in flags.output


def test_compare_model_errors_name_the_model(net, tmp_path):
    pytest.importorskip("fastmri")
    result = CliRunner().invoke(
        cli, ["run", "--model", f"{net}/net.py:Net", "--compare", "fastmri.models:Unet",
              "--out", str(tmp_path / "a"), *TINY]
    )  # fmt: skip
    assert result.exit_code == 5
    line = result.output.strip()
    assert line.startswith("Error: model 2 'fastmri.models:Unet': constructing")
    assert "--model-arg NAME:KEY=VALUE" in line and len(line.splitlines()) == 1


def test_compare_table_in_config_points_to_models(net, tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[[compare]]\nspec = "x.py:N"\n')
    result = CliRunner().invoke(cli, ["run", "--config", str(config), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "[[models]] tables" in result.output


@pytest.mark.parametrize("missing", ["model", "weights"])
def test_missing_model_files_are_refused_before_the_data_is_read(net, tmp_path, missing):
    spec = f"{tmp_path}/nope.py:Net" if missing == "model" else f"{net}/net.py:Net"
    args = [
        "run",
        "--model",
        spec,
        "--data",
        str(tmp_path / "no-data"),
        "--out",
        str(tmp_path / "o"),
    ]
    if missing == "weights":
        args += ["--weights", str(tmp_path / "nope.pt")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 5, result.output  # not the data error (4): models come first
    assert f"{missing} file not found" in result.output
    assert not (tmp_path / "o").exists()


def test_reduced_precision_on_a_cpu_without_native_support_warns(monkeypatch, caplog):
    from mri_audit.audit.run_setup import check_precision as _check_precision

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    with caplog.at_level("WARNING", logger="mri_audit"):
        _check_precision("bf16", torch.device("cpu"))
    assert "this CPU has no native bf16 support" in caplog.text
    caplog.clear()
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    with caplog.at_level("WARNING", logger="mri_audit"):
        _check_precision("bf16", torch.device("cpu"))
        _check_precision("fp32", torch.device("cpu"))
    assert caplog.text == ""
    with caplog.at_level("WARNING", logger="mri_audit"):
        _check_precision("fp16", torch.device("cpu"))  # slower than fp32 even with AVX512-FP16
    assert "this CPU runs fp16 slowly" in caplog.text


def test_missing_data_is_refused_before_the_model_is_imported(tmp_path):
    marker = tmp_path / "imported"
    (tmp_path / "net.py").write_text(f"open({str(marker)!r}, 'w').close()\n" + NET)
    result = CliRunner().invoke(
        cli,
        ["run", "--model", f"{tmp_path}/net.py:Net", "--data", str(tmp_path / "no-data"),
         "--out", str(tmp_path / "o")],
    )  # fmt: skip
    assert result.exit_code == 4 and "no such file or folder" in result.output
    assert not marker.exists() and not (tmp_path / "o").exists()


@pytest.mark.slow
def test_run_map_adds_the_recovery_map_to_results_and_report(tmp_path):
    out = tmp_path / "audit"
    result = CliRunner().invoke(
        cli,
        ["run", "--model", "examples/zero_filled.py:ZeroFilled", "--map", "--attacks", "fnaf-rs",
         "--out", str(out), *TINY],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    section = json.loads((out / "results.json").read_text())["map"]
    assert section["features_scored"] > 0 and section["cells"]
    assert 'id="map"' in (out / "report.html").read_text()
