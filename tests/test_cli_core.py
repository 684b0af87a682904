"""The compiler's CLI: check, show (text, dot, svg, png) and the import cost of vitgraph."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import vitgraph
from vitgraph.cli import main

from conftest import SPECS


def test_check_every_spec(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", *map(str, SPECS)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(SPECS) and all(line.startswith("ok  ") for line in out)


def test_check_with_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "specs/vit.vg", "--set", "image=64", "patch=8", "classes=200"]) == 0
    assert "0.190G MACs" in capsys.readouterr().out


def test_show_text_is_the_printed_ir(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", "specs/sl_vit.vg"]) == 0
    assert capsys.readouterr().out == vitgraph.format_graph(vitgraph.compile("specs/sl_vit.vg"))


def test_show_dot(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", "specs/binaryvit_star.vg", "--format", "dot", "--set", "image=224"]) == 0
    dot = capsys.readouterr().out
    g = vitgraph.compile("specs/binaryvit_star.vg")
    assert dot.startswith('digraph "binaryvit_star"')
    assert dot.count(" -> ") == sum(len(n.inputs) for n in g)
    assert "#f4cccc" in dot and "#cfe2f3" in dot  # binary and full-precision nodes coloured apart


@pytest.mark.parametrize("fmt,magic", [("png", b"\x89PNG"), ("svg", b"<?xml")])
def test_show_images(fmt: str, magic: bytes, tmp_path: Path) -> None:
    out = tmp_path / f"g.{fmt}"
    assert main(["show", "specs/vit.vg", "--format", fmt, "-o", str(out)]) == 0
    assert out.read_bytes().startswith(magic)


def test_show_bad_output_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", "specs/vit.vg", "--format", "png", "-o", str(tmp_path / "no" / "g.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write") and "Traceback" not in err


def test_unknown_flag_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["check", "specs/vit.vg", "--frobnicate"])
    assert e.value.code == 2
    assert "error: unrecognized arguments: --frobnicate" in capsys.readouterr().err


def test_import_is_cheap() -> None:
    code = "import sys, vitgraph; vitgraph.compile('specs/vit.vg'); print(sorted(m for m in ('torch', 'onnx', 'onnxruntime') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_garbage_checkpoint_is_one_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_text("root:x:0:0:root:/root:/bin/bash\n")  # a text file, not a torch.save archive
    status = main(["build", "specs/vit.vg", "--weights", str(bad), "-o", str(tmp_path / "m.pt")])
    err = capsys.readouterr().err
    assert status == 1 and err.startswith(f"error: cannot read checkpoint {bad}") and "Traceback" not in err
    assert not (tmp_path / "m.pt").exists()


def test_missing_dataset_offline_says_where_and_how(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    import vitgraph.data.sources as sources

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(sources.urllib.request, "urlopen", offline)
    assert main(["build", "specs/vit.vg", "-o", str(tmp_path / "vit.pt")]) == 0
    capsys.readouterr()
    status = main(["eval", "--weights", str(tmp_path / "vit.pt"), "--dataset", "cifar10", "--data-root", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 1 and "Traceback" not in err
    assert f"looked for {tmp_path}/cifar-10-batches-py" in err and "hint: download cifar-10-python.tar.gz" in err


@pytest.mark.parametrize("flags,domains", [([], {"", "com.microsoft"}), (["--standard-ops"], {""})])
def test_build_onnx_fused_or_standard_ops(flags: list[str], domains: set[str], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    import onnx

    out = tmp_path / "m.onnx"
    assert main(["build", "specs/vit.vg", "--backend", "onnx", "-o", str(out), "--set", "patch=8", *flags]) == 0
    assert {n.domain for n in onnx.load(out).graph.node} == domains
    assert "wrote" in capsys.readouterr().out


def test_drawing_groups_stages_and_collapses_repeated_blocks() -> None:
    from vitgraph.draw import Run, columns

    def runs(graph, expand=False):
        return {c.title: [(i.first, i.count) for i in c.items if isinstance(i, Run)] for c in columns(graph, expand)}

    pyramid = vitgraph.compile("specs/binaryvit.vg")
    assert [c.title for c in columns(pyramid)] == ["stem", "stages.0", "stages.1", "stages.2", "stages.3", "head"]
    assert runs(pyramid)["stages.2"] == [("stages.2.blocks.0", 8)]
    assert len(runs(pyramid, expand=True)["stages.2"]) == 8
    assert runs(vitgraph.compile("specs/vit.vg")) == {"stem": [], "blocks": [("blocks.0", 9)], "head": []}


def test_pyramid_drawing_fits_a_screen(tmp_path: Path) -> None:
    from PIL import Image

    small, full = tmp_path / "bv.png", tmp_path / "bv_all.png"
    assert main(["show", "specs/binaryvit.vg", "--format", "png", "-o", str(small)]) == 0
    assert main(["show", "specs/binaryvit.vg", "--format", "png", "-o", str(full), "--expand"]) == 0
    width, height = Image.open(small).size
    assert width <= 1920 and height <= 1080
    assert Image.open(full).size[1] > 2 * height  # every block drawn: several times taller


def test_set_stops_at_the_first_word_without_equals(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    assert main(["ops", "--set", "image=64", "patch=8", "classes=200", "specs/vit.vg", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total"]["macs"] == pytest.approx(189.5e6, rel=1e-3)
    assert main(["ops", "--set", "specs/vit.vg"]) == 2  # a flag with nothing to take says so
    assert "expected key=value after the flag, found nothing" in capsys.readouterr().err


def test_bare_command_prints_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: vitgraph") and "`vitgraph bench`" in out and "bench" in out
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out == f"vitgraph {vitgraph.__version__}\n"
