"""Helpers shared by the tools: build args/model from a config without a dataset on disk."""
from typing import List, Optional, Sequence

import torch


def tool_args(config: str, options: Optional[Sequence[str]] = None, use_hae: bool = False,
              use_emca: bool = False, device: str = "cpu", extra: Sequence[str] = ()):
    """main.build_args for a model-only tool (no dataset is read); applies the config's msda_backend."""
    import main

    argv: List[str] = ["-c", config, "--device", device, *extra]
    if use_hae:
        argv.append("--use_hae")
    if use_emca:
        argv.append("--use_emca")
    # a tool's weights come from its checkpoint (or are irrelevant, benchmarks): no ImageNet download;
    # the user's options come after, so an explicit backbone_weights still wins
    argv += ["--options", "backbone_weights=none", *(options or [])]
    args = main.build_args(argv)
    from models import select_msda_backend
    select_msda_backend(args.msda_backend)
    return args


def build_eval_model(args, checkpoint: Optional[str] = None):
    """(model in eval mode on args.device, postprocessors); weights from `checkpoint` if given (strict)."""
    from models import build_model
    from util.checkpoint import load_checkpoint, load_model_state

    model, _, postprocessors = build_model(args)
    if checkpoint:
        ckpt = load_checkpoint(checkpoint)
        load_model_state(model, ckpt["model"], source=checkpoint, strict=True)
    return model.to(torch.device(args.device)).eval(), postprocessors


def count_parameters(model: torch.nn.Module):
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total
