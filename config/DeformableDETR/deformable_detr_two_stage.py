# Two-stage Deformable DETR with iterative box refinement, R50, 50 epochs, COCO (official
# configs/r50_deformable_detr_plus_iterative_bbox_refinement_plus_plus_two_stage.sh): 46.9 AP. Every
# encoder token proposes a box; the top num_queries by class channel 0 become the decoder's queries.
# Seven heads: index 6 scores the proposals (its loss, *_enc, on class-agnostic labels).
_base_ = ['deformable_detr.py']

with_box_refine = True
two_stage = True
