"""EMCA fusion-weight analysis (AugDETR's Fig. 4).

During evaluation, records the sigmoid fusion weights w_e of the last decoder layer's EMCA
for the queries that the Hungarian matcher assigns to ground-truth objects, and reports
their per-encoder-layer mean and standard deviation.
"""
from typing import Dict, List, Optional

import torch
from torch import nn

from util import dist as dist_utils

from ...registry import EvalRecorder, register_eval_recorder
from .emca import EncoderMixingAttention


class EmcaWeightRecorder:
    """Accumulates per-encoder-layer sums of the matched queries' fusion weights."""

    def __init__(self, model: nn.Module, matcher: nn.Module):
        layers = model.transformer.decoder.layers
        attn = layers[-1].cross_attn
        if not isinstance(attn, EncoderMixingAttention):
            raise ValueError("--save_emca_weights needs an EMCA model: add --use_emca (and the flags it was "
                             "trained with)")
        self.attn = attn
        self.enc_layers: List[int] = list(model.transformer.decoder_memory.layers)
        self.matcher = matcher
        self.attn.record_mix_weights = True
        k = len(self.enc_layers)
        self.sum = torch.zeros(k, dtype=torch.float64)
        self.sum_sq = torch.zeros(k, dtype=torch.float64)
        self.count = 0

    def update(self, outputs: Dict, targets: List[Dict]) -> None:
        """Add the matched queries of one evaluated batch (outputs without denoising queries)."""
        gates = self.attn.last_mix_weights  # (B, Q, K)
        preds = {"pred_logits": outputs["pred_logits"], "pred_boxes": outputs["pred_boxes"]}
        for b, (src, _) in enumerate(self.matcher(preds, targets)):
            w = gates[b, src.to(gates.device)].double().cpu()
            self.sum += w.sum(0)
            self.sum_sq += (w * w).sum(0)
            self.count += len(src)

    def summary(self) -> Dict:
        """Totals over all processes -> {'enc_layers' (1-based), 'mean', 'std', 'num_queries'}."""
        totals = torch.cat([self.sum, self.sum_sq, torch.tensor([float(self.count)], dtype=torch.float64)])
        totals = dist_utils.all_reduce_sum(totals)  # on the group's device (NCCL: CUDA), back on the CPU
        k = len(self.enc_layers)
        n = max(totals[-1].item(), 1.0)
        mean = totals[:k] / n
        std = (totals[k:2 * k] / n - mean ** 2).clamp(min=0).sqrt()
        return {"decoder_layer": "last", "enc_layers": [i + 1 for i in self.enc_layers],
                "mean": mean.tolist(), "std": std.tolist(), "num_queries": int(totals[-1].item())}


def _needs_emca(args) -> Optional[str]:
    if not vars(args).get("use_emca"):
        return ("--save_emca_weights records EMCA's fusion weights during an evaluation: the model must use EMCA "
                "(add --use_emca, or evaluate a checkpoint trained with it)")
    return None


def _describe(summary: Dict) -> str:
    means = ", ".join(f"E{layer}={m:.3f}" for layer, m in zip(summary["enc_layers"], summary["mean"]))
    return f"EMCA fusion weights (mean per encoder layer): {means}"


register_eval_recorder(EvalRecorder(
    flag="save_emca_weights",
    help="with --eval (and --use_emca): record the last decoder layer's EMCA fusion weights of the matched queries "
         "and write their per-encoder-layer mean/std to output_dir/emca_weights.json",
    make=lambda model, criterion, args: EmcaWeightRecorder(model, criterion.matcher),
    output_file="emca_weights.json", requires=_needs_emca, describe=_describe))
