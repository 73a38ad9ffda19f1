# AlignDETR on DINO-4scale R50, 12 epochs, COCO: DINO's model, optimiser and schedule with
# AlignDETR's loss and matching (IA-BCE, one-to-2 matching of the encoder proposals and decoder
# layers 1-5, one-to-one in the last layer, rank weights exp(-rank / 1.5)). The values are the
# official AlignDETR's (aligndetr_k=2_r50_4scale_12ep). `--use_hae --use_emca` add AugDETR.
_base_ = ['../DINO/DINO_4scale.py']

criterion_type = 'aligndetr'
aligndetr_alpha = 0.25
aligndetr_gamma = 2.0
aligndetr_tau = 1.5
o2m_k = [2, 2, 2, 2, 2, 2, 1]  # encoder proposals, decoder layers 1..6
