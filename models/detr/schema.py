"""DETR's config keys (`detr`): its no-object weight and its layers' norm placement; and why DETR refuses the
keys of the deformable-attention family."""
from util.config_schema import KeyGroup, bool_key, float_key


def _one_backbone_level(cfg):
    if len(cfg["return_interm_indices"]) != 1:
        return (f"return_interm_indices={cfg['return_interm_indices']}: DETR reads one backbone level; give one "
                f"stage, e.g. return_interm_indices=[3] (stride 32, DETR's)")
    return None


DETR_KEYS = KeyGroup("detr", "DETR (softmax classes with a no-object class, dense attention on one level)", {
    "eos_coef": float_key("weight of the no-object class in the cross-entropy (the classes weigh 1)", 0),
    "pre_norm": bool_key("pre-norm encoder and decoder layers (plus a final encoder norm); DETR's released "
                         "models are post-norm", model=True),
}, relations=(_one_backbone_level,))

NO_DEFORMABLE_ATTENTION = ("DETR has no deformable attention: AugDETR's HAE and EMCA are parts of the deformable "
                           "transformer (use modelname='dino', e.g. -c config/AugDETR/AugDETR_4scale.py)")

# key group -> why modelname='detr' refuses its keys (models/registry.py)
REFUSED = {
    "augdetr": NO_DEFORMABLE_ATTENTION,
    "deformable": "DETR has no deformable attention (one feature level, dense attention); remove the key",
    "dino": "DETR has no two-stage selection or denoising queries (those are DINO's); remove the key",
}
