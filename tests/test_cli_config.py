"""The config tree drives the command line: every key documented, listed in each command's --help,
short flags that are aliases of keys, and overrides (the empty string included) on every command."""

from __future__ import annotations

import argparse

import pytest
import yaml

from cluster import cli
from cluster.cli import COMMANDS, build_parser
from trainer.config import Config, load_config
from trainer.typed_config import keys


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _leaf_parsers_of(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Every runnable command's parser (`stack up`, `config show` for the nested ones)."""
    out = {}
    for name, sub in _subparsers(parser).items():
        nested = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
        out |= {f"{name} {n}": p for n, p in nested[0].choices.items()} if nested else {name: sub}
    return out


def _leaf_parsers() -> dict[str, argparse.ArgumentParser]:
    return _leaf_parsers_of(build_parser())


def test_every_key_of_the_tree_has_a_docstring() -> None:
    undocumented = [k.name for k in keys(Config()) if not k.doc]
    assert undocumented == []


def test_each_command_help_lists_its_sections_keys_with_type_default_and_choices() -> None:
    helps = {name: p.format_help() for name, p in _leaf_parsers().items()}
    assert len(helps) >= len(COMMANDS)
    train = helps["train"]
    assert "--data.feature {logmel,logmel_iv,cardioids,stereo,mono} = logmel_iv" in train
    assert "--train.lr float = 0.0001" in train and "Peak learning rate" in train
    assert "--preprocess.input" not in train  # only the sections the command reads
    assert "--preprocess.codec {vp9,vp8,mjpeg} = vp9" in helps["preprocess"]
    assert "--synth.world {easy,default} = default" in helps["synth"]
    assert "--eval.probe_epochs int = 100" in helps["eval-service"]
    assert "--stack.auth {token,none} = token" in helps["stack up"]
    for name, text in helps.items():
        if name != "config show":
            assert "config keys (" in text, name


def _run_capturing(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> Config:
    """The config `avsa ARGV` would run its command with (the command itself does not run)."""
    seen = {}

    def capture(args: argparse.Namespace, cfg: Config) -> int:
        seen["cfg"] = cfg
        return 0

    real = build_parser

    def patched() -> argparse.ArgumentParser:
        parser = real()
        for p in _leaf_parsers_of(parser).values():
            p.set_defaults(func=capture)
        return parser

    monkeypatch.setattr(cli, "build_parser", patched)
    assert cli.main(argv) == 0
    return seen["cfg"]


def test_a_short_flag_is_an_alias_of_its_key_and_help_comes_from_the_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parser = _leaf_parsers()["preprocess"]
    flag = next(a for a in parser._actions if "--clip-seconds" in a.option_strings)
    assert "Clip length in seconds" in flag.help and "--preprocess.clip_seconds" in flag.help
    cfg = _run_capturing(
        monkeypatch, ["preprocess", "--clip-seconds", "2.5", "--size", "256x128", "--preprocess.gop", "4"]
    )
    p = cfg.preprocess
    assert (p.clip_seconds, p.video_size, p.gop) == (2.5, (256, 128), 4)


def test_a_size_that_is_not_2_to_1_names_the_key() -> None:
    with pytest.raises(Exception, match=r"synth.*2:1"):
        load_config(None, {"synth.size": [100, 100]})


@pytest.mark.parametrize("command", ["train", "preprocess", "synth", "eval-service", "stats", "config show"])
def test_every_command_takes_an_empty_string_override(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _run_capturing(monkeypatch, [*command.split(), "--tracking.uri", "", "--data.stats_url="])
    assert cfg.tracking.uri == "" and cfg.data.stats_url == ""


def test_config_show_doc_is_commented_yaml_that_loads_back(capsys: pytest.CaptureFixture, tmp_path) -> None:
    assert cli.main(["config", "show", "--doc", "--train.lr", "0.003"]) == 0
    text = capsys.readouterr().out
    assert "  # Peak learning rate of AdamW.\n  lr: 0.003\n" in text
    assert (
        "  # Encoder sizes: the papers' networks, or small ones that train in minutes on a CPU. One of:"
        in text
    )
    path = tmp_path / "documented.yaml"
    path.write_text(text)
    assert yaml.safe_load(text)["train"]["lr"] == 0.003
    assert load_config(path).train.lr == 0.003


def test_the_demos_preprocessing_job_reads_the_input_and_output_it_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The demo submits `avsa preprocess --input RAW --output SHARDS` plus its preprocess section as
    dotted keys. A dotted key wins over its short flag, so the section's own input and output (the
    defaults) once replaced RAW and SHARDS and the job failed on `.avsa/demo/raw`; such a command line
    is now refused."""
    from cluster.demo import demo_config, preprocess_command

    cfg = demo_config(None)
    command = ["preprocess", "--input", "s3://avsa/demo/raw", "--output", "s3://avsa/demo/shards"]
    with pytest.raises(SystemExit):  # the section's own input contradicts --input: refused, not overruled
        _run_capturing(monkeypatch, [*command, "--preprocess.input", cfg.preprocess.input])
    resolved = _run_capturing(monkeypatch, preprocess_command(cfg, command)).preprocess
    assert (resolved.input, resolved.output) == ("s3://avsa/demo/raw", "s3://avsa/demo/shards")
    others = {k: v for k, v in vars(resolved).items() if k not in ("input", "output")}
    assert others == {k: v for k, v in vars(cfg.preprocess).items() if k not in ("input", "output")}


def test_a_short_flag_and_its_dotted_key_must_agree(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    cfg = _run_capturing(monkeypatch, ["synth", "--videos", "3", "--synth.videos", "3"])  # the same: fine
    assert cfg.synth.videos == 3
    with pytest.raises(SystemExit) as refused:
        _run_capturing(monkeypatch, ["synth", "--videos", "3", "--synth.videos=4"])
    assert refused.value.code == 2
    err = capsys.readouterr().err
    assert "--videos 3 and --synth.videos 4 set the same key to different values" in err
    with pytest.raises(SystemExit):
        _run_capturing(monkeypatch, ["synth", "--no-fetch", "--synth.fetch", "true"])
    assert "--no-fetch false and --synth.fetch true" in capsys.readouterr().err
