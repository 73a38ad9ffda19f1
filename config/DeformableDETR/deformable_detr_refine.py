# Deformable DETR + iterative bounding box refinement, R50, 50 epochs, COCO (official
# configs/r50_deformable_detr_plus_iterative_bbox_refinement.sh): 46.2 AP. Six independent heads; the
# decoder refines its reference boxes with the box heads (transformer.decoder.bbox_embed aliases bbox_embed).
_base_ = ['deformable_detr.py']

with_box_refine = True
