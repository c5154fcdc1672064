"""Progress output: a few plain lines when stderr is not a terminal, bars on request, and a fit
that resumes from its checkpoint says so and ends as an uninterrupted one."""

import pytest
import torch

from gas_lib.data import load_split
from gas_lib.progress import ENV, LineProgress, log, mode, progress
from gas_lib.train import CHECKPOINT_NAME, GASDetector

from conftest import tiny_config


class Interrupt(Exception):
    pass


@pytest.fixture(autouse=True)
def no_forced_mode(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)


def test_without_a_terminal_a_loop_prints_two_plain_lines(capsys):
    assert mode() == "lines"  # pytest's captured stderr is no terminal
    assert sum(progress(range(100), "counting")) == sum(range(100))
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert len(lines) == 2
    assert lines[0] == "counting: started (100 items)"
    assert lines[1].startswith("counting: done 100 items in ")


def test_a_loop_with_every_adds_a_line_per_stretch_with_its_values(capsys):
    bar = progress(range(100), "GAS epochs", unit="epoch", every=10)
    for i in bar:
        bar.set_postfix(normal=f"{i / 100:.3f}")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 12 and "\r" not in "".join(lines)
    assert lines[1].startswith("epoch 10/100  normal=0.090  ") and lines[1].endswith(" s/epoch")


def test_the_environment_variable_forces_the_mode(monkeypatch, capsys):
    monkeypatch.setenv(ENV, "off")
    list(progress(range(100), "quiet"))
    log("always shown")
    assert capsys.readouterr().err == "always shown\n"

    monkeypatch.setenv(ENV, "bars")
    bar = progress(range(100), "bar")
    assert not isinstance(bar, LineProgress)  # a tqdm bar
    list(bar)
    assert "\r" in capsys.readouterr().err

    monkeypatch.setenv(ENV, "lines")
    assert isinstance(progress(range(3), "lines"), LineProgress)
    monkeypatch.setenv(ENV, "sometimes")
    with pytest.raises(ValueError, match=ENV):
        mode()


def test_disabled_loops_print_nothing(capsys):
    assert list(progress(range(5), "silent", enabled=False)) == list(range(5))
    assert capsys.readouterr().err == ""


def test_an_interrupted_fit_says_it_resumes_and_ends_as_an_uninterrupted_one(
        synthetic_root, tmp_path, capsys):
    train = load_split(synthetic_root, "plate", "train")
    test = load_split(synthetic_root, "plate", "test")[:4]
    config = tiny_config(epochs=4)
    straight = GASDetector(config).fit(train, progress=False)

    def stop_at_three(detector, epoch):
        if epoch == 3:
            raise Interrupt  # epochs 1 and 2 are in the checkpoint
        return {}

    with pytest.raises(Interrupt):
        GASDetector(config).fit(train, checkpoint_dir=tmp_path, epoch_callback=stop_at_three,
                                progress=False)
    assert capsys.readouterr().err == ""
    resumed = GASDetector(config).fit(train, checkpoint_dir=tmp_path, progress=True)
    err = capsys.readouterr().err
    assert f"resuming from epoch 3 of 4 (checkpoint {tmp_path / CHECKPOINT_NAME})\n" in err
    assert "\r" not in err and len(err.splitlines()) < 12
    assert "epoch 4/4  normal=" in err and "GAS epochs: done 2 epochs in " in err
    assert list(resumed.history["epoch"]) == [1, 2, 3, 4]
    for a, b in zip(straight.score(test), resumed.score(test)):
        assert torch.equal(a, b)
