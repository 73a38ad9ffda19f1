"""AugDETR: HAE and EMCA against DINO and against a naive reference."""
import pytest
import torch

from models import build_model
from models.dino.augdetr.emca import EncoderMixingAttention
from models.dino.augdetr.hae import HybridAttentionEncoderLayer

from emca_reference import paper_loop
from tiny_configs import MODEL, tiny_args, tiny_batch

D, HEADS, FFN, ENC, DEC = (MODEL[k] for k in ("hidden_dim", "nheads", "dim_feedforward", "enc_layers", "dec_layers"))


def eval_out(model, samples):
    model.eval()
    with torch.no_grad():
        return model(samples)


def test_hae_with_zero_layers_is_dino(seeded):
    dino, _, _ = build_model(tiny_args())
    hae, _, _ = build_model(tiny_args(use_hae=True, num_hae_layers=0))
    hae.load_state_dict(dino.state_dict(), strict=True)
    samples, _ = tiny_batch()
    a, b = eval_out(dino, samples), eval_out(hae, samples)
    assert torch.equal(a["pred_logits"], b["pred_logits"]) and torch.equal(a["pred_boxes"], b["pred_boxes"])


def test_emca_on_last_layer_with_gate_one_is_dino(seeded):
    dino, _, _ = build_model(tiny_args())
    emca, _, _ = build_model(tiny_args(use_emca=True, emca_enc_layers=[ENC - 1]))
    missing, unexpected = emca.load_state_dict(dino.state_dict(), strict=False)
    assert unexpected == [] and all("mix_weights" in k for k in missing)
    for layer in emca.transformer.decoder.layers:
        torch.nn.init.constant_(layer.cross_attn.mix_weights.bias, 1e4)  # sigmoid -> exactly 1
    samples, _ = tiny_batch()
    a, b = eval_out(dino, samples), eval_out(emca, samples)
    assert torch.allclose(a["pred_logits"], b["pred_logits"], atol=1e-6)
    assert torch.allclose(a["pred_boxes"], b["pred_boxes"], atol=1e-6)


def emca_inputs(k=3, b=2, lq=5, shapes=((6, 8), (3, 4), (2, 2), (1, 1))):
    g = torch.Generator().manual_seed(1)
    spatial = torch.tensor(shapes)
    start = torch.cat([spatial.new_zeros(1), spatial.prod(1).cumsum(0)[:-1]])
    s = int(spatial.prod(1).sum())
    memories = torch.randn(k, b, s, D, generator=g, requires_grad=True)
    query = torch.randn(b, lq, D, generator=g, requires_grad=True)
    ref = torch.rand(b, lq, len(shapes), 4, generator=g) * 0.5 + 0.25
    mask = torch.zeros(b, s, dtype=torch.bool)
    mask[1, :3] = True
    return query, ref, memories, spatial, start, mask


def test_fused_emca_equals_naive_loop_in_outputs_and_gradients():
    torch.manual_seed(0)
    m = EncoderMixingAttention(D, 4, HEADS, 2, num_mixed=3)
    with torch.no_grad():  # make the layers and gates differ
        m.extra_value_proj_weight.add_(torch.randn_like(m.extra_value_proj_weight) * 0.1)
        m.mix_weights.weight.normal_(0, 0.1)
    inputs = emca_inputs()
    fused = m(*inputs)
    fused_grads = torch.autograd.grad(fused.square().sum(), [inputs[0], inputs[2]] + list(m.parameters()))
    naive = paper_loop(m, *inputs)
    naive_grads = torch.autograd.grad(naive.square().sum(), [inputs[0], inputs[2]] + list(m.parameters()))
    assert torch.allclose(fused, naive, atol=1e-5)
    for a, b in zip(fused_grads, naive_grads):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_emca_gates_start_summing_to_one():
    m = EncoderMixingAttention(D, 4, HEADS, 2, num_mixed=6)
    gates = m.mix_weights(torch.randn(2, 3, D)).sigmoid()
    assert torch.allclose(gates.sum(-1), torch.ones(2, 3), atol=1e-5)
    assert torch.equal(m.extra_value_proj_weight[0], m.value_proj.weight)


