"""The VQ tokenizer of Table 1d's token target (mae/tokenizer.py), its protocol (mae/protocols/tokenizer.py,
`mae tokenizer`) and its cached training stage (reproduce/tokenizer.py)."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from mae.engine.checkpoint import CheckpointError, save_checkpoint
from mae.models import create_mae
from mae.tokenizer import TokenizerConfig, VQTokenizer, load_tokenizer


def small(**kw) -> VQTokenizer:
    torch.manual_seed(0)
    return VQTokenizer(TokenizerConfig(**{"img_size": 32, "patch_size": 8, "vocab_size": 16, "code_dim": 8,
                                          "hidden_dim": 16, "res_blocks": 1, **kw}))


def test_one_token_per_patch_in_raster_order():
    # without the 3x3 context blocks a token depends on its own patch only, so the token at index
    # r * gw + c must be the token of patch (r, c) tokenized alone
    tok = small(res_blocks=0).eval()
    imgs = torch.randn(2, 3, 32, 32)
    ids = tok.tokenize(imgs)
    assert ids.shape == (2, 16) and ids.dtype == torch.long
    assert int(ids.min()) >= 0 and int(ids.max()) < tok.vocab_size
    p, gw = 8, 4
    for r in range(4):
        for c in range(4):
            alone = tok.tokenize(imgs[:, :, r * p:(r + 1) * p, c * p:(c + 1) * p])
            assert torch.equal(alone[:, 0], ids[:, r * gw + c])


def test_tokens_are_the_nearest_codes_by_cosine():
    tok = small().eval()
    imgs = torch.randn(3, 3, 32, 32)
    z = torch.nn.functional.normalize(tok.encoder(imgs), dim=1).permute(0, 2, 3, 1).reshape(-1, 8)
    book = torch.nn.functional.normalize(tok.codebook.weight, dim=1)
    expected = torch.cdist(z, book).argmin(dim=1).view(3, 16)  # on the unit sphere: closest = most similar
    assert torch.equal(tok.tokenize(imgs), expected)


def test_training_learns_a_code_per_patch_colour():
    # images made of 8x8 patches of 4 flat colours: a working VQ-VAE gives each colour its own token
    tok = small(vocab_size=16)
    palette = torch.tensor([[1.5, -1.0, 0.0], [-1.0, 1.5, 0.5], [0.0, 0.0, -1.5], [1.0, 1.0, 1.0]])
    idx = torch.randint(0, 4, (8, 4, 4), generator=torch.Generator().manual_seed(0))
    imgs = palette[idx].permute(0, 3, 1, 2).repeat_interleave(8, 2).repeat_interleave(8, 3)
    opt = torch.optim.Adam(tok.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        loss, recon, stats = tok(imgs)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(stats["recon_loss"].item())
    assert bool(tok.initialized) and recon.shape == imgs.shape
    assert losses[-1] < 0.2 * losses[0]
    ids = tok.eval().tokenize(imgs).view(8, 4, 4)
    token_of = {c: set(ids[idx == c].tolist()) for c in range(4)}
    assert all(len(t) == 1 for t in token_of.values()), token_of  # one token per colour...
    assert len(set.union(*token_of.values())) == 4  # ...and a different one for each


def test_first_batch_seeds_the_codebook_and_dead_codes_are_reseeded():
    tok = small(vocab_size=8)
    before = tok.codebook.weight.detach().clone()
    tok(torch.randn(4, 3, 32, 32))
    after_init = tok.codebook.weight.detach().clone()
    assert not torch.equal(before, after_init)
    # every seeded code is an encoder output, hence a unit vector
    assert torch.allclose(after_init.norm(dim=1), torch.ones(8), atol=1e-5)
    tok.usage.zero_()  # no code was used lately: after the next batch, its usage EMA decides
    x = torch.randn(4, 3, 32, 32)
    probs = torch.bincount(tok.tokenize(x).flatten(), minlength=8).float() / 64
    cfg = tok.config
    dead = (1 - cfg.usage_decay) * probs < cfg.dead_threshold / 8  # the EMA update, by hand
    assert dead.any()
    tok(x)
    changed = (tok.codebook.weight != after_init).any(dim=1)
    assert torch.equal(changed, dead)  # exactly the dead codes got new vectors...
    assert torch.allclose(tok.usage[dead], torch.full((int(dead.sum()),), 1 / 8))  # ...and a fresh usage
    tok.eval()
    frozen = tok.codebook.weight.detach().clone()
    tok.usage.zero_()
    with torch.no_grad():
        tok(torch.randn(4, 3, 32, 32))  # eval mode: the codebook never changes
    assert torch.equal(tok.codebook.weight, frozen)


def test_save_and_load_round_trip(tmp_path):
    tok = small()
    tok(torch.randn(4, 3, 32, 32))  # initialise the codebook
    path = tok.save(tmp_path / "tok.pth", extra={"note": "test"})
    loaded = load_tokenizer(path)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert loaded.config == tok.config and loaded.vocab_size == 16
    imgs = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded.tokenize(imgs), tok.eval().tokenize(imgs))


def test_loading_other_files_is_a_clear_error(tmp_path):
    save_checkpoint({"model": {"w": torch.zeros(1)}}, tmp_path / "mae.pth")
    with pytest.raises(CheckpointError, match="is not a tokenizer file"):
        load_tokenizer(tmp_path / "mae.pth")
    with pytest.raises(CheckpointError, match="not found"):
        load_tokenizer(tmp_path / "missing.pth")
    state = {"model": small().state_dict(), "kind": "mae.tokenizer.VQTokenizer",
             "tokenizer_config": {"img_size": 32, "patch_size": 8, "vocab_size": 16, "code_dim": 8, "hidden_dim": 16,
                                  "res_blocks": 1, "colour": 3}}
    save_checkpoint(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="unknown tokenizer_config field"):
        load_tokenizer(tmp_path / "bad.pth")


def test_bad_configs_and_inputs():
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        TokenizerConfig(img_size=30, patch_size=8)
    with pytest.raises(ValueError, match="vocab_size must be >= 2"):
        TokenizerConfig(vocab_size=1)
    with pytest.raises(ValueError, match="multiples of the patch size 8"):
        small().tokenize(torch.randn(1, 3, 30, 32))


def test_token_target_trains_an_mae(tmp_path):
    tok = small(vocab_size=16)
    tok(torch.randn(4, 3, 32, 32))
    tok.save(tmp_path / "tok.pth")
    torch.manual_seed(0)
    model = create_mae("mae_vit_smoke", target="token", tokenizer=load_tokenizer(tmp_path / "tok.pth"))
    assert model.decoder_pred.out_features == 16
    loss, pred, mask = model(torch.randn(2, 3, 32, 32))
    assert pred.shape == (2, 16, 16) and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is None for p in model.target.parameters())  # the tokenizer stays frozen
    wrong = VQTokenizer(TokenizerConfig(img_size=32, patch_size=4, vocab_size=16, code_dim=8, hidden_dim=16))
    bad = create_mae("mae_vit_smoke", target="token", tokenizer=wrong)
    with pytest.raises(ValueError, match="tokenizer gives"):
        bad(torch.randn(2, 3, 32, 32))


def test_tokenizer_stage_trains_once_and_is_cached(tmp_path, capsys):
    from mae.protocols import tokenizer as protocol
    from reproduce import tokenizer as stage
    out = tmp_path / "tok"
    assert stage.main(["--scale", "smoke", "--out", str(out)]) == 0
    path = protocol.tokenizer_path(out)
    assert path.is_file() and (out / "metrics.json").is_file() and (out / "config.yaml").is_file()
    tok = load_tokenizer(path)
    assert tok.config.patch_size == 8 and tok.vocab_size == protocol.PRESETS["smoke"].vocab_size
    mtime = path.stat().st_mtime_ns
    capsys.readouterr()
    assert stage.main(["--scale", "smoke", "--out", str(out)]) == 0
    assert "cached" in capsys.readouterr().out and path.stat().st_mtime_ns == mtime
    assert stage.main(["--scale", "smoke", "--out", str(tmp_path / "x"), "--dry-run"]) == 0
    assert "would write" in capsys.readouterr().out and not (tmp_path / "x").exists()
    with pytest.raises(SystemExit):
        stage.main(["--scale", "paper"])  # ImageNet is required at paper scale
    assert "needs --data" in capsys.readouterr().err


def test_tokenizer_stage_metrics(tmp_path):
    from mae.protocols import tokenizer as protocol
    cfg = replace(protocol.PRESETS["smoke"], output_dir=str(tmp_path / "run"), epochs=2)
    result = protocol.run(cfg)
    final = result["final"]
    assert result["finished"] and final["val_codes_used"] >= 1
    assert final["val_recon_mse"] > 0 and 1.0 <= final["val_perplexity"] <= cfg.vocab_size


def test_tokenizer_is_a_protocol_of_the_cli_and_the_grid(tmp_path):
    """`mae tokenizer` runs the protocol; the grid names its stage "tokenizer" with the scale's recipe unchanged."""
    from mae import cli
    from mae.protocols import PROTOCOLS
    from mae.protocols import tokenizer as protocol
    from reproduce.grid import protocol_module
    from reproduce.scales import get_scale, tokenizer_cell
    assert "tokenizer" in PROTOCOLS and protocol_module("tokenizer") is protocol
    out = tmp_path / "run"
    assert cli.main(["tokenizer", "--preset", "smoke", "--output_dir", str(out), "--epochs", "1"]) == 0
    assert (out / protocol.TOKENIZER_FILE).is_file() and (out / "metrics.json").is_file()
    stage = tokenizer_cell(get_scale("cpu")).stages[0]
    assert (stage.name, stage.protocol, stage.local_only) == ("tokenizer", "tokenizer", True)
    assert stage.config == replace(protocol.PRESETS["cpu"], progress=False, tensorboard=False, num_workers=0,
                                   data="digits", img_size=16, log_every=1000)
