"""Checkpoints of the earlier unofficial AugDETR reproduction (emirhanbayar/AugDETR, official DINO plus
HAE and EMCA) -> this project's layout, and the config that reproduces their outputs.

Its checkpoints are official DINO's (the same keys for everything DINO has) plus, per hybrid encoder
layer i, `transformer.encoder.layers.i.{std_self_attn, norm_std, linear1_std, linear2_std, norm2_std}.*`
(the final code; earlier commits saved only the first two) and, per decoder layer j,
`transformer.decoder.layers.j.encoder_mixing_weights.{weight (6, C), bias (6,)}`. Its stored `args` (an
argparse namespace) holds `use_hae`, `num_hybrid_layers` and `use_emca`. Renaming maps every tensor; its
behaviour needs the options `reproduction_options` lists (the README's design-decision table says why the
defaults differ). A checkpoint of its plain DINO runs is official DINO's and needs nothing.
"""
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from torch import Tensor

from ...registry import register_checkpoint_config, register_state_converter

# the reproduction's name -> this project's, inside a hybrid encoder layer
HAE_NAMES = {"std_self_attn.": "dense_attn.", "norm_std.": "dense_norm.", "linear1_std.": "dense_linear1.",
             "linear2_std.": "dense_linear2.", "norm2_std.": "dense_norm2."}
EMCA_NAME = ("encoder_mixing_weights.", "cross_attn.mix_weights.")
ENCODER_LAYER = re.compile(r"transformer\.encoder\.layers\.(\d+)\.(\w+_std)\.")
DECODER_GATES = re.compile(r"transformer\.decoder\.layers\.(\d+)\.encoder_mixing_weights\.weight")
# the flags its main.py adds; all three in a checkpoint's args mark one of its checkpoints
FLAGS = ("use_hae", "num_hybrid_layers", "use_emca")
# options that only change how a model starts (not what loaded weights compute)
INIT_ONLY = ("emca_gate_init",)


@dataclass(frozen=True)
class ReproductionLayout:
    """What a reproduction checkpoint holds: hybrid_layers (the first N encoder layers; 0 = no HAE),
    hae_ffn (its dense branch has its own FFN: the final code), emca_layers (decoder layers with gates;
    0 = no EMCA) and num_mixed (the gates per decoder layer: its encoder layers)."""
    hybrid_layers: int
    hae_ffn: bool
    emca_layers: int
    num_mixed: int

    def describe(self) -> str:
        parts = []
        if self.hybrid_layers:
            parts.append(f"HAE in encoder layers 0..{self.hybrid_layers - 1} "
                         f"({'with' if self.hae_ffn else 'without'} its own FFN)")
        if self.emca_layers:
            parts.append(f"EMCA in {self.emca_layers} decoder layers mixing {self.num_mixed} encoder layers")
        return ", ".join(parts) or "plain DINO"


def reproduction_layout(state: Dict[str, Tensor]) -> Optional[ReproductionLayout]:
    """The layout of a model state with the reproduction's HAE or EMCA keys; None for any other state
    (this project's, official DINO's, or the reproduction's plain DINO, which is official DINO's)."""
    hybrid = {int(m.group(1)) for m in map(ENCODER_LAYER.match, state) if m}
    gates = {int(m.group(1)): state[m.group(0)] for m in map(DECODER_GATES.match, state) if m}
    if not hybrid and not gates:
        return None
    if hybrid and hybrid != set(range(len(hybrid))):
        raise ValueError(f"the reproduction's hybrid layers are the first ones, but this checkpoint has them at "
                         f"encoder layers {sorted(hybrid)}")
    rows = {int(w.shape[0]) for w in gates.values()}
    if len(rows) > 1:
        raise ValueError(f"its EMCA gates differ in size between decoder layers ({sorted(rows)} encoder layers)")
    ffn = any(k.endswith(".linear1_std.weight") for k in state)
    return ReproductionLayout(len(hybrid), ffn, len(gates), rows.pop() if rows else 0)


def reproduction_options(layout: ReproductionLayout) -> Dict[str, Any]:
    """The config keys with which this project's model computes what the reproduction's did."""
    options: Dict[str, Any] = {"use_hae": bool(layout.hybrid_layers), "use_emca": bool(layout.emca_layers)}
    if layout.hybrid_layers:
        # the dense level is the last one, as there; its dense branch: attention, norm (+ its own FFN)
        options.update(num_hae_layers=layout.hybrid_layers, hae_dense_level=-1, hae_ffn=layout.hae_ffn)
    if layout.emca_layers:
        options.update(emca_enc_layers=None, emca_shared_value_proj=True, emca_gate_input="content",
                       emca_output_proj="per_layer", emca_gate_init="xavier")
    return options


