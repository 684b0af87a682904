"""The table of bad specs: each gets exactly its pinned message (golden file), exit
status 2, and never a traceback. Cases are written into a temporary folder so paths in
messages are stable (`main.vg:3:5: ...`)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from vitgraph.cli import main
from vitgraph.diagnostics import _visible, _window

GOLDEN = Path(__file__).parent / "golden" / "errors"

VIT = """param image = 32
param patch = 4
param classes = 10
model m {{
    input 3 x image x image
    {stem}
    {tokens}
    pos-embed learned
    blocks 2 {{ {attn}; {mlp}{extra} }}
    head {head} -> classes
}}
"""


def vit(stem="patchify patch -> 192", tokens="tokens cls", attn="attention heads 3", mlp="mlp ratio 2",
        extra="", head="token") -> str:
    return VIT.format(stem=stem, tokens=tokens, attn=attn, mlp=mlp, extra=extra, head=head)


PYRAMID = """param image = 32
model p {{
    input 3 x image x image
    norm batch
    stem conv 4 -> 32
    pos-embed learned
    stage 32 depth 1 {{ {attn0}; mlp hidden 64 }}
    stage 64 depth 1 downsample {down} pos-embed {{ attention heads 2; mlp hidden 128 }}
    head gap -> 10
    binarize weights activations attention{exempt}
}}
"""


def pyramid(attn0="attention heads 1", down="merge", exempt="") -> str:
    return PYRAMID.format(attn0=attn0, down=down, exempt=exempt)


CASES: dict[str, tuple[dict[str, str], list[str]]] = {
    # syntax
    "syntax_missing_brace": ({"main.vg": "model m {\n    input 3 x 32 x 32\n"}, []),
    "syntax_missing_model_name": ({"main.vg": "model {\n}\n"}, []),
    "syntax_statement_starts_with_number": ({"main.vg": "model m {\n    3 x 32\n}\n"}, []),
    "syntax_use_unquoted": ({"main.vg": "use deit_tiny.vg\n"}, []),
    "syntax_param_without_equals": ({"main.vg": "param image 32\n"}, []),
    "syntax_unterminated_string": ({"main.vg": 'use "vit.vg\n'}, []),
    "syntax_bad_character": ({"main.vg": vit(attn="attention heads @3")}, []),
    "syntax_unbalanced_parenthesis": ({"main.vg": vit(mlp="mlp hidden (192 * 2")}, []),
    "syntax_stray_closing_brace": ({"main.vg": vit() + "}\n"}, []),
    # words and values
    "unknown_model_word": ({"main.vg": vit(stem="patchfy patch -> 192")}, []),
    "unknown_block_word": ({"main.vg": vit(mlp="mpl ratio 2")}, []),
    "block_word_at_model_level": ({"main.vg": vit(tokens="mlp ratio 4")}, []),
    "unknown_option": ({"main.vg": vit(attn="attention heads 3 head_dim 64")}, []),
    "option_given_twice": ({"main.vg": vit(attn="attention heads 3 qkv-bias false qkv-bias true")}, []),
    "bad_fans_choice": ({"main.vg": vit(stem="patchify patch -> 192 fans lienar")}, []),
    "wrong_type_float_for_int": ({"main.vg": vit(attn="attention heads 2.5")}, []),
    "wrong_type_string_param": ({"main.vg": vit().replace("param image = 32", 'param image = "big"')}, []),
    "wrong_choice": ({"main.vg": vit(head="tokn")}, []),
    "unknown_name": ({"main.vg": vit(stem="patchify pach -> 192")}, []),
    "unknown_name_in_expression": ({"main.vg": vit(mlp="mlp hidden (dimm * 2)")}, []),
    "division_by_zero": ({"main.vg": vit(mlp="mlp hidden (192 / 0)")}, []),
    "missing_literal_x": ({"main.vg": vit().replace("input 3 x image x image", "input 3 image image")}, []),
    "declared_type_mismatch": ({"main.vg": vit().replace("param image = 32", "param image: int = 3.5")}, []),
    "unknown_param_type": ({"main.vg": vit().replace("param image = 32", "param image: integer = 32")}, []),
    "duplicate_word": ({"main.vg": vit(tokens="tokens cls\n    tokens cls distill")}, []),
    "duplicate_model": ({"main.vg": vit() + "model m {\n}\n"}, []),
    "mlp_ratio_and_hidden": ({"main.vg": vit(mlp="mlp ratio 2 hidden 384")}, []),
    "block_without_branch": ({"main.vg": vit(attn="affine-residual", mlp="")}, []),
    "parallel_word_first": ({"main.vg": vit(attn="pool-branches 3x1", mlp="mlp ratio 2", tokens="", head="gap")}, []),
    "layer_before_input": ({"main.vg": vit().replace("    input 3 x image x image\n", "").replace(
        "    pos-embed learned\n", "    pos-embed learned\n    input 3 x image x image\n")}, []),
    "layer_after_head": ({"main.vg": vit().replace("    head token -> classes\n", "    head token -> classes\n"
                                                                             "    pos-embed learned\n")}, []),
    "patch_without_extends": ({"main.vg": vit().replace("blocks 2 {", "blocks {")}, []),
    "index_outside_a_body": ({"main.vg": vit(stem="patchify (index + 4) -> 192")}, []),
    "parameter_named_index": ({"main.vg": "param index = 3\n" + vit()}, []),
    "drop_path_rate_one": ({"main.vg": vit(extra="").replace("    head token", "    drop-path 1.0\n    head token")},
                           []),
    "init_unknown_policy": ({"main.vg": vit().replace("    head token", "    init xavir\n    head token")}, []),
    "init_distribution_without_std": ({"main.vg": vit().replace("    head token",
                                                               "    init tokens normal\n    head token")}, []),
    "extends_adds_a_layer": ({"main.vg": vit().replace("    tokens cls\n", "") + "model n extends m {\n"
                                         "    tokens cls\n}\n"}, ["--model", "n"]),
    "missing_head": ({"main.vg": "model m {\n    input 3 x 32 x 32\n    patchify 4 -> 64\n"
                                 "    blocks 1 { attention heads 2; mlp ratio 2 }\n}\n"}, []),
    "missing_patch_embedding": ({"main.vg": vit(stem="")}, []),
    "two_patch_embeddings": ({"main.vg": vit(stem="patchify patch -> 192\n    shift-tokenize patch -> 192")}, []),
    "no_model": ({"main.vg": "param image = 32\n"}, []),
    # shapes and structure, found before any tensor exists
    "heads_do_not_divide_dim": ({"main.vg": vit(attn="attention heads 5")}, []),
    "patch_does_not_divide_image": ({"main.vg": vit().replace("param patch = 4", "param patch = 5")}, []),
    "pool_kernel_larger_than_grid": ({"main.vg": vit(tokens="", head="gap", extra="; pool-branches 3x1 9x1")
                                      .replace("param patch = 4", "param patch = 8")}, []),
    "pool_kernel_even": ({"main.vg": vit(tokens="", head="gap", extra="; pool-branches 2x1")}, []),
    "pool_branches_with_cls_token": ({"main.vg": vit(extra="; pool-branches 3x1")}, []),
    "reduce_larger_than_grid": ({"main.vg": pyramid(attn0="attention heads 1 reduce 16")}, []),
    "reduce_without_binarize": ({"main.vg": vit(attn="attention heads 3 reduce 2", tokens="", head="gap")}, []),
    "odd_grid_downsample": ({"main.vg": pyramid().replace("param image = 32", "param image = 36")}, []),
    "binary_pit_transition": ({"main.vg": pyramid(down="pit")}, []),
    "binary_attention_inner_mismatch": ({"main.vg": pyramid(attn0="attention heads 2 head-dim 8")}, []),
    "first_stage_dim_mismatch": ({"main.vg": pyramid().replace("stage 32 depth 1", "stage 48 depth 1")}, []),
    "stage_without_downsample": ({"main.vg": pyramid().replace(" downsample merge", "")}, []),
    "token_head_without_cls": ({"main.vg": vit(tokens="")}, []),
    "distill_head_without_distill_token": ({"main.vg": vit(head="token+distill")}, []),
    "soft_split_of_class_tokens": ({"main.vg": vit(stem="soft-split 3 stride 2 padding 1",
                                                   extra="; soft-split 3 stride 2 padding 1")}, []),
    "soft_split_padding_not_whole": ({"main.vg": vit(stem="soft-split 3 stride 2 padding 0.5")}, []),
    "soft_split_kernel_larger_than_input": ({"main.vg": vit(stem="soft-split 40 stride 2")}, []),
    "parallel_word_after_soft_split": ({"main.vg": vit(stem="soft-split 3 stride 2 padding 1", tokens="", head="gap",
                                                       extra="; soft-split 3 stride 2 padding 1; pool-branches 3x1")},
                                       []),
    # files, models and overrides
    "use_unknown_file": ({"main.vg": 'use "vitt.vg"\n' + vit(), "vit.vg": vit()}, []),
    "extends_unknown_model": ({"main.vg": vit().replace("model m {", "model m extends vitt {")}, []),
    "extends_cycle": ({"main.vg": 'use "a.vg"\nmodel b extends a {\n    head gap -> 10\n}\n',
                       "a.vg": 'use "main.vg"\nmodel a extends b {\n    head token -> 10\n}\n'}, []),
    "override_names_no_parameter": ({"main.vg": vit()}, ["--set", "imag=64"]),
    "override_wrong_type": ({"main.vg": vit()}, ["--set", "image=big"]),
    "override_without_equals": ({"main.vg": vit()}, ["--set", "image"]),
    "spec_file_missing": ({"mian.vg": vit()}, []),
}


def test_table_has_at_least_30_cases() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_spec_message(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                          capsys: pytest.CaptureFixture[str], golden) -> None:
    files, extra = CASES[name]
    for fname, text in files.items():
        (tmp_path / fname).write_text(text)
    monkeypatch.chdir(tmp_path)
    status = main(["check", "main.vg", *extra])
    out, err = capsys.readouterr()
    assert status == 2, f"{name}: expected exit status 2, got {status}; stderr:\n{err}"
    assert out == ""
    assert "Traceback" not in err
    first = err.splitlines()[0]
    assert re.match(r"^(\S+:\d+:\d+|--set \S+|main\.vg|\S+): error: \S", first) or first.startswith("error: "), first
    golden(GOLDEN / f"{name}.txt", err)


def test_span_errors_show_line_and_caret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "main.vg").write_text(vit(attn="attention heads 5"))
    monkeypatch.chdir(tmp_path)
    assert main(["check", "main.vg"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "main.vg:9:16: error: heads 5 does not divide dim 192"
    assert lines[1] == "        blocks 2 { attention heads 5; mlp ratio 2 }"
    assert lines[2].index("^") == lines[1].index("attention")


def test_did_you_mean_for_misspelt_word(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "main.vg").write_text(vit(mlp="mpl ratio 2"))
    monkeypatch.chdir(tmp_path)
    assert main(["check", "main.vg"]) == 2
    assert "did you mean 'mlp'?" in capsys.readouterr().err


def test_real_process_exits_2_without_traceback(tmp_path: Path) -> None:
    (tmp_path / "main.vg").write_text(vit(attn="attention heads 5"))
    proc = subprocess.run([sys.executable, "-m", "vitgraph.cli", "check", "main.vg"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("main.vg:9:16: error: heads 5 does not divide dim 192")


# -- the front end never crashes: bytes, sizes, nesting, numbers, paths (issue 11) -----------
FRONT_END: dict[str, tuple[bytes, str]] = {
    "not_utf8": (b"param image = 32\nparam patch = \xff4\n", "main.vg:2:15: error: byte 0xff is not UTF-8"),
    "nul_in_use_path": (b'use "deit_ti\x00ny.vg"\n', "main.vg:1:5: error: a `use` path cannot contain a NUL byte"),
    "deep_braces": (("model m " + "{ blocks 1 " * 3000 + "}" * 3000 + "\n").encode(),
                    "main.vg:1:97: error: bodies in braces nest more than 8 deep here"),
    "deep_parentheses": (("param a = " + "(" * 5000 + "1" + ")" * 5000 + "\n").encode(),
                         "main.vg:1:111: error: parentheses nest more than 100 deep here"),
    "long_expression": (("param a = (" + " + ".join(["1"] * 5000) + ")\n").encode(),
                        "main.vg:1:12: error: this expression nests more than 100 operations deep"),
    "integer_of_4400_digits": (("param a = " + "9" * 4400 + "\n").encode(),
                               "main.vg:1:11: error: integer 99999999999999999999... is too large"),
    "huge_float": (b"param a = 1e999\n", "main.vg:1:11: error: number 1e999 is too large"),
    "huge_dimension": (("model m {\n    input 3 x " + "9" * 400 + " x 32\n}\n").encode(),
                       "main.vg:2:15: error: integer 99999999999999999999... is too large"),
    "long_use_path": (('use "' + "a" * 5000 + '.vg"\n').encode(), "main.vg:1:5: error: cannot read 'aaaaaaaa"),
    "spec_of_a_megabyte": ("".join(f"param p{i} = {i}\n" for i in range(60000)).encode(),
                           "error: spec 'main.vg' is 1209 KiB; spec files are limited to 256 KiB"),
    "form_feed_before_an_error": (b"param a = 1\n\x0cparam b = 2\nmodel m {\n    bogus\n}\n",
                                  "main.vg:2:1: error: unexpected character '\\x0c'"),
    "line_separators_before_an_error": ("param a = 1 # \u2028 \u0085 \x0b \x1c\nmodel m {\n    bogus 3\n}\n".encode(),
                                        "main.vg:3:5: error: unknown word 'bogus'"),
    "drop_path_over_one": (b"param image = 32\nmodel m {\n    input 3 x image x image\n    patchify 4 -> 64\n"
                           b"    blocks 1 { attention heads 2; mlp ratio 2 }\n    drop-path 2.5\n    head gap -> 10\n}\n",
                           "main.vg:6:15: error: drop-path 2.5 would drop every branch: expected a rate in [0, 1)"),
    "empty_file": (b"", "main.vg:1:1: error: the spec defines no model"),
    "blocks_repeated_billions_of_times": (b"model m {\n    input 3 x 32 x 32\n    patchify 4 -> 64\n"
                                          b"    blocks 2147483648 { attention heads 2; mlp ratio 2 }\n"
                                          b"    head gap -> 10\n}\n",
                                          "main.vg:4:12: error: 'blocks' repeats its body 2147483648 times; at most 1000"),
}


@pytest.mark.parametrize("name", sorted(FRONT_END))
def test_front_end_gives_one_located_message(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    data, first = FRONT_END[name]
    (tmp_path / "main.vg").write_bytes(data)
    monkeypatch.chdir(tmp_path)
    assert main(["check", "main.vg"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(first), err[:400]
    assert "Traceback" not in err and len(err) < 2000
    lines = err.splitlines()
    m = re.match(r"main\.vg:(\d+):(\d+):", lines[0])
    if m and len(lines) > 1 and not lines[1].startswith("note"):
        # the quoted line is the line named (lines counted at "\n" only), the caret on its column
        named = data.decode("utf-8", errors="replace").split("\n")[int(m.group(1)) - 1]
        shown, caret, _ = _window(named.removesuffix("\r"), int(m.group(2)) - 1, 1)
        assert lines[1] == "    " + _visible(shown) and lines[2].index("^") == 4 + caret


def test_a_folder_given_as_the_spec_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "specs.vg").mkdir()
    (tmp_path / "specs.vg" / "vit.vg").write_text("")
    monkeypatch.chdir(tmp_path)
    assert main(["check", "specs.vg"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 'specs.vg' is a folder, not a spec file") and "did you mean" not in err
    assert "note: specs in it: vit.vg" in err
