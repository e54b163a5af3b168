"""adflora export tensorboard: event files that read back (our reader everywhere, TensorBoard's
own EventAccumulator where tensorboard is installed) with the run's numbers."""

from __future__ import annotations

import pandas as pd
import pytest

from adflora_analysis.cli import main
from adflora_analysis.errors import AdfloraError
from adflora_analysis.export import export_tensorboard
from adflora_analysis.tbevents import EventWriter, read_events


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tb") / "run"
    with pytest.raises(SystemExit):
        main(["synthetic", "run", "bounds", "--out", str(out), "rounds=3", "seeds=2",
              "n_clients=3", "constants_every=0", "methods=['adf-lora','lora']"])
    return out


def _events(logdir, name):
    (f,) = (logdir / name).glob("events.out.tfevents.*")
    return read_events(f)


def test_export_reads_back_with_the_runs_numbers(run, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["export", "tensorboard", str(run), "--logdir", str(tmp_path / "tb")])
    assert e.value.code in (0, None)
    logdir = tmp_path / "tb"
    m = pd.read_parquet(run / "metrics.parquet")
    ev = _events(logdir, "adf-lora/seed1")
    assert ev[0]["file_version"] == "brain.Event:2"
    steps = [e["step"] for e in ev[1:]]
    assert steps == [0, 1, 2]
    want = m[(m.method == "adf-lora") & (m.seed == 1) & (m.layer == "all")].set_index("round")
    for e in ev[1:]:
        assert e["values"]["xi_B"] == pytest.approx(want.loc[e["step"], "xi_B"], rel=1e-6)
        assert "layers/layer0/xi_B" in e["values"] and "loss" in e["values"]
    text = _events(logdir, "checks")[1]["values"]["theory checks"]
    assert text.startswith("| no | check |") and "adf-lora" in text


def test_tensorboards_own_reader_sees_scalars_and_text(run, tmp_path):
    ea_mod = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    logdir = export_tensorboard(run, tmp_path / "tb")
    acc = ea_mod.EventAccumulator(str(logdir / "lora" / "seed0"))
    acc.Reload()
    assert "xi_A" in acc.Tags()["scalars"]
    got = [(s.step, s.value) for s in acc.Scalars("loss")]
    m = pd.read_parquet(run / "metrics.parquet")
    want = m[(m.method == "lora") & (m.seed == 0) & (m.layer == "all")].sort_values("round")
    assert [s for s, _ in got] == [0, 1, 2]
    assert [v for _, v in got] == pytest.approx(want["loss"].tolist(), rel=1e-6)
    acc = ea_mod.EventAccumulator(str(logdir / "checks"))
    acc.Reload()
    (t,) = acc.Tensors("theory checks")
    assert t.tensor_proto.string_val[0].decode().startswith("| no | check |")


def test_a_second_export_into_the_same_logdir_is_refused(run, tmp_path):
    export_tensorboard(run, tmp_path / "tb")
    with pytest.raises(AdfloraError, match="already holds TensorBoard event files"):
        export_tensorboard(run, tmp_path / "tb")


def test_planted_corruption_is_caught(tmp_path):
    with EventWriter(tmp_path) as w:
        w.scalars(3, {"loss": 0.25})
    assert read_events(w.path)[1] == {"wall_time": read_events(w.path)[1]["wall_time"],
                                      "step": 3, "file_version": None,
                                      "values": {"loss": 0.25}}
    data = bytearray(w.path.read_bytes())
    data[-6] ^= 0x01                                    # flip a bit of the float
    w.path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="CRC mismatch"):
        read_events(w.path)