def renamed_key(key: str) -> str:
    """A reproduction key -> this project's (other keys unchanged)."""
    if key.startswith("transformer.encoder.layers."):
        for old, new in HAE_NAMES.items():
            key = key.replace("." + old, "." + new, 1)
    elif key.startswith("transformer.decoder.layers."):
        key = key.replace("." + EMCA_NAME[0], "." + EMCA_NAME[1], 1)
    return key


def per_layer_value_projections(state: Dict[str, Tensor], layout: ReproductionLayout) -> Dict[str, Tensor]:
    """EMCA's per-encoder-layer value projections for a model without emca_shared_value_proj: each decoder
    layer's shared `value_proj` repeated (the same outputs at load; training then separates them)."""
    extra = {}
    for j in range(layout.emca_layers):
        prefix = f"transformer.decoder.layers.{j}.cross_attn."
        for name in ("weight", "bias"):
            shared = state[prefix + "value_proj." + name]
            extra[prefix + "extra_value_proj_" + name] = shared[None].repeat(
                layout.num_mixed - 1, *([1] * shared.dim())).clone()
    return extra


def option_text(options: Dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in options.items())


@register_state_converter
def convert_reproduction_state(state: Dict[str, Tensor], args=None) -> Tuple[Dict[str, Tensor], List[str]]:
    """A reproduction checkpoint's model state -> this project's keys, and lines saying what was done, which
    options reproduce its outputs and which of them the config `args` (when given) does not have."""
    layout = reproduction_layout(state)
    if layout is None:
        return state, []
    out = {renamed_key(k): v for k, v in state.items()}
    renamed = sum(renamed_key(k) != k for k in state)
    needed = reproduction_options(layout)
    config = vars(args) if args is not None else {}
    lines = [f"the earlier AugDETR reproduction's checkpoint ({layout.describe()}): {renamed} tensors renamed; "
             f"its outputs are reproduced with {option_text(needed)}"]
    if layout.emca_layers and config.get("emca_shared_value_proj") is False:
        extra = per_layer_value_projections(out, layout)
        out.update(extra)
        lines.append(f"emca_shared_value_proj=False: {len(extra)} per-encoder-layer value projections made from "
                     f"each decoder layer's shared one")
        needed = {k: v for k, v in needed.items() if k != "emca_shared_value_proj"}
    differ = {k: config[k] for k, v in needed.items() if k in config and config[k] != v and k not in INIT_ONLY}
    if differ:
        lines.append(f"this config differs from the reproduction in {option_text(differ)}: the weights load, "
                     f"the outputs differ from the reproduction's")
    return out, lines


def is_reproduction_args(saved: Dict[str, Any]) -> bool:
    """True when a checkpoint's stored args are the reproduction's main.py's (its three flags)."""
    return all(flag in saved for flag in FLAGS)


@register_checkpoint_config
def reproduction_config(saved: Dict[str, Any], state: Dict[str, Tensor]) -> Optional[Dict[str, Any]]:
    """The config of a reproduction checkpoint (its stored args as a dict, its unconverted model state): its
    args with the options that reproduce it; None when it is not one. Its flags must agree with its tensors."""
    if not is_reproduction_args(saved):
        return None
    layout = reproduction_layout(state) or ReproductionLayout(0, False, 0, 0)
    flags = {"use_hae": bool(saved["use_hae"]), "use_emca": bool(saved["use_emca"])}
    if flags != {"use_hae": bool(layout.hybrid_layers), "use_emca": bool(layout.emca_layers)}:
        raise ValueError(f"its args say use_hae={flags['use_hae']} use_emca={flags['use_emca']} but its tensors "
                         f"hold {layout.describe()}")
    if layout.hybrid_layers and layout.hybrid_layers != saved["num_hybrid_layers"]:
        raise ValueError(f"its args say num_hybrid_layers={saved['num_hybrid_layers']} but its tensors hold "
                         f"{layout.hybrid_layers} hybrid layers")
    if layout.emca_layers and layout.num_mixed != saved.get("enc_layers"):
        raise ValueError(f"its EMCA gates mix {layout.num_mixed} encoder layers but its args say "
                         f"enc_layers={saved.get('enc_layers')}")
    return dict(saved, **reproduction_options(layout))