def test_dense_branch_ignores_padded_tokens():
    torch.manual_seed(0)
    layer = HybridAttentionEncoderLayer(D, FFN, 0.0, "relu", n_levels=2, n_heads=HEADS, n_points=2).eval()
    spatial = torch.tensor([[4, 4], [2, 3]])
    start = torch.tensor([0, 16])
    src = torch.randn(1, 22, D)
    pos = torch.randn(1, 22, D)
    mask = torch.zeros(1, 22, dtype=torch.bool)
    mask[0, 16 + 2] = mask[0, 16 + 5] = True  # padding in the dense (coarsest) level
    mask[0, 3] = mask[0, 7] = True
    ref = torch.rand(1, 22, 2, 2)
    out = layer(src, pos, ref, spatial, start, mask)
    changed = src.clone()
    changed[mask] = torch.randn(int(mask.sum()), D) * 100
    out2 = layer(changed, pos, ref, spatial, start, mask)
    assert torch.allclose(out[~mask], out2[~mask], atol=1e-5)


def count(model):
    return sum(p.numel() for p in model.parameters())


def test_parameter_deltas_match_the_analytic_count():
    dino = count(build_model(tiny_args())[0])
    hae = count(build_model(tiny_args(use_hae=True, num_hae_layers=2))[0])
    hae_ffn = count(build_model(tiny_args(use_hae=True, num_hae_layers=1, hae_ffn=True))[0])
    emca = count(build_model(tiny_args(use_emca=True))[0])
    emca_shared = count(build_model(tiny_args(use_emca=True, emca_shared_value_proj=True))[0])
    attn = 4 * D * D + 4 * D  # in_proj + out_proj
    assert hae - dino == 2 * (attn + 2 * D)
    assert hae_ffn - dino == attn + 2 * D + (D * FFN + FFN + FFN * D + D) + 2 * D
    gates = D * ENC + ENC
    assert emca - dino == DEC * (gates + (ENC - 1) * (D * D + D))
    assert emca_shared - dino == DEC * gates


def test_dino_checkpoint_loads_into_augdetr_with_only_new_parameters_missing():
    dino, _, _ = build_model(tiny_args())
    aug, _, _ = build_model(tiny_args(use_hae=True, use_emca=True, num_hae_layers=1))
    missing, unexpected = aug.load_state_dict(dino.state_dict(), strict=False)
    assert unexpected == []
    new = ("dense_attn", "dense_norm", "mix_weights", "extra_value_proj")
    assert missing and all(any(n in k for n in new) for k in missing)
    ca = aug.transformer.decoder.layers[0].cross_attn
    ref = dino.transformer.decoder.layers[0].cross_attn.value_proj
    assert torch.equal(ca.extra_value_proj_weight[0], ref.weight)  # per-layer projections start from DINO's


@pytest.mark.parametrize("levels", [4, 5])
@pytest.mark.parametrize("variant", ["dino", "hae", "emca", "augdetr"])
def test_table4_variants_train(variant, levels, seeded):
    kw = dict(use_hae=variant in ("hae", "augdetr"), use_emca=variant in ("emca", "augdetr"), num_hae_layers=1)
    if levels == 5:
        kw.update(num_feature_levels=5, return_interm_indices=[0, 1, 2, 3])
    model, criterion, _ = build_model(tiny_args(**kw))
    model.train()
    criterion.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    samples, targets = tiny_batch()
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    for _ in range(2):
        losses = criterion(model(samples, targets), targets)
        loss = sum(losses[k] * criterion.weight_dict[k] for k in losses if k in criterion.weight_dict)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = [p for p in model.parameters() if p.requires_grad]
    assert all(not torch.equal(a, b) for a, b in zip(before, after) if a.numel() > 1 and b.grad is not None)
