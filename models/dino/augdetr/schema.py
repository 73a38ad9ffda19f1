"""AugDETR's config keys: the Hybrid Attention Encoder and Encoder-Mixing Cross-Attention, for every
detector built on the deformable transformer. `--use_hae`, `--num_hae_layers` and `--use_emca` are also
command-line flags (the seed reproduction's commands)."""
from util.config_schema import Key, KeyGroup, bool_key, choice_key, int_key


def _hae_fits(cfg):
    if cfg["use_hae"] and cfg["num_hae_layers"] > cfg["enc_layers"]:
        return f"num_hae_layers={cfg['num_hae_layers']} exceeds enc_layers={cfg['enc_layers']}; lower it"
    levels = cfg["num_feature_levels"]
    if not -levels <= cfg["hae_dense_level"] < levels:
        return (f"hae_dense_level={cfg['hae_dense_level']} is not a level index for num_feature_levels={levels}; "
                f"use -1 (coarsest) .. {levels - 1}")
    return None


def _emca_fits(cfg):
    bad = [i for i in cfg["emca_enc_layers"] or [] if i >= cfg["enc_layers"]]
    if bad:
        return (f"emca_enc_layers={cfg['emca_enc_layers']} names encoder layers {bad} of only {cfg['enc_layers']}; "
                f"use 0 .. {cfg['enc_layers'] - 1}")
    return None


AUGDETR_KEYS = KeyGroup("augdetr", "AugDETR (Hybrid Attention Encoder, Encoder-Mixing Cross-Attention)", {
    "use_hae": bool_key("AugDETR Hybrid Attention Encoder", model=True),
    "num_hae_layers": int_key("hybrid encoder layers (the first N)", 0, model=True),
    "hae_dense_level": int_key("level index of the dense attention (-1 = coarsest)", model=True),
    "hae_ffn": bool_key("an FFN after the dense attention (the earlier reproduction's variant)", model=True),
    "use_emca": bool_key("AugDETR Encoder-Mixing Cross-Attention", model=True),
    "emca_enc_layers": Key("list[int]", "encoder layers EMCA mixes (0-based; none = all)", 0, none_ok=True,
                           length=(1, None), model=True),
    "emca_shared_value_proj": bool_key("one value projection for all mixed encoder layers (reproduction's "
                                       "variant)", model=True),
    "emca_gate_input": choice_key("what the EMCA gates read: 'content_pos' = the content query plus its position "
                                  "(the q of the offsets), 'content' = the content query only (reproduction's)",
                                  "content_pos", "content", model=True),
    "emca_output_proj": choice_key("EMCA's output projection: 'mixed' = once after mixing, 'per_layer' = on each "
                                   "encoder layer's sample before gating, so its bias is scaled by the gate sum "
                                   "(reproduction's)", "mixed", "per_layer", model=True),
    # initialisation only: a checkpoint trained with either fits the other model, hence not a model key
    "emca_gate_init": choice_key("EMCA gates' initialisation: 'mean' = each 1/L (weight 0), 'xavier' = Xavier "
                                 "weight and torch's default bias, each about 0.5 (reproduction's)", "mean", "xavier"),
}, relations=(_hae_fits, _emca_fits),
    flags={"use_hae": ("--use_hae",), "num_hae_layers": ("--num_hae_layers", "--num_hybrid_layers"),
           "use_emca": ("--use_emca",)})
