"""precision / channels_last / compile: config keys, bf16 autocast on the CPU, fp32 where it matters."""

import pytest
import torch

from repdiag.checkpoint import atomic_torch_save
from repdiag.errors import UserError
from repdiag.precision import resolve_precision
from train.config import load_config
from train.trainer import Trainer, config_from_checkpoint

TINY = ["data=synthetic", "data_limit=64", "width=0.125", "batch_size=32", "knn_every=0",
        "head.hidden_dim=32", "head.out_dim=16", "epochs=1", "image_size=16"]

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(*extra):
    return load_config("fmnist-tiny", TINY + list(extra))


def first_batch_loss(tmp_path, name, *extra):
    """The loss of the first training batch at initialisation (same weights, same views)."""
    tr = Trainer(tiny(*extra), tmp_path / name, quiet=True)
    v1, v2 = next(tr._epoch_loader(1))
    with torch.no_grad():
        return float(tr.scheme.loss(v1, v2)), tr


@pytest.mark.parametrize("overrides,msg", [
    (["precision=fp16"], "unknown precision 'fp16'; known: fp32, bf16, auto"),
    (["channels_last=maybe"], "channels_last: expected true or false"),
    (["compile=1"], "compile: expected true or false"),
    (["data_workers=-1"], "data_workers must be >= 0"),
])
def test_bad_values_are_one_line_user_errors(overrides, msg):
    with pytest.raises(UserError, match=msg) as e:
        load_config("fmnist-tiny", overrides)
    assert "\n" not in str(e.value)


def test_auto_is_fp32_on_the_cpu_and_recorded(tmp_path):
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    cfg = tiny()
    assert cfg.precision == "auto" and cfg.channels_last is None and cfg.compile is False
    tr = Trainer(cfg, tmp_path, quiet=True)
    tr.run()
    ck = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ck["config"]["precision"] == "auto"  # as given; the resolved value beside it
    assert ck["extra"]["runtime"]["precision"] == "fp32"
    assert ck["extra"]["runtime"]["channels_last"] is False
    assert ck["extra"]["runtime"]["cpu_threads"] == torch.get_num_threads()
    assert "precision: auto" in (tmp_path / "config.yaml").read_text()


def test_bf16_on_the_cpu_is_close_to_fp32_and_the_loss_gets_fp32(tmp_path, monkeypatch):
    import train.methods as methods

    seen = []
    real = methods.nt_xent
    monkeypatch.setattr(methods, "nt_xent", lambda z1, z2, t: seen.append((z1.dtype, z2.dtype))
                        or real(z1, z2, t))
    fp32, _ = first_batch_loss(tmp_path, "fp32", "precision=fp32")
    bf16, tr = first_batch_loss(tmp_path, "bf16", "precision=bf16")
    assert tr.runtime["precision"] == "bf16"
    assert seen == [(torch.float32, torch.float32)] * 2
    # the backbone really ran in bf16: its features come out in bfloat16
    v1, v2 = next(tr._epoch_loader(1))
    with torch.no_grad():
        assert tr.scheme.features(torch.cat([v1, v2])).dtype == torch.bfloat16
    # measured |bf16 - fp32| / fp32 at initialisation: 1.8e-4 to 1.1e-3 over seeds 0-4 (this
    # config), 3.4e-3 at 32 px; bf16 keeps 8 mantissa bits (unit roundoff 2^-8 = 3.9e-3)
    assert bf16 == pytest.approx(fp32, rel=1e-2)
    assert bf16 != fp32
    loss = tr.scheme.train_step(v1, v2)  # a bf16 training step runs and stays finite
    assert torch.isfinite(torch.tensor(loss))
    assert all(p.dtype == torch.float32 for p in tr.backbone.parameters())


def test_bilevel_inner_steps_run_in_fp32_under_bf16(tmp_path):
    tr = Trainer(tiny("precision=bf16", "scheme.kind=bilevel", "scheme.inner_steps=2"),
                 tmp_path, quiet=True)
    dtypes = []
    hook = tr.head.register_forward_hook(lambda m, i, o: dtypes.append((i[0].dtype, o.dtype)))
    tr.scheme.train_step(*next(tr._epoch_loader(1)))
    hook.remove()
    f32, b16 = torch.float32, torch.bfloat16
    assert dtypes == [(f32, f32), (f32, f32), (b16, b16)]  # 2 inner steps, then the outer pass


def test_losses_compute_in_fp32_inside_autocast():
    from train.losses import nt_xent, simsiam_loss

    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    want = nt_xent(z1, z2, 0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = nt_xent(z1.bfloat16(), z2.bfloat16(), 0.5)
        sim = simsiam_loss(z1.bfloat16(), z2.bfloat16(), z2, z1)
    assert got.dtype == torch.float32 and sim.dtype == torch.float32
    assert float(got) == pytest.approx(float(nt_xent(z1.bfloat16().float(), z2.bfloat16().float(),
                                                     0.5)), abs=1e-6)
    assert float(got) == pytest.approx(float(want), rel=1e-2)


def test_channels_last_runs_on_the_cpu_and_changes_nothing_that_matters(tmp_path):
    base, _ = first_batch_loss(tmp_path, "a")
    cl, tr = first_batch_loss(tmp_path, "b", "channels_last=true")
    assert tr.runtime["channels_last"] is True
    v1, _ = next(tr._epoch_loader(1))
    assert v1.is_contiguous(memory_format=torch.channels_last)
    assert cl == pytest.approx(base, abs=1e-5)


def test_compile_wraps_the_backbone_forward(tmp_path, monkeypatch):
    compiled = []

    def fake_compile(module, *a, **k):  # torch.compile itself takes minutes on 2 CPU cores
        compiled.append(module)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    tr = Trainer(tiny("compile=true"), tmp_path, quiet=True)
    assert compiled == [tr.backbone] and tr.scheme.backbone_forward is tr.backbone
    assert tr.runtime["compile"] is True


def test_a_run_written_before_these_keys_resumes_as_it_was_trained(tmp_path):
    Trainer(tiny(), tmp_path, quiet=True).run()
    ck = torch.load(tmp_path / "last.pt", weights_only=True)
    for key in ("precision", "channels_last", "compile", "data_on_device", "data_workers",
                "world_size"):
        del ck["config"][key]
    atomic_torch_save(ck, tmp_path / "last.pt")
    cfg = config_from_checkpoint(tmp_path)
    assert (cfg.precision, cfg.channels_last, cfg.compile, cfg.world_size) == ("fp32", False,
                                                                               False, 1)
