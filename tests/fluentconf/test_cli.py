"""`levity fluentd ...` through levity.cli.main."""

import os
import stat

import pytest

from levity.cli import main
from levity.fluentconf import render_file, write_atomic
from levity.fluentconf.profile import profiles_dir


def test_render_to_stdout(capsys):
    assert main(["fluentd", "render", "stdout"]) == 0
    assert capsys.readouterr().out == render_file(profiles_dir() / "stdout.yaml")


def test_render_to_a_file_by_path(tmp_path, capsys):
    out = tmp_path / "fluent.conf"
    assert main(["fluentd", "render", str(profiles_dir() / "production.yaml"), "-o", str(out)]) == 0
    assert out.read_text() == render_file(profiles_dir() / "production.yaml")
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    assert capsys.readouterr().out == ""
    assert [p.name for p in tmp_path.iterdir()] == ["fluent.conf"]


def test_render_keeps_a_tighter_mode(tmp_path):
    out = tmp_path / "fluent.conf"
    out.write_text("old\n")
    out.chmod(0o600)
    assert main(["fluentd", "render", "dev", "--output", str(out)]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and "environment dev" in out.read_text()


def test_invalid_profile_leaves_the_existing_file_untouched(tmp_path, capsys, base, write_profile):
    base["outputs"][2]["password"] = "literal"
    profile = write_profile(base)
    out = tmp_path / "fluent.conf"
    out.write_text("previous config\n")
    assert main(["fluentd", "render", str(profile), "-o", str(out)]) == 1
    assert out.read_text() == "previous config\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fluent.conf", "profile.yaml"]
    err = capsys.readouterr().err
    assert "outputs[2].password" in err and "literal" in err


def test_failed_write_leaves_no_temp_file(tmp_path, monkeypatch):
    out = tmp_path / "fluent.conf"
    out.write_text("previous config\n")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        write_atomic("new config\n", out)
    assert out.read_text() == "previous config\n"
    assert [p.name for p in tmp_path.iterdir()] == ["fluent.conf"]
    assert main(["fluentd", "render", "stdout", "-o", str(out)]) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["fluent.conf"]


def test_write_atomic_refuses_empty_text(tmp_path):
    out = tmp_path / "fluent.conf"
    with pytest.raises(ValueError):
        write_atomic("  \n", out)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_unwritable_directory_is_an_error(tmp_path, capsys):
    assert main(["fluentd", "render", "stdout", "-o", str(tmp_path / "missing" / "fluent.conf")]) == 1
    assert "cannot write" in capsys.readouterr().err


def test_validate_exit_codes(capsys, base, write_profile):
    assert main(["fluentd", "validate", "production"]) == 0
    assert capsys.readouterr().out == "ok\n"
    base["outputs"][1]["buffer"]["chunk_keys"] = ["time"]
    assert main(["fluentd", "validate", str(write_profile(base))]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "outputs[1].path" in captured.err


def test_unknown_profile_is_a_usage_error(capsys):
    assert main(["fluentd", "validate", "no-such-profile"]) == 2
    assert "no shipped profile" in capsys.readouterr().err


def test_missing_arguments_exit_2(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["fluentd", "render"])
    assert exited.value.code == 2
    with pytest.raises(SystemExit) as exited:
        main(["fluentd"])
    assert exited.value.code == 2


def test_profiles_listing(capsys):
    assert main(["fluentd", "profiles"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in lines]
    assert names == sorted(names)
    assert {"production", "staging", "dev", "compose", "stdout"} <= set(names)
    assert all(len(line.split(None, 1)) == 2 for line in lines)
